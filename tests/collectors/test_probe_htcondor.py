"""The HTCondor probe on `condor_history -json` output (HTCondor daemons cannot run here).

tests/collectors/data/condor_history.json is shaped exactly like condor_history's JSON: an
array of ClassAds, attributes sorted, "\\n,\\n" between ads, absent attributes simply missing.
It holds complete jobs, a 4-core GPU job, a job with time lost to an eviction, a removed job
that ran, one that never ran, and jobs lacking RequestCpus, RemoteSysCpu, QDate,
JobStartDate and Owner. Totals go through the real ingest and are checked exactly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from afmon.collectors.probes.htcondor import (
    ATTRIBUTES,
    UNKNOWN_OWNER,
    HTCondorProbe,
    parse_history,
)

HISTORY = (Path(__file__).parent / "data" / "condor_history.json").read_text()
T0 = 1_795_597_200  # 2026-11-25T09:00:00Z, the first QDate of the fixture
TOKEN = "condor-token"
IDENTITY = """
[vos.atlas]
issuer = "https://atlas.example.org/"
[vos.cms]
issuer = "https://cms.example.org/"
[[members]]
vo = "atlas"
subject = "alice"
display_name = "Alice"
accounts = [{ facility = "af", local = "alice" }]
[[members]]
vo = "cms"
subject = "bob"
display_name = "Bob"
accounts = [{ facility = "af", local = "bob" }]
"""


def test_history_becomes_events_and_missing_attributes_are_named() -> None:
    result = parse_history(HISTORY)
    events = {e.id.rsplit("#", 2)[1]: e for e in result.events}
    assert sorted(events) == ["1001.0", "1002.0", "1003.0", "1004.0", "1005.0", "1006.0", "1008.0"]
    assert result.left_out == 1  # 1007 was removed before it ever ran
    e = events["1002.0"]
    assert e.id == "htcondor:submit01.af.example.org#1002.0#1795597500"
    assert (e.user, e.start, e.end) == ("alice", T0 + 900, T0 + 4500)
    assert e.attrs["cores"] == 4 and e.attrs["gpus"] == 1 and e.attrs["exit_code"] == 1
    assert e.attrs["cpu_seconds"] == 12400.0 and e.attrs["queue_wait_seconds"] == 600.0
    assert e.attrs["node"] == "gpu01.af.example.org" and e.attrs["account"] == "group_atlas"
    assert "missing" not in e.attrs
    assert events["1003.0"].attrs["wall_seconds"] == 3000.0  # less than end - start: evicted
    assert events["1004.0"].attrs["missing"] == "RemoteSysCpu,RequestCpus"
    assert events["1004.0"].attrs["cores"] == 1 and events["1004.0"].attrs["cpu_seconds"] == 1100
    assert events["1005.0"].attrs["missing"] == "JobStartDate,QDate"
    assert events["1005.0"].start == T0 + 4000  # completion - wall
    assert events["1006.0"].attrs["state"] == "REMOVED"
    assert events["1006.0"].end == T0 + 2000  # EnteredCurrentStatus: removed jobs have no
    assert events["1006.0"].attrs["missing"] == "CompletionDate"  # CompletionDate
    assert events["1008.0"].user == UNKNOWN_OWNER
    assert result.warnings == [
        "job submit01.af.example.org#1004.0#1795597260 (bob) lacks RemoteSysCpu, RequestCpus: "
        "derived or defaulted, see the docs",
        "job submit01.af.example.org#1005.0#1795597200 (alice) lacks JobStartDate, QDate: "
        "derived or defaulted, see the docs",
        "job submit01.af.example.org#1006.0#1795598100 (alice) lacks CompletionDate: "
        "derived or defaulted, see the docs",
        f"job submit01.af.example.org#1008.0#1795597200 ({UNKNOWN_OWNER}) lacks Owner: "
        "derived or defaulted, see the docs",
    ]


def test_not_json_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_history("Error: Cannot open history file")
    assert parse_history("").events == []  # no job matched


class Recorder:
    def __init__(self, output: str) -> None:
        self.output = output
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], env: dict[str, str]) -> str:
        self.calls.append(list(argv))
        return self.output


def test_probe_reads_by_completion_and_sends_each_job_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runner = Recorder(HISTORY)
    state = tmp_path / "htcondor-probe.json"
    probe = HTCondorProbe(
        condor_history=["condor_history"], runner=runner, state_path=state, lookback_seconds=86400
    )
    now = T0 + 8000.5
    with caplog.at_level(logging.WARNING):
        events = probe.collect(now).events
    assert len(events) == 7 and probe.state == "ready"
    assert "1004.0#1795597260 (bob) lacks RemoteSysCpu, RequestCpus" in caplog.text
    argv = runner.calls[0]
    assert argv[:4] == ["condor_history", "-json", "-completedsince", str(int(now - 86400 - 600))]
    assert argv[4] == "-attributes" and "RemoteWallClockTime" in argv[5].split(",")
    assert probe.collect(now + 60).events == []
    assert runner.calls[1][3] == str(T0 + 8000 - 600)
    again = HTCondorProbe(runner=runner, state_path=state)
    assert again.collect(now + 120).events == []
    # only jobs that ended inside the overlap need remembering
    assert json.loads(state.read_text())["seen"] == {
        "htcondor:submit01.af.example.org#1001.0#1795597200": T0 + 7800
    }


def test_totals_through_the_real_ingest_are_exact(tmp_path: Path) -> None:
    identity = tmp_path / "identity.toml"
    identity.write_text(IDENTITY)
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path}/a.sqlite",
        facility_tokens={"af": TOKEN},
        identity_file=identity,
        default_hepscore23_per_core=10.0,
    )
    client = TestClient(create_app(settings, clock=lambda: T0 + 9000.0, with_dashboard=False))
    wn01 = wire.Series(
        "node_hepscore23_per_core",
        "HS23",
        "gauge",
        {"node": "wn01.af.example.org"},
        [T0 + 10.0],
        [15.0],
    )
    events = parse_history(HISTORY).events
    common = dict(version=1, agent_id="schedd", facility="af", node="submit01", sent_at=T0)
    for seq, kw in enumerate([{"series": [wn01]}, {"events": events}, {"events": events}], 1):
        r = client.post(
            "/api/v1/ingest",
            content=wire.encode(wire.Batch(seq=seq, **kw, **common)),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert r.status_code == 200, r.text
    with client.app.state.services.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT member_id, resource, SUM(amount) FROM usage GROUP BY member_id, resource")
        )
        got = {(m.split("|")[1], r): a for m, r, a in rows}
        bob_hours = dict(
            conn.execute(
                text(
                    "SELECT hour, amount FROM usage WHERE resource = 'batch_job_seconds' "
                    "AND member_id LIKE '%|bob' ORDER BY hour"
                )
            ).all()
        )
    # alice: 1001, 1002 (4 cores, 1 GPU, on gpu01: default HS23), 1005, 1006 (on wn01: 15)
    assert got[("alice", "batch_jobs")] == 4
    assert got[("alice", "batch_job_seconds")] == 7200 + 3600 + 1000 + 1000
    assert got[("alice", "batch_wall_core_seconds")] == 7200 + 4 * 3600 + 1000 + 1000
    # CPU is spread over the hours in proportion: pieces add up to the job's CPU, but the
    # database sums floats of several hours (hence approx to a microsecond)
    assert got[("alice", "batch_cpu_seconds")] == pytest.approx(6950 + 12400 + 910 + 505, abs=1e-6)
    assert got[("alice", "batch_gpu_seconds")] == 3600
    assert got[("alice", "batch_cpu_hs23_seconds")] == pytest.approx(
        (6950 + 910 + 505) * 15 + 12400 * 10, abs=1e-6
    )
    assert got[("alice", "batch_wall_core_hs23_seconds")] == 9200 * 15 + 14400 * 10
    # bob: 1003 (2 cores, 3000 s of wall in 3600 s), 1004 (RequestCpus missing: 1 core)
    assert got[("bob", "batch_jobs")] == 2
    assert got[("bob", "batch_job_seconds")] == 3000 + 1200
    assert got[("bob", "batch_wall_core_seconds")] == 2 * 3000 + 1200
    assert got[("bob", "batch_cpu_seconds")] == pytest.approx(2950 + 1100, abs=1e-6)
    # 1003 ran its last 3000 s: [09:12, 10:02); 1004 [09:03, 09:23)
    assert bob_hours == {T0: 2880 + 1200, T0 + 3600: 120}
    # the job without an Owner is the facility's unmapped member's, not lost
    assert got[("af", "batch_jobs")] == 1
    assert got[("af", "batch_cpu_seconds")] == pytest.approx(555, abs=1e-6)


# condor_history -json as HTCondor prints jobs whose requests are expressions: the request
# is a string "\/Expr(...)\/", the slot's provisioned amounts are numbers. 2001 asked for
# "8 cores if the machine has them", got 8; 2002 asked for 2 and was given 4 (the pool rounds
# requests up); 2003's expression was never resolved (no CpusProvisioned); 2004 names its GPU
# attributes as condor_submit writes them (RequestGPUs), and was given 2 GPUs.
PROVISIONED = r"""[
{
  "ClusterId": 2001,
  "CompletionDate": 1795604400,
  "CpusProvisioned": 8,
  "GlobalJobId": "submit01.af.example.org#2001.0#1795597200",
  "JobStartDate": 1795600800,
  "JobStatus": 4,
  "LastRemoteHost": "slot1_1@wn01.af.example.org",
  "Owner": "alice",
  "QDate": 1795597200,
  "RemoteSysCpu": 1000.0,
  "RemoteUserCpu": 25000.0,
  "RemoteWallClockTime": 3600.0,
  "RequestCpus": "\/Expr(ifThenElse(TARGET.TotalSlotCpus >= 8,8,1))\/"
}
,
{
  "ClusterId": 2002,
  "CompletionDate": 1795602000,
  "CpusProvisioned": 4,
  "GlobalJobId": "submit01.af.example.org#2002.0#1795597200",
  "JobStartDate": 1795600800,
  "JobStatus": 4,
  "LastRemoteHost": "slot1_2@wn01.af.example.org",
  "Owner": "alice",
  "QDate": 1795597200,
  "RemoteSysCpu": 10.0,
  "RemoteUserCpu": 2000.0,
  "RemoteWallClockTime": 1200.0,
  "RequestCpus": 2
}
,
{
  "ClusterId": 2003,
  "CompletionDate": 1795601400,
  "GlobalJobId": "submit01.af.example.org#2003.0#1795597200",
  "JobStartDate": 1795600800,
  "JobStatus": 4,
  "LastRemoteHost": "slot1_3@wn01.af.example.org",
  "Owner": "bob",
  "QDate": 1795597200,
  "RemoteSysCpu": 5.0,
  "RemoteUserCpu": 500.0,
  "RemoteWallClockTime": 600.0,
  "RequestCpus": "\/Expr(MY.JobCores)\/"
}
,
{
  "ClusterId": 2004,
  "CompletionDate": 1795604400,
  "CpusProvisioned": 1,
  "GPUsProvisioned": 2,
  "GlobalJobId": "submit01.af.example.org#2004.0#1795597200",
  "JobStartDate": 1795602600,
  "JobStatus": 4,
  "LastRemoteHost": "slot1_4@gpu01.af.example.org",
  "Owner": "bob",
  "QDate": 1795597200,
  "RemoteSysCpu": 20.0,
  "RemoteUserCpu": 1700.0,
  "RemoteWallClockTime": 1800.0,
  "RequestCpus": 1,
  "RequestGPUs": "\/Expr(ifThenElse(TARGET.GPUs >= 2,2,1))\/"
}
]
"""


def test_provisioned_cores_and_gpus_are_preferred_over_requests(tmp_path: Path) -> None:
    """A job whose RequestCpus is an expression, provisioned 8 cores, is accounted as 8
    cores, to the core-second, through the real ingest."""
    assert "CpusProvisioned" in ATTRIBUTES and "GPUsProvisioned" in ATTRIBUTES
    result = parse_history(PROVISIONED)
    jobs = {e.id.rsplit("#", 2)[1]: e for e in result.events}
    assert {k: (e.attrs["cores"], e.attrs["cores_from"]) for k, e in jobs.items()} == {
        "2001.0": (8, "CpusProvisioned"),
        "2002.0": (4, "CpusProvisioned"),
        "2003.0": (1, "default"),
        "2004.0": (1, "CpusProvisioned"),
    }
    assert "missing" not in jobs["2001.0"].attrs  # the expression is resolved by the slot
    assert jobs["2003.0"].attrs["missing"] == "RequestCpus"  # an expression and nothing else
    assert jobs["2004.0"].attrs["gpus"] == 2  # GPUsProvisioned, whatever RequestGPUs says
    assert result.warnings == [
        "job submit01.af.example.org#2003.0#1795597200 (bob) lacks RequestCpus: "
        "derived or defaulted, see the docs"
    ]

    identity = tmp_path / "identity.toml"
    identity.write_text(IDENTITY)
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path}/p.sqlite",
        facility_tokens={"af": TOKEN},
        identity_file=identity,
        default_hepscore23_per_core=10.0,
    )
    client = TestClient(create_app(settings, clock=lambda: T0 + 9000.0, with_dashboard=False))
    batch = wire.Batch(
        version=1, agent_id="schedd", facility="af", node="submit01", sent_at=T0, seq=1,
        events=result.events,
    )  # fmt: skip
    r = client.post(
        "/api/v1/ingest", content=wire.encode(batch), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert r.status_code == 200, r.text
    with client.app.state.services.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT member_id, resource, SUM(amount) FROM usage GROUP BY member_id, resource")
        )
        got = {(m.split("|")[1], r): a for m, r, a in rows}
    assert got[("alice", "batch_wall_core_seconds")] == 8 * 3600 + 4 * 1200
    assert got[("bob", "batch_wall_core_seconds")] == 1 * 600 + 1 * 1800
    assert got[("bob", "batch_gpu_seconds")] == 2 * 1800
