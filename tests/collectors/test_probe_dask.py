"""The Dask scheduler plugin on a real cluster with process workers, scaled 0 -> 4 -> 1 -> 3:
its waits agree with the scheduler's own add-worker times, worker-seconds equal the sum of the
worker lifetimes, the time-to-finish of a small and of a large (1000-task) computation agrees
with the scheduler's own record of it (when its update-graph handling began, and the
transition of its result to memory) within 50 ms, and the events reach a real `afmon serve`
through the plugin's own spool and push loop.

Every comparison is with the scheduler's own timestamps, or brackets the test's own calls,
never the client's wall time around a round trip: that includes scheduling and network delays
that a loaded machine stretches by tens of milliseconds."""

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


def _inc(x: int) -> int:
    return x + 1


def test_dask_cluster_waits_workers_and_computation(
    tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    import dask

    server = server_factory(dashboard="false")
    with tracked_cluster(server, tmp_path, "small") as (cluster, client, plugin):
        sched = cluster.scheduler
        requested: dict[int, tuple[float, float]] = {}  # when the scale call began and returned
        for n in (4, 1, 3):
            before = time.time()
            cluster.scale(n)
            requested[n] = (before, time.time())
            wait_workers(sched, n)
        # a small graph, then a large one: 999 tasks and their sum, whose handling (receive,
        # materialise, order) takes the scheduler tenths of a second before plugins hear of it
        small = dask.delayed(sum)([dask.delayed(_slow)(i) for i in range(6)])
        large = dask.delayed(sum)([dask.delayed(_inc)(i) for i in range(999)])
        # the scheduler's own record of each computation: when its result reached memory (read
        # at once: the transition log is bounded, and the large graph would push it out)
        done: list[list[float]] = []
        for graph, expected in ((small, sum(range(1, 7))), (large, sum(range(1, 1000)))):
            future = client.compute(graph)
            assert future.result() == expected
            log = list(sched.transition_log)
            done.append([t.timestamp for t in log if t.key == future.key and t.finish == "memory"])
        started = sched.time_started
    # the cluster is closed: the plugin has flushed everything to the server, and the
    # scheduler's own event log holds every add-worker and remove-worker, and the graph updates
    events = sched.get_events("all")
    graphs = [
        msg
        for _t, msg in sched.get_events("scheduler")
        if isinstance(msg, dict) and msg.get("action") == "update-graph" and "metrics" in msg
    ]
    assert [len(d) for d in done] == [1, 1], done
    assert len(graphs) == 2, graphs
    assert graphs[1]["metrics"]["tasks"] == 1000
    # the scheduler's own handling of each graph began at start_timestamp_seconds
    handled = [g["metrics"]["start_timestamp_seconds"] for g in graphs]

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
        assert requested[n][0] - TOL <= row["start"] <= requested[n][1] + TOL
        assert abs(row["end"] - reached) <= TOL
    fin = q.latency_events(LOCAL_ADMIN, "time_to_finish", lo, hi).sort_values("start")
    assert len(fin) == 2
    # each computation began when the scheduler began handling its graph, and ended when the
    # scheduler moved its result to memory
    for (_, row), began, ended in zip(fin.iterrows(), handled, done, strict=True):
        assert abs(row["start"] - began) <= TOL, (row["start"], began)
        assert abs(row["end"] - ended[0]) <= TOL, (row["end"], ended[0])
        assert abs(row["seconds"] - (ended[0] - began)) <= TOL

    totals = q.usage_totals(LOCAL_ADMIN, lo, hi, by=("member",))
    got = dict(zip(totals["resource"], totals["amount"], strict=True))
    assert got["dask_worker_seconds"] == pytest.approx(worker_seconds, abs=TOL)
    assert got["dask_worker_core_seconds"] == pytest.approx(worker_seconds, abs=TOL)  # 1 thread
    assert got["dask_clusters"] == 1.0
    stats = q.latency_percentiles(LOCAL_ADMIN, "time_to_scale_up", lo, hi, by=("profile",))
    assert stats["profile"].tolist() == ["small"] and stats["count"][0] == 2
