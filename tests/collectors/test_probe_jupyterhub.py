"""The JupyterHub probe against a real hub: time-to-session per spawn agrees with the hub's own
spawn + proxy-add measurements (its counters and its log), also for concurrent starts; a spawn
between two polls is still recorded; failed starts (at once, by timeout, interrupted by a stop)
have the hub's outcome and time to failure; sessions open and close, also across an agent
restart; the events go through a real aggregator."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.reads import LOCAL_ADMIN
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from afmon.collectors.probes.jupyterhub import (
    NO_MESSAGE_TIMEOUT,
    JupyterHubProbe,
    classify_failure,
    parse_hub_metrics,
    parse_time,
)
from tests.collectors.jupyterhub_fixture import (
    FAIL_MESSAGE,
    FAILING_USER,
    INSTANT_FAILURE_MESSAGE,
    INSTANT_FAILURE_USER,
    SLOW_USER,
    START_TIMEOUT_USER,
    Hub,
    jupyterhub,
)

__all__ = ["jupyterhub"]


def tolerance(truth: float) -> float:
    return max(0.05, 0.02 * truth)


def logged_start(hub: Hub, user: str) -> float:
    """The hub's own log line for the user's last successful start (spawn, without proxy)."""
    took = re.findall(rf"User {user} took ([0-9.]+) seconds to start", hub.log())
    assert took, f"no start of {user} in the hub's log"
    return float(took[-1])


def wait_for(what: str, check, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


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
        print(f"COMPARE {user}: probe {measured:.4f} s, hub {truth[user]:.4f} s")
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

    # three concurrent starts the probe sees pending, all finishing within one poll: each
    # gets what the hub measured for it (its log line plus its proxy add), not the progress
    # stream's figure, which starts at `started` (20-410 ms after the request)
    for user in ("bob", "carol"):
        hub.stop_server(user)
    for user in ("bob", "carol"):
        hub.wait(user, "gone")
    probe.poll()
    probe.collect(time.time())
    before = hub.totals()
    trio = ("bob", "carol", "dave")
    for user in trio:
        hub.start_server(user, {"profile": "small"})
    probe.poll()  # sees them pending: their progress streams are followed
    for user in trio:
        hub.wait(user, "ready")
    after = hub.totals()
    probe.poll()
    assert after.spawns == before.spawns + 3
    proxy_each = (after.seconds - before.seconds - sum(logged_start(hub, u) for u in trio)) / 3
    assert 0 <= proxy_each < 0.05
    trio_events = {e.user: e for e in probe.collect(time.time()).events if e.kind == "spawn"}
    assert set(trio_events) == set(trio)
    for user in trio:
        e = trio_events[user]
        assert e.end is not None and e.attrs["outcome"] == "ok"
        truth = logged_start(hub, user) + proxy_each
        measured = e.end - e.start
        print(
            f"COMPARE concurrent {user}: probe {measured:.4f} s ({e.attrs['source']}, "
            f"stream {e.attrs.get('progress_seconds')}), hub log+proxy {truth:.4f} s"
        )
        assert abs(measured - truth) <= tolerance(truth), (user, measured, truth, e.attrs)
    total = sum(e.end - e.start for e in trio_events.values() if e.end is not None)
    assert abs(total - (after.seconds - before.seconds)) <= 0.01
    for user in trio:
        hub.stop_server(user)
    for user in trio:
        hub.wait(user, "gone")

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


def test_failed_starts_agree_with_the_hubs_counters(jupyterhub: Hub) -> None:
    """A start that fails at once, one that hits Spawner.start_timeout, and one a stop
    interrupts: each is a failed start with the hub's own time to failure; the interrupted
    one, which the hub briefly reports ready but never counts, has no session."""
    hub = jupyterhub
    probe = JupyterHubProbe(hub.url, hub.token, poll_seconds=0.5)  # polls on its own thread
    events: list[wire.Event] = []
    events += probe.collect(time.time()).events  # baseline; starts the polling thread
    try:
        # Spawner.start raises at once: the hub counts a failure before any poll sees it
        before = hub.totals()
        hub.start_server(INSTANT_FAILURE_USER)
        wait_for("the hub to count the failure", lambda: hub.totals().failures > before.failures)
        after = hub.totals()
        instant = after.failure_seconds - before.failure_seconds
        assert after.failures == before.failures + 1 and after.spawns == before.spawns

        # Spawner.start never returns: the hub gives up after start_timeout (2 s)
        before = after
        hub.start_server(START_TIMEOUT_USER)
        wait_for("the start timeout", lambda: hub.totals().failures > before.failures)
        hub.wait(START_TIMEOUT_USER, "gone")
        after = hub.totals()
        timed_out = after.failure_seconds - before.failure_seconds
        assert after.failures == before.failures + 1 and timed_out >= 2.0
        assert f"{START_TIMEOUT_USER}'s server failed to start in 2 seconds" in hub.log()

        # a 6 s start that a stop interrupts 1.5 s in
        before = after
        asked = time.time()
        hub.start_server(SLOW_USER)
        time.sleep(1.5)
        hub.stop_server(SLOW_USER)
        hub.wait(SLOW_USER, "gone")
        time.sleep(3.0)  # the probe settles an unexplained start within three polls
        after = hub.totals()
        assert after.spawns == before.spawns and after.failures == before.failures
        assert f"Interrupting spawner {SLOW_USER}" in hub.log()
        events += probe.collect(time.time()).events
    finally:
        probe.close()
    events += probe.collect(time.time()).events

    spawns = {e.user: e for e in events if e.kind == "spawn"}
    assert set(spawns) == {INSTANT_FAILURE_USER, START_TIMEOUT_USER, SLOW_USER}, events
    for user, truth in ((INSTANT_FAILURE_USER, instant), (START_TIMEOUT_USER, timed_out)):
        e = spawns[user]
        print(
            f"COMPARE {user}: probe {e.end - e.start:.4f} s {e.attrs['outcome']}, hub {truth:.4f} s"
        )
    e = spawns[INSTANT_FAILURE_USER]
    assert e.attrs["outcome"] == "failed" and e.attrs["source"] == "hub_metrics"
    assert INSTANT_FAILURE_MESSAGE in str(e.attrs["error"])
    assert e.end is not None and abs((e.end - e.start) - instant) <= tolerance(instant)
    e = spawns[START_TIMEOUT_USER]
    assert e.attrs["outcome"] == "timeout" and e.attrs["error"], e.attrs
    assert e.end is not None and abs((e.end - e.start) - timed_out) <= tolerance(timed_out)
    e = spawns[SLOW_USER]
    assert e.attrs["outcome"] == "stopped", e.attrs
    assert e.end is not None and e.start <= e.end <= time.time()
    assert 1.0 <= e.end - asked <= 4.0  # interrupted after 1.5 s (the hub waits 1 s more)
    assert [x for x in events if x.kind == "session"] == []
    assert probe.unattributed_failures == 0


def test_agent_restart_checkpoints_and_replays(jupyterhub: Hub, tmp_path: Path) -> None:
    """The probe checkpoints at shutdown; after a restart, a session stopped while the agent
    was down ends at the hub's own stop time, a start while it was down gets the hub's own
    measurement, and events not handed over before the shutdown are sent (same ids)."""
    hub, state = jupyterhub, tmp_path / "jupyterhub-probe.json"
    before = JupyterHubProbe(hub.url, hub.token, poll_seconds=0, state_path=state)
    before.poll()
    hub.start_server("dave", {"profile": "small"})
    hub.wait("dave", "ready")
    before.poll()  # dave's spawn and session, not handed over before the agent stops
    before.close()  # the agent stops: a checkpoint, events included

    asked = time.time()
    hub.stop_server("dave")
    hub.wait("dave", "gone")
    gone = time.time()
    totals = hub.totals()
    hub.start_server("heidi", {"profile": "large"})  # a start while the agent is down
    hub.wait("heidi", "ready")
    heidi_truth = hub.totals().seconds - totals.seconds
    time.sleep(1.0)

    after = JupyterHubProbe(hub.url, hub.token, poll_seconds=0, state_path=state)
    after.poll()
    out = after.collect(time.time()).events
    dave_spawn = [e for e in out if e.kind == "spawn" and e.user == "dave"]
    assert len(dave_spawn) == 1 and dave_spawn[0].attrs["outcome"] == "ok"  # replayed
    dave = [e for e in out if e.kind == "session" and e.user == "dave"]
    ended = [e for e in dave if e.end is not None]
    assert len(ended) == 1 and ended[0].id == dave_spawn[0].id
    assert ended[0].attrs["end_source"] == "hub" and ended[0].attrs["profile"] == "small"
    assert ended[0].end is not None and asked <= ended[0].end <= gone
    heidi = [e for e in out if e.kind == "spawn" and e.user == "heidi"]
    assert len(heidi) == 1 and heidi[0].attrs["outcome"] == "ok", out
    assert heidi[0].attrs["source"] == "hub_metrics" and heidi[0].end is not None
    print(
        f"COMPARE heidi (agent down): probe {heidi[0].end - heidi[0].start:.4f} s, "
        f"hub {heidi_truth:.4f} s; dave ended {ended[0].end - asked:.3f} s after the stop request"
    )
    assert abs((heidi[0].end - heidi[0].start) - heidi_truth) <= tolerance(heidi_truth)
    assert [e.end for e in out if e.kind == "session" and e.user == "heidi"] == [None]
    after.close()

    # once ended and handed over, it is forgotten: a second restart reports nothing more
    again = JupyterHubProbe(hub.url, hub.token, poll_seconds=0, state_path=state)
    again.poll()
    assert [e for e in again.collect(time.time()).events if e.end is not None] == []
    again.close()
    hub.stop_server("heidi")
    hub.wait("heidi", "gone")


def test_an_unreadable_state_file_starts_afresh(tmp_path: Path) -> None:
    state = tmp_path / "jupyterhub-probe.json"
    state.write_text("{not json")
    probe = JupyterHubProbe("http://127.0.0.1:9", "t", poll_seconds=0, state_path=state)
    assert probe._servers == {} and probe._baseline  # noqa: SLF001
    # the first format (open sessions only) is still read
    old = [{"user": "dave", "server": "", "started": 1.0, "profile": "small", "seen": 5.0}]
    state.write_text(json.dumps(old))
    probe = JupyterHubProbe("http://127.0.0.1:9", "t", poll_seconds=0, state_path=state)
    kept = probe._servers[("dave", "")]  # noqa: SLF001
    assert kept.session_open and kept.started == 1.0 and kept.seen == 5.0


def test_parsers() -> None:
    body = (
        'jupyterhub_server_spawn_duration_seconds_count{reason="none",status="success"} 3.0\n'
        'jupyterhub_server_spawn_duration_seconds_sum{reason="none",status="success"} 12.5\n'
        'jupyterhub_server_spawn_duration_seconds_count{reason="error",status="failure"} 1.0\n'
        'jupyterhub_proxy_add_duration_seconds_sum{status="success"} 0.25\n'
        'jupyterhub_proxy_add_duration_seconds_sum{status="failure"} 9.0\n'
    )
    body += (
        'jupyterhub_server_spawn_duration_seconds_count{reason="",status="error"} 2.0\n'
        'jupyterhub_server_spawn_duration_seconds_sum{reason="error",status="failure"} 0.5\n'
        'jupyterhub_server_spawn_duration_seconds_sum{reason="",status="error"} 4.25\n'
    )
    totals = parse_hub_metrics(body)
    assert totals.spawns == 3.0 and totals.seconds == pytest.approx(12.75)
    assert totals.failures == 3.0 and totals.failure_seconds == pytest.approx(4.75)
    assert classify_failure("Spawn failed: ") == ("timeout", NO_MESSAGE_TIMEOUT)
    assert classify_failure("Spawn failed: Server at x didn't respond in 3 seconds")[0] == (
        "timeout"
    )
    assert classify_failure("Spawn failed: no quota") == ("failed", "Spawn failed: no quota")
    assert parse_time("2026-09-21T14:13:20.250000Z") == 1_790_000_000.25
    assert parse_time(None) is None
