"""The Slurm probe against a real single-node Slurm (munge, slurmdbd on MariaDB, slurmctld,
slurmd in a network namespace): jobs of two users through the real ingest, and the ledger's
per-member wall, CPU and job counts equal sacct's own (`sacct --duplicates`: every run).

The jobs: a completed one, a failed one (exit 3), a 10-task array, a 2-core job, a job
cancelled while running, a job requeued (`scontrol requeue`) while running, which then runs
again to completion, and a job killed by its time limit (Slurm's limits are whole minutes and
checked every 30 s, so that one job keeps the test waiting 60-90 s).

The probe polls *while* the jobs run, as an agent does, so it sees array tasks that sacct
prints first under their raw id (and without partition and QoS) and later, complete, as
`<array>_<task>`, and the requeued run as soon as it ended.

The jobs run in two accounts and two QoS (a second account and QoS added with sacctmgr), so
the ledger's breakdown by account and by QoS is compared with sacct's, grouped the same way.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.reads import LOCAL_ADMIN, Query
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from afmon.collectors.probes.slurm import SACCT_ENV, SlurmProbe, parse_duration, parse_time
from tests.collectors.slurm_cluster import (
    ACCOUNT,
    CLUSTER,
    END_STATES,
    NODE,
    PARTITION,
    SlurmCluster,
)

OTHER_ACCOUNT = "chem"  # the second account, and the second QoS (the first is Slurm's normal)
HIGH_QOS = "high"
TOKEN = "slurm-test-token"
FACILITY = "af-slurm"
HS23 = 12.5
CPU_SETTLE = 0.05  # s of CPU slurmdbd may add to a run after its steps ended (see below)
BURN = "end=$((SECONDS+{s})); while [ $SECONDS -lt $end ]; do :; done"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    c = SlurmCluster()
    try:
        c.start()
        add_account_and_qos(c)
    except Exception as exc:  # noqa: BLE001  (any start failure fails the test, clearly)
        c.stop()
        pytest.fail(f"could not start a real Slurm for this test (it needs root): {exc}")
    try:
        yield c
    finally:
        c.stop()


def add_account_and_qos(c: SlurmCluster, timeout: float = 30) -> None:
    """A second account for both users and a second QoS, then wait until slurmctld has them
    from slurmdbd (a job submitted before would be refused)."""
    c.run("sacctmgr", "-i", "add", "account", OTHER_ACCOUNT, f"cluster={CLUSTER}")
    c.run("sacctmgr", "-i", "add", "qos", HIGH_QOS)
    for user in c.users:
        c.run("sacctmgr", "-i", "add", "user", user, f"account={OTHER_ACCOUNT}",
              f"cluster={CLUSTER}")  # fmt: skip
        c.run("sacctmgr", "-i", "modify", "user", user, "set", f"qos+={HIGH_QOS}")
    deadline = time.monotonic() + timeout
    while True:
        known = c.run("scontrol", "show", "assoc_mgr", "flags=assoc,qos", check=False)
        if f"Account={OTHER_ACCOUNT}" in known and f"QOS={HIGH_QOS}(" in known:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"slurmctld never learnt the new account and QoS:\n{known}")
        time.sleep(0.25)


@dataclass
class Run:
    """The jobs (name -> job id; the array: the array's id), and what a probe polling every
    half second while they ran sent (event id -> event), with its state file."""

    ids: dict[str, str]
    polled: dict[str, wire.Event]
    state: Path
    polls: int


@pytest.fixture(scope="module")
def jobs(cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Run the jobs while a probe polls, as an agent would."""
    a, b = cluster.users
    state = tmp_path_factory.mktemp("slurm-probe") / "slurm-probe.json"
    probe = SlurmProbe(sacct=["sacct"], runner=cluster.runner, state_path=state)
    polled: dict[str, wire.Event] = {}
    polls = 0

    def poll() -> None:
        nonlocal polls
        for e in probe.collect(time.time()).events:
            assert e.id not in polled, f"{e.id} sent twice"
            polled[e.id] = e
        assert probe.state == "ready", probe.state
        polls += 1

    def until(what: str, done: Callable[[dict[str, str]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done(states := cluster.states()):
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: {states}\n{cluster.logs()}")
            poll()
            time.sleep(0.5)

    ids = {
        # first the two that must be running: one waits for its time limit, one is cancelled
        "timeout": cluster.submit(b, "sleep 300", "--time=1"),
        "cancelled": cluster.submit(b, "sleep 300"),
        "requeued": cluster.submit(a, BURN.format(s=4)),
        "ok": cluster.submit(a, BURN.format(s=2)),
        "failed": cluster.submit(a, "exit 3", f"--account={OTHER_ACCOUNT}"),
        "array": cluster.submit(a, BURN.format(s=1), "--array=0-9", f"--qos={HIGH_QOS}"),
        "multicore": cluster.submit(
            b,
            f"{BURN.format(s=2)} &\n{BURN.format(s=2)}\nwait",
            "--cpus-per-task=2",
            f"--account={OTHER_ACCOUNT}",
            f"--qos={HIGH_QOS}",
        ),  # fmt: skip
    }
    until("the job to cancel never ran", lambda s: s.get(ids["cancelled"]) == "RUNNING", 60)
    time.sleep(1.2)  # let it use some wall time
    cluster.run("scancel", ids["cancelled"])
    # the job to requeue runs next (on the freed core): requeue it a second into its run
    until("the job to requeue never ran", lambda s: s.get(ids["requeued"]) == "RUNNING", 60)
    time.sleep(1.0)
    cluster.run("scontrol", "requeue", ids["requeued"])
    # it runs again (after Slurm's requeue delay, cred_expire) and completes
    until(
        "the jobs did not all end",
        lambda s: bool(s) and set(s.values()) <= END_STATES and not cluster.queue(),
        300,
    )
    # records that reached sacct incomplete (no partition, QoS Unknown) are sent once whole
    deadline = time.monotonic() + 60
    poll()
    while probe.held_back:
        assert time.monotonic() < deadline, "sacct's records never became complete"
        time.sleep(0.5)
        poll()
    return Run(ids, polled, state, polls)


SACCT_FIELDS = [
    "JobID", "JobIDRaw", "User", "Start", "ElapsedRaw", "AllocCPUS", "TotalCPU", "CPUTimeRAW",
    "State", "ExitCode", "QOS", "Account",
]  # fmt: skip


def sacct_allocations(cluster: SlurmCluster, *options: str) -> list[dict[str, str]]:
    """sacct's own view, read independently of the probe: one dict per job allocation
    (with `-D`, per run of a requeued job)."""
    argv = ["sacct", "-P", "-n", "-a", *options, f"--format={','.join(SACCT_FIELDS)}"]
    out = cluster.runner([*argv, "-S", "now-1hour"], dict(SACCT_ENV))  # times in UTC
    rows = [dict(zip(SACCT_FIELDS, line.split("|"), strict=True)) for line in out.splitlines()]
    return [r for r in rows if "." not in r["JobID"]]


def identity_file(tmp: Path, users: tuple[str, str]) -> Path:
    path = tmp / "identity.toml"
    path.write_text(f"""
[vos.atlas]
issuer = "https://atlas.example.org/"
[vos.cms]
issuer = "https://cms.example.org/"
[[members]]
vo = "atlas"
subject = "alice"
display_name = "Alice"
accounts = [{{ facility = "{FACILITY}", local = "{users[0]}" }}]
[[members]]
vo = "cms"
subject = "bob"
display_name = "Bob"
accounts = [{{ facility = "{FACILITY}", local = "{users[1]}" }}]
""")
    return path


def post(client: TestClient, seq: int, now: float, **kw: object) -> dict[str, object]:
    batch = wire.Batch(
        version=wire.WIRE_VERSION,
        agent_id="slurm-ctl",
        facility=FACILITY,
        node="slurm-ctl",
        seq=seq,
        sent_at=now,
        **kw,
    )  # type: ignore[arg-type]
    r = client.post(
        "/api/v1/ingest", content=wire.encode(batch), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert r.status_code == 200, r.text
    return r.json()


def sacct_totals(cluster: SlurmCluster, column: str) -> dict[str, dict[str, float]]:
    """sacct's own numbers per value of `column` (User, Account, QOS): runs, wall seconds,
    wall core-seconds and CPU seconds over every run (`-D`), jobs as sacct lists them."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in sacct_allocations(cluster, "-D"):
        t = totals[row[column]]
        t["runs"] += 1
        t["wall"] += int(row["ElapsedRaw"])
        t["core"] += int(row["CPUTimeRAW"])  # Slurm's own wall x allocated cores
        t["cpu"] += parse_duration(row["TotalCPU"])
    for row in sacct_allocations(cluster):  # without -D: one row per job, as sites count
        totals[row[column]]["jobs"] += 1
    return totals


def breakdown(client: TestClient) -> dict[tuple[str, str, int], float]:
    """`batch_usage` summed over account, QoS and partition: (member, resource, hour)."""
    engine = client.app.state.services.engine
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT member_id, resource, hour, SUM(amount) FROM batch_usage "
                "GROUP BY member_id, resource, hour"
            )
        )
        return {(m, r, h): a for m, r, h, a in rows}


def hourly_ledger(client: TestClient) -> dict[tuple[str, str, int], float]:
    engine = client.app.state.services.engine
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT member_id, resource, hour, amount FROM usage WHERE resource LIKE 'batch%'")
        )
        return {(m, r, h): a for m, r, h, a in rows}


def ledger(client: TestClient) -> dict[tuple[str, str], float]:
    engine = client.app.state.services.engine
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT member_id, resource, SUM(amount) FROM usage "
                "WHERE resource LIKE 'batch%' GROUP BY member_id, resource"
            )
        )
        return {(m.split("|")[1], r): a for m, r, a in rows}


def run_key(row: dict[str, str]) -> tuple[str, float]:
    """A run as sacct identifies it: its raw id and its start."""
    start = parse_time(row["Start"])
    assert start is not None, row
    return row["JobIDRaw"], start


def test_live_polling_sends_each_run_once_as_sacct_duplicates_lists_them(
    cluster: SlurmCluster, jobs: Run
) -> None:
    """Array tasks: as many as sacct has (10), though the probe polled while sacct printed
    some under their raw ids first. The requeued job: both runs, each with sacct's elapsed
    and elapsed x cpus for that run."""
    j, polled = jobs.ids, list(jobs.polled.values())
    assert jobs.polls >= 20  # it really polled while the jobs ran
    runs = [r for r in sacct_allocations(cluster, "-D") if r["Start"] not in ("", "None")]
    by_run = {(e.attrs["job_id_raw"], e.start): e for e in polled}
    assert len(by_run) == len(polled) == len(runs) == 17  # 16 jobs, one of them ran twice
    assert set(by_run) == {run_key(r) for r in runs}

    # the array: 10 tasks in sacct, 10 accounted, each under its array name at the end
    array = f"{j['array']}_"
    tasks = [r for r in sacct_allocations(cluster, "-X") if r["JobID"].startswith(array)]
    assert len(tasks) == 10
    array_events = [by_run[run_key(r)] for r in tasks]
    assert len({e.id for e in array_events}) == 10
    printed = {e.attrs["job_id"] for e in array_events}
    raw_printed = printed - {r["JobID"] for r in tasks}  # those sent before sacct named them
    assert raw_printed <= {r["JobIDRaw"] for r in tasks}

    # the requeued job: sacct --duplicates has two runs, the first ended REQUEUED
    requeued = [r for r in runs if r["JobIDRaw"] == j["requeued"]]
    assert [r["State"] for r in requeued] == ["REQUEUED", "COMPLETED"], requeued
    assert len([r for r in sacct_allocations(cluster, "-X") if r["JobID"] == j["requeued"]]) == 1
    for row in requeued:
        e = by_run[run_key(row)]
        assert e.attrs["state"] == row["State"]
        assert e.attrs["requeued"] is (row["State"] == "REQUEUED")
        assert e.attrs["wall_seconds"] == int(row["ElapsedRaw"])
        assert e.attrs["wall_seconds"] * e.attrs["cores"] == int(row["CPUTimeRAW"])
        assert e.attrs["cpu_seconds"] == parse_duration(row["TotalCPU"])
    # the second run burnt its 4 s in full (bash's SECONDS counts whole seconds: 3 s and a bit,
    # which Slurm may print as 3); the first was cut short by the requeue at any point
    assert int(requeued[1]["ElapsedRaw"]) >= 3
    assert len({by_run[run_key(r)].id for r in requeued}) == 2

    # QoS and account: the accounting dimensions, as sacct has them
    for row in runs:
        e = by_run[run_key(row)]
        assert (e.attrs["qos"], e.attrs["account"]) == (row["QOS"], row["Account"])
    assert {e.attrs["qos"] for e in polled} == {"normal", HIGH_QOS}
    assert {e.attrs["account"] for e in polled} == {ACCOUNT, OTHER_ACCOUNT}
    assert not [e.id for e in polled if e.attrs.get("incomplete")]


def test_ledger_equals_sacct_for_two_users(
    cluster: SlurmCluster, jobs: Run, tmp_path: Path
) -> None:
    a, b = cluster.users
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path}/afmon.sqlite",
        facility_tokens={FACILITY: TOKEN},
        identity_file=identity_file(tmp_path, cluster.users),
    )
    now = time.time()
    client = TestClient(create_app(settings, with_dashboard=False))
    # the worker node reports its HEPscore23 per core, as its agent would
    post(
        client,
        1,
        now,
        series=[
            wire.Series("node_hepscore23_per_core", "HS23", "gauge", {"node": NODE}, [now], [HS23])
        ],
    )

    events = list(jobs.polled.values())
    by_job = {e.attrs["job_id"]: e for e in events if not e.attrs["requeued"]}
    j = jobs.ids
    assert by_job[j["failed"]].attrs["state"] == "FAILED"
    assert by_job[j["failed"]].attrs["exit_code"] == 3
    assert by_job[j["cancelled"]].attrs["state"] == "CANCELLED"
    assert by_job[j["timeout"]].attrs["state"] == "TIMEOUT"
    assert by_job[j["timeout"]].end - by_job[j["timeout"]].start >= 60
    assert by_job[j["multicore"]].attrs["cores"] == 2
    assert by_job[j["multicore"]].user == b
    assert {e.attrs["partition"] for e in events} == {PARTITION}
    assert all(e.attrs["node"] == NODE for e in events)
    assert post(client, 2, now, events=events)["status"] == "applied"

    # sacct's own numbers, per user, over every run (--duplicates)
    expected = sacct_totals(cluster, "User")
    # alice: ok, failed, 10 array tasks, 2 runs of the requeued job; bob: 3 jobs
    assert expected[a]["runs"] == 14 and expected[b]["runs"] == 3
    assert expected[a]["jobs"] == 13 and expected[b]["jobs"] == 3
    assert expected[a]["cpu"] > 0 and expected[b]["cpu"] > 0  # the jobs really burnt CPU
    got = ledger(client)
    # CPU: slurmdbd may still finalise a killed job's TotalCPU by a few milliseconds after the
    # probe has read every step ended (seen once under load: 2.171 s read, 2.174 s later), so
    # CPU is compared within CPU_SETTLE; jobs, wall and core-seconds exactly
    for user, member in ((a, "alice"), (b, "bob")):
        # batch_jobs counts jobs (sacct), the usage every run (sacct -D)
        assert got[(member, "batch_jobs")] == expected[user]["jobs"]
        assert got[(member, "batch_job_seconds")] == expected[user]["wall"]
        assert got[(member, "batch_wall_core_seconds")] == expected[user]["core"]
        assert got[(member, "batch_cpu_seconds")] == pytest.approx(
            expected[user]["cpu"], abs=CPU_SETTLE
        )
        assert got[(member, "batch_cpu_hs23_seconds")] == pytest.approx(
            expected[user]["cpu"] * HS23, abs=CPU_SETTLE * HS23
        )
        assert got[(member, "batch_wall_core_hs23_seconds")] == expected[user]["core"] * HS23
    assert ("alice", "batch_gpu_seconds") not in got  # no GPUs on this node

    # per account and per QoS: the breakdown equals sacct grouped the same way
    q = Query(client.app.state.services.engine)
    for by, column, counts in (
        ("account", "Account", {ACCOUNT: 14, OTHER_ACCOUNT: 2}),
        ("qos", "QOS", {"normal": 5, HIGH_QOS: 11}),
    ):
        want = sacct_totals(cluster, column)
        got_by = q.batch_by(LOCAL_ADMIN, now - 7200, now + 3600, by=by).set_index(by)
        assert {k: w["jobs"] for k, w in want.items()} == counts
        assert got_by["batch_jobs"].to_dict() == counts
        for key, w in want.items():
            row = got_by.loc[key]
            assert row["batch_job_seconds"] == w["wall"], (by, key)
            assert row["batch_wall_core_seconds"] == w["core"], (by, key)
            assert row["batch_cpu_seconds"] == pytest.approx(w["cpu"], abs=CPU_SETTLE), (by, key)
            assert row["batch_wall_core_hs23_seconds"] == w["core"] * HS23
            assert row["batch_cpu_hs23_seconds"] == pytest.approx(
                w["cpu"] * HS23, abs=CPU_SETTLE * HS23
            )
    # and per member, resource and hour it sums to the ledger: jobs, wall and core-seconds
    # (whole seconds) exactly, CPU (sacct's milliseconds) up to the float's last bits
    hourly, parts = hourly_ledger(client), breakdown(client)
    assert set(parts) == set(hourly)
    for key, amount in hourly.items():
        if key[1] in ("batch_jobs", "batch_job_seconds", "batch_wall_core_seconds"):
            assert parts[key] == amount, key
        else:
            assert parts[key] == pytest.approx(amount, rel=1e-12), key

    # efficiency and queue wait as readers see them
    usage = q.batch_usage(LOCAL_ADMIN, now - 7200, now + 3600).set_index("member")
    bob = usage.loc["https://cms.example.org/|bob"]
    assert bob["cpu_efficiency"] == pytest.approx(
        expected[b]["cpu"] / expected[b]["core"], abs=CPU_SETTLE / expected[b]["core"]
    )
    waits = q.latency_percentiles(
        LOCAL_ADMIN, "batch_queue_wait", now - 7200, now + 3600, by=("member",)
    )
    assert waits["count"].sum() == 17

    # the same window read at once gives the same ids as live polling; sent again and by a
    # restarted probe (the polling probe's state file): nothing new, nothing counted twice
    before, before_parts = ledger(client), breakdown(client)
    again = SlurmProbe(sacct=["sacct"], runner=cluster.runner).read(now - 3600, time.time()).jobs
    assert {job.event_id for job in again} == set(jobs.polled)
    assert post(client, 3, now, events=[job.to_event() for job in again])["status"] == "applied"
    restarted = SlurmProbe(sacct=["sacct"], runner=cluster.runner, state_path=jobs.state)
    assert restarted.collect(time.time()).events == []
    assert ledger(client) == before and breakdown(client) == before_parts
