"""The Dask scheduler plugin on a real cluster with process workers, scaled 0 -> 4 -> 1 -> 3:
its waits agree with the scheduler's own add-worker times, worker-seconds equal the sum of the
worker lifetimes, a computation's time-to-finish agrees with the client's own timing, and the
events reach a real `afmon serve` through the plugin's own spool and push loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from afmon.aggregator.query.reads import LOCAL_ADMIN, Query
from afmon.aggregator.store.db import make_engine
from tests.collectors.dask_fixture import tracked_cluster, wait_workers
from tests.conftest import ServerProcess

TOL = 0.05  # seconds


def _slow(x: int) -> int:
    time.sleep(0.2)
    return x + 1


def test_dask_cluster_waits_workers_and_computation(
    tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    import dask

    server = server_factory(dashboard="false")
    with tracked_cluster(server, tmp_path, "small") as (cluster, client, plugin):
        sched = cluster.scheduler
        requested: dict[int, float] = {}
        for n in (4, 1, 3):
            requested[n] = time.time()
            cluster.scale(n)
            wait_workers(sched, n)
        graph = dask.delayed(sum)([dask.delayed(_slow)(i) for i in range(6)])
        t0 = time.time()
        assert client.compute(graph).result() == sum(range(1, 7))
        client_seconds = time.time() - t0
        started = sched.time_started
    # the cluster is closed: the plugin has flushed everything to the server, and the
    # scheduler's own event log holds every add-worker and remove-worker
    events = sched.get_events("all")

    adds = sorted(t for t, msg in events if msg.get("action") == "add-worker")
    removes = [(t, msg["worker"]) for t, msg in events if msg.get("action") == "remove-worker"]
    assert len(adds) == 6, adds  # 4, then 2 more for 1 -> 3
    lifetimes: dict[str, list[float]] = {}
    for t, msg in events:
        if msg.get("action") in ("add-worker", "remove-worker"):
            lifetimes.setdefault(msg["worker"], []).append(t)
    assert len(removes) == 6
    worker_seconds = sum(ts[-1] - ts[0] for ts in lifetimes.values())

    q = Query(make_engine(f"sqlite:///{tmp_path}/server.sqlite"))
    lo, hi = started - 3600, time.time() + 3600
    first = q.latency_events(LOCAL_ADMIN, "time_to_first_worker", lo, hi)
    assert len(first) == 1
    assert abs(first["seconds"][0] - (adds[0] - started)) <= TOL
    ups = q.latency_events(LOCAL_ADMIN, "time_to_scale_up", lo, hi).sort_values("start")
    assert len(ups) == 2  # 0 -> 4 and 1 -> 3; 4 -> 1 is a scale-down
    # 0 -> 4: reached at the 4th add-worker; 1 -> 3: at the 6th
    for (_, row), n, reached in zip(ups.iterrows(), (4, 3), (adds[3], adds[5]), strict=True):
        assert abs(row["start"] - requested[n]) <= TOL
        assert abs(row["end"] - reached) <= TOL
    fin = q.latency_events(LOCAL_ADMIN, "time_to_finish", lo, hi)
    assert len(fin) == 1 and abs(fin["seconds"][0] - client_seconds) <= TOL

    totals = q.usage_totals(LOCAL_ADMIN, lo, hi, by=("member",))
    got = dict(zip(totals["resource"], totals["amount"], strict=True))
    assert got["dask_worker_seconds"] == pytest.approx(worker_seconds, abs=TOL)
    assert got["dask_worker_core_seconds"] == pytest.approx(worker_seconds, abs=TOL)  # 1 thread
    assert got["dask_clusters"] == 1.0
    stats = q.latency_percentiles(LOCAL_ADMIN, "time_to_scale_up", lo, hi, by=("profile",))
    assert stats["profile"].tolist() == ["small"] and stats["count"][0] == 2
