"""Adaptive scaling with a real `distributed.deploy.Adaptive`: a LocalCluster with process
workers and `cluster.adapt(minimum=0, maximum=3)`, tracked by the afmon scheduler plugin, scales
up 0 -> 1 -> 3 under a real workload. Every scale-up afmon records (read back from a real
`afmon serve`) starts when Adaptive decided it (its own log) and ends at the scheduler's own
add-worker time of the worker that reached the target, within 50 ms; time-to-first-worker
agrees likewise."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from afmon.aggregator.query.reads import LOCAL_ADMIN, Query
from afmon.aggregator.store.db import make_engine
from tests.collectors.dask_fixture import tracked_cluster, wait_workers
from tests.conftest import ServerProcess

TOL = 0.05  # seconds
MAXIMUM = 3


def _slow(x: int, seconds: float = 0.5) -> int:
    time.sleep(seconds)
    return x * 2


def test_adaptive_scale_up_agrees_with_the_scheduler(
    tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    server = server_factory(dashboard="false")
    with tracked_cluster(server, tmp_path, "adaptive") as (cluster, client, _plugin):
        sched = cluster.scheduler
        adaptive = cluster.adapt(minimum=0, maximum=MAXIMUM, interval="100ms", target_duration="1s")
        # one long task: Adaptive asks for 1 worker; while it runs, 24 half-second tasks:
        # ceil(24 x 0.5 s / 1 s) capped at 3, so it scales 0 -> 1 -> 3
        long = client.submit(_slow, -1, 2.0)
        wait_workers(sched, 1, exact=False)
        results = client.gather(client.map(_slow, range(24)))
        assert results == [2 * i for i in range(24)] and long.result() == -2
        decisions = [(t, dict(rec)) for t, rec in adaptive.log]
        started = sched.time_started
        adaptive.stop()
    # closed: the plugin has flushed everything to the server, and the scheduler's own event
    # log holds every add-worker and remove-worker
    log = sorted(
        (t, msg["action"])
        for t, msg in sched.get_events("all")
        if msg.get("action") in ("add-worker", "remove-worker")
    )
    adds = [t for t, action in log if action == "add-worker"]
    assert adds, "Adaptive never added a worker"
    ups_decided = [(t, rec["n"]) for t, rec in decisions if rec.get("status") == "up"]
    assert ups_decided and max(n for _t, n in ups_decided) == MAXIMUM, decisions

    def reached(target: int, since: float) -> float:
        """The scheduler's time of the add-worker that brought the count to `target`."""
        alive = 0
        for t, action in log:
            alive += 1 if action == "add-worker" else -1
            if t >= since - TOL and action == "add-worker" and alive >= target:
                return t
        raise AssertionError(f"the scheduler never had {target} workers after {since}")

    engine = make_engine(f"sqlite:///{tmp_path}/server.sqlite")
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, start, \"end\", attrs FROM event WHERE kind = 'dask_scale' "
                 "ORDER BY start")
        ).all()  # fmt: skip
    scale_ups = []
    for id_, start, end, attrs_text in rows:
        attrs = json.loads(attrs_text)
        if "/up-" in id_ and attrs["outcome"] == "ok" and attrs["target"] > attrs["from"]:
            scale_ups.append((id_, start, end, attrs))
    assert scale_ups, rows
    assert {a["reason"] for *_x, a in scale_ups} == {"adaptive"}
    # 0 -> 1 for the long task, then 1 -> 3 for the rest
    assert [(a["from"], a["target"]) for *_x, a in scale_ups] == [(0, 1), (1, MAXIMUM)]
    for _id, start, end, attrs in scale_ups:
        # requested when Adaptive decided "up" to this target (its log), reached at the
        # scheduler's add-worker time of the worker that made the count
        decided = [t for t, n in ups_decided if n == attrs["target"] and t <= start + TOL]
        assert decided and abs(start - decided[-1]) <= TOL, (start, ups_decided)
        assert abs(end - reached(attrs["target"], start)) <= TOL, (end, log)

    q = Query(engine)
    lo, hi = started - 3600, time.time() + 3600
    first = q.latency_events(LOCAL_ADMIN, "time_to_first_worker", lo, hi)
    assert len(first) == 1 and abs(first["seconds"][0] - (adds[0] - started)) <= TOL
    waits = q.latency_events(LOCAL_ADMIN, "time_to_scale_up", lo, hi).sort_values("start")
    assert len(waits) == len(scale_ups)
    for (_, row), (_id, start, end, _a) in zip(waits.iterrows(), scale_ups, strict=True):
        assert row["seconds"] == pytest.approx(end - start, abs=1e-6)
        assert row["profile"] == "adaptive"
