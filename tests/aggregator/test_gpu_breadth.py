"""GPU access breadth (docs/gpu.md, Access breadth) through the real ingest: members served
per GPU-day from the ledger, members holding two GPUs at once from the GPU probe's samples,
the wait for a GPU session over the GPU profiles only; scoped like every read."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.base import Principal
from afmon.aggregator.query.gpu_breadth import gpu_breadth
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from afmon.collectors.simulator import Poster

DAY = 86400.0
T0 = 1_790_035_200.0  # a UTC midnight
ISSUER = "https://atlas-auth.cern.ch/"
IDENTITY = f"""
[vos.atlas]
issuer = "{ISSUER}"
""" + "".join(
    f"""
[[members]]
vo = "atlas"
subject = "{u}-sub"
display_name = "{u.title()}"
groups = ["/atlas"]
accounts = [{{ facility = "af", local = "{u}" }}]
"""
    for u in ("alice", "bob", "carol")
)


def _series(metric: str, unit: str, labels: dict[str, str], times: list[float],
            values: list[float]) -> wire.Series:  # fmt: skip
    return wire.Series(metric, unit, "gauge", labels, times, values)


def test_breadth_from_the_ledger_the_samples_and_the_waits(tmp_path: Path) -> None:
    (tmp_path / "identity.toml").write_text(IDENTITY)
    now = T0 + 2 * DAY
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path}/afmon.sqlite", identity_file=tmp_path / "identity.toml",
        facility_tokens={"af": "a" * 32}, alert_interval_seconds=0, local_mode=True,
    )  # fmt: skip
    client = TestClient(create_app(settings, with_dashboard=False, clock=lambda: now))
    poster = Poster("http://testserver", "a" * 32, client)
    node = {"node": "g1"}
    ticks = [T0 + 600 * i for i in range(7)]  # day 1, 00:00 to 01:00
    ticks2 = [T0 + DAY + 600 * i for i in range(7)]  # day 2
    series = [
        _series("node_cpu_cores", "cores", node, [ticks2[-1]], [64.0]),
        *(
            wire.Series(
                "gpu_info", "1", "gauge", {**node, "gpu": g, "model": "a100"}, [ticks2[-1]], [1.0]
            )
            for g in ("A", "B")
        ),  # fmt: skip
        # alice: two GPUs at once on day 1 (held gauge per user and per device)
        _series("user_gpus_held", "1", {**node, "user": "alice"}, ticks, [2.0] * 7),
        *(
            _series("gpu_held", "1", {**node, "gpu": g, "user": "alice"}, ticks, [1.0] * 7)
            for g in ("A", "B")
        ),  # fmt: skip
        # bob: one GPU on day 1 and day 2; carol: one on day 2
        _series("user_gpus_held", "1", {**node, "user": "bob"}, ticks + ticks2, [1.0] * 14),
        _series("user_gpus_held", "1", {**node, "user": "carol"}, ticks2, [1.0] * 7),
    ]
    events = [  # time-to-session: two GPU starts (30 s, 90 s), one CPU start (5 s)
        wire.Event("spawn", "s1", "alice", T0 + 100, T0 + 130, {"profile": "1 GPU (A100)",
                                                                 "outcome": "ok"}),
        wire.Event("spawn", "s2", "bob", T0 + 200, T0 + 290, {"profile": "gpu-small",
                                                               "outcome": "ok"}),
        wire.Event("spawn", "s3", "carol", T0 + 300, T0 + 305, {"profile": "4 cores",
                                                                 "outcome": "ok"}),
    ]  # fmt: skip
    poster.post(
        wire.Batch(
            version=wire.WIRE_VERSION,
            agent_id="gpu-agent",
            facility="af",
            node="g1",
            seq=1,
            sent_at=now,
            series=series,
            events=events,
        )
    )
    query = client.app.state.services.query
    admin = Principal("facility_admin")
    [row] = gpu_breadth(query, admin, T0, T0 + 2 * DAY, settings.gpu_profile_pattern).to_dict(
        orient="records"
    )
    assert row["gpus"] == 2
    assert row["gpu_hours"] == 2.0 + 1.0 + 1.0 + 1.0  # alice 2 x 1 h, bob 2 x 1 h, carol 1 h
    assert row["members_served"] == 3
    assert row["member_gpu_days"] == 4  # day 1: alice, bob; day 2: bob, carol
    assert row["members_per_gpu_day"] == 4 / (2 * 2)
    assert row["members_several_gpus"] == 1  # alice
    assert row["gpu_session_waits"] == 2
    assert row["gpu_session_wait_p95_seconds"] == 30 + 0.95 * (90 - 30)  # linear, exact
    # a member sees themself only
    bob = Principal("member", member_id=f"{ISSUER}|bob-sub")
    [mine] = gpu_breadth(query, bob, T0, T0 + 2 * DAY, settings.gpu_profile_pattern).to_dict(
        orient="records"
    )
    assert (mine["members_served"], mine["members_several_gpus"], mine["gpu_session_waits"]) == (
        1, 0, 1,
    )  # fmt: skip
    api = client.get("/api/v1/gpu-breadth", params={"start": T0, "end": T0 + 2 * DAY}).json()
    assert api[0]["members_per_gpu_day"] == 1.0
    client.close()
