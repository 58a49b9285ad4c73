"""The JupyterHub probe against a real hub: time-to-session per spawn agrees with the hub's own
spawn + proxy-add measurements, a spawn between two polls is still recorded, a failing spawn is
a failure event, sessions open and close; the events go through a real aggregator."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.reads import LOCAL_ADMIN
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from afmon.collectors.probes.hub_sessions import OpenSession, SessionStore
from afmon.collectors.probes.jupyterhub import JupyterHubProbe, parse_hub_metrics, parse_time
from tests.collectors.jupyterhub_fixture import FAIL_MESSAGE, FAILING_USER, Hub, jupyterhub

__all__ = ["jupyterhub"]


def tolerance(truth: float) -> float:
    return max(0.05, 0.02 * truth)


def test_time_to_session_agrees_with_the_hub(jupyterhub: Hub, tmp_path: Path) -> None:
    hub = jupyterhub
    probe = JupyterHubProbe(hub.url, hub.token, poll_seconds=0)  # polls only when told
    probe.poll()  # baseline
    truth: dict[str, float] = {}

    # watched spawns: the probe sees them pending and follows their progress streams
    for user, profile in (("alice", "small"), ("bob", "large")):
        before = hub.totals()
        hub.start_server(user, {"profile": profile})
        probe.poll()
        hub.wait(user, "ready")
        probe.poll()
        after = hub.totals()
        assert after.spawns == before.spawns + 1
        truth[user] = after.seconds - before.seconds

    # carol's server starts and is ready between two polls
    before = hub.totals()
    hub.start_server("carol", {"profile": "small"})
    hub.wait("carol", "ready")
    truth["carol"] = hub.totals().seconds - before.seconds
    probe.poll()

    # a spawn that fails (the hub's pre-spawn hook raises), and a stopped session
    hub.start_server(FAILING_USER)
    probe.poll()
    hub.wait(FAILING_USER, "gone")
    hub.stop_server("alice")
    hub.wait("alice", "gone")
    probe.poll()

    out = probe.collect(time.time())
    spawns = {e.user: e for e in out.events if e.kind == "spawn"}
    assert set(spawns) == {"alice", "bob", "carol", FAILING_USER}
    for user in ("alice", "bob", "carol"):
        e = spawns[user]
        assert e.end is not None and e.attrs["outcome"] == "ok"
        measured = e.end - e.start
        assert abs(measured - truth[user]) <= tolerance(truth[user]), (user, measured, truth)
    # alice's and bob's spawns were followed on their progress streams, carol's never seen
    # pending; each was alone in its poll interval, so it gets the hub's own measurement
    for user in ("alice", "bob"):
        assert spawns[user].attrs["source"] == "hub_metrics"
        assert float(spawns[user].attrs["progress_seconds"]) > 0
    assert "progress_seconds" not in spawns["carol"].attrs
    assert spawns["bob"].attrs["profile"] == "large"
    assert spawns["carol"].attrs["source"] == "hub_metrics"  # never seen pending
    failed = spawns[FAILING_USER]
    assert failed.attrs["outcome"] == "timeout" and FAIL_MESSAGE in str(failed.attrs["error"])
    # the hub's own log agrees on what the spawn (without the proxy) took
    for user in ("alice", "bob", "carol"):
        assert f"User {user} took" in hub.log()

    sessions = [e for e in out.events if e.kind == "session"]
    closed = {e.user for e in sessions if e.end is not None}
    assert closed == {"alice"}
    assert {e.user for e in sessions} == {"alice", "bob", "carol"}
    alice_start = next(e.start for e in sessions if e.user == "alice")
    assert alice_start == spawns["alice"].start

    # two servers that start and finish together between two polls: both recorded, and
    # together they take exactly what the hub measured for the two
    for user in ("bob", "carol"):
        hub.stop_server(user)
    for user in ("bob", "carol"):
        hub.wait(user, "gone")
    probe.poll()
    before = hub.totals()
    for user in ("bob", "carol"):
        hub.start_server(user, {"profile": "small"})
    for user in ("bob", "carol"):
        hub.wait(user, "ready")
    grown = hub.totals().seconds - before.seconds
    probe.poll()
    again = [e for e in probe.collect(time.time()).events if e.kind == "spawn"]
    assert sorted(e.user for e in again) == ["bob", "carol"]
    assert {e.attrs["source"] for e in again} == {"estimate"}
    total = sum(e.end - e.start for e in again if e.end is not None)
    assert abs(total - grown) <= tolerance(grown)

    # the events are valid wire events and land in the ledger
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path}/a.sqlite", facility_tokens={"af": "t"}
    )
    api = TestClient(create_app(settings, with_dashboard=False))
    batch = wire.Batch(
        version=1,
        agent_id="hub-agent",
        facility="af",
        node="hub",
        seq=1,
        sent_at=time.time(),
        events=out.events,
    )
    r = api.post(
        "/api/v1/ingest", content=wire.encode(batch), headers={"Authorization": "Bearer t"}
    )
    assert r.status_code == 200, r.text
    q = api.app.state.services.query
    # a window from the events' own times, whole UTC hours (the ledger's), never the wall
    # clock's: "the last hour" asked just after an hour boundary would start inside the hour
    # that holds the spawns
    lo = min(e.start for e in out.events) // 3600 * 3600
    hi = (max(e.end or e.start for e in out.events) // 3600 + 2) * 3600
    stats = q.latency_percentiles(LOCAL_ADMIN, "time_to_session", lo, hi, by=("profile",))
    assert dict(zip(stats["profile"], stats["count"], strict=True)) == {"small": 2, "large": 1}
    totals = q.usage_totals(LOCAL_ADMIN, lo, hi, by=("facility",))
    got = dict(zip(totals["resource"], totals["amount"], strict=True))
    assert got["spawn_failures"] == 1.0 and got["sessions"] == 1.0


def test_a_session_that_ends_while_the_agent_is_down_is_ended_after_restart(
    jupyterhub: Hub, tmp_path: Path
) -> None:
    hub, state = jupyterhub, tmp_path / "jupyterhub-probe.json"
    before = JupyterHubProbe(hub.url, hub.token, poll_seconds=0, state_path=state)
    before.poll()
    hub.start_server("dave", {"profile": "small"})
    hub.wait("dave", "ready")
    seen = time.time()
    before.poll()  # sees dave's session open, and keeps it on disk as seen now
    opened = [e for e in before.collect(time.time()).events if e.kind == "session"]
    dave = next(e for e in opened if e.user == "dave")
    assert dave.end is None
    before.poll()  # nothing changed: the file is rewritten only every 30 s
    before.close()  # the agent stops

    hub.stop_server("dave")
    hub.wait("dave", "gone")
    stopped = time.time()
    after = JupyterHubProbe(hub.url, hub.token, poll_seconds=0, state_path=state)
    after.poll()
    sessions = [e for e in after.collect(time.time()).events if e.kind == "session"]
    ended = [e for e in sessions if e.end is not None]
    # dave's session ends at the last sighting before the restart; the sessions still
    # running (if any) are only reported open again, under the same ids
    assert [(e.user, e.id, e.start) for e in ended] == [("dave", dave.id, dave.start)]
    assert ended[0].end is not None and seen <= ended[0].end <= stopped
    assert ended[0].attrs["end_source"] == "last_seen"
    assert ended[0].attrs["profile"] == "small"
    running = {e.id for e in opened if e.user != "dave"}
    assert {e.id for e in sessions if e.end is None} == running

    # once ended, it is forgotten: a second restart reports nothing more for it
    again = JupyterHubProbe(hub.url, hub.token, poll_seconds=0, state_path=state)
    again.poll()
    assert [e for e in again.collect(time.time()).events if e.end is not None] == []


def test_an_unreadable_state_file_starts_afresh(tmp_path: Path) -> None:
    state = tmp_path / "jupyterhub-probe.json"
    state.write_text("{not json")
    assert SessionStore(state).load() == []
    store = SessionStore(state, save_every=30.0)
    kept = [OpenSession("dave", "", 1.0, "small", 5.0)]
    store.save(kept, now=10.0)
    assert SessionStore(state).load() == kept
    store.save([OpenSession("dave", "", 1.0, "small", 9.0)], now=20.0)  # same set, too soon
    assert SessionStore(state).load() == kept
    store.save([OpenSession("dave", "", 1.0, "small", 40.0)], now=40.0)
    assert SessionStore(state).load()[0].seen == 40.0


def test_parsers() -> None:
    body = (
        'jupyterhub_server_spawn_duration_seconds_count{reason="none",status="success"} 3.0\n'
        'jupyterhub_server_spawn_duration_seconds_sum{reason="none",status="success"} 12.5\n'
        'jupyterhub_server_spawn_duration_seconds_count{reason="error",status="failure"} 1.0\n'
        'jupyterhub_proxy_add_duration_seconds_sum{status="success"} 0.25\n'
        'jupyterhub_proxy_add_duration_seconds_sum{status="failure"} 9.0\n'
    )
    totals = parse_hub_metrics(body)
    assert totals.spawns == 3.0 and totals.seconds == pytest.approx(12.75)
    assert parse_time("2026-09-21T14:13:20.250000Z") == 1_790_000_000.25
    assert parse_time(None) is None
