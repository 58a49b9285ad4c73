"""The `gpu_hold_seconds_max` signal (AfmonGpuHeldTooLong): the longest unbroken GPU hold
until now, from the GPU probe's `gpu_held` samples stored by a real ingest."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query import signals
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from afmon.collectors.simulator import Poster

T0 = 1_790_006_400.0


def _held(node: str, gpu: str, user: str, times: list[float], values: list[float]) -> wire.Series:
    labels = {"node": node, "gpu": gpu, "user": user}
    return wire.Series("gpu_held", "1", "gauge", labels, times, values)


def test_the_longest_unbroken_hold(tmp_path: Path) -> None:
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path}/afmon.sqlite",
        facility_tokens={"af": "a" * 32, "af2": "b" * 32}, alert_interval_seconds=0,
    )  # fmt: skip
    now = T0 + 3 * 3600
    client = TestClient(create_app(settings, with_dashboard=False, clock=lambda: now))
    ticks = [T0 + 600 * i for i in range(19)]  # up to T0 + 3 h
    series = [
        # held since T0 (3 h), with no break
        _held("g1", "A", "alice", ticks, [1.0] * len(ticks)),
        # released at T0 + 1 h, held again from T0 + 1 h 10 min: 1 h 50 min
        _held("g1", "B", "bob", ticks, [0.0 if t == T0 + 3600 else 1.0 for t in ticks]),
    ]
    Poster("http://testserver", "a" * 32, client).post(wire.Batch(
        version=wire.WIRE_VERSION, agent_id="gpu-agent", facility="af", node="g1", seq=1,
        sent_at=now, series=series,
    ))  # fmt: skip
    idle = _held("g2", "C", "carol", ticks[-2:], [0.0, 0.0])  # GPUs report, none held
    Poster("http://testserver", "b" * 32, client).post(wire.Batch(
        version=wire.WIRE_VERSION, agent_id="gpu-agent-2", facility="af2", node="g2", seq=1,
        sent_at=now, series=[idle],
    ))  # fmt: skip
    engine = client.app.state.services.engine
    got = {dict(o.labels)["facility"]: o.value
           for o in signals.compute(engine, now)["gpu_hold_seconds_max"]}  # fmt: skip
    assert got == {"af": 3 * 3600.0, "af2": 0.0}
    # alice lets go: bob's 1 h 50 min is the longest
    Poster("http://testserver", "a" * 32, client).post(wire.Batch(
        version=wire.WIRE_VERSION, agent_id="gpu-agent", facility="af", node="g1", seq=2,
        sent_at=now, series=[_held("g1", "A", "alice", [now + 60], [0.0]),
                             _held("g1", "B", "bob", [now + 60], [1.0])],
    ))  # fmt: skip
    got = {dict(o.labels)["facility"]: o.value
           for o in signals.compute(engine, now + 60)["gpu_hold_seconds_max"]}  # fmt: skip
    assert got["af"] == now + 60 - (T0 + 4200)
    client.close()
