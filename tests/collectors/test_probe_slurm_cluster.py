"""The Slurm probe against a real single-node Slurm (munge, slurmdbd on MariaDB, slurmctld,
slurmd in a network namespace): jobs of two users through the real ingest, and the ledger's
per-member wall, CPU and job counts equal sacct's own.

The jobs: a completed one, a failed one (exit 3), a 3-task array, a 2-core job, a job
cancelled while running, and a job killed by its time limit (Slurm's limits are whole
minutes and checked every 30 s, so that one job keeps the test waiting 60-90 s).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.reads import LOCAL_ADMIN, Query
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from afmon.collectors.probes.slurm import SlurmProbe, parse_duration
from tests.collectors.slurm_cluster import NODE, PARTITION, SlurmCluster

TOKEN = "slurm-test-token"
FACILITY = "af-slurm"
HS23 = 12.5
BURN = "end=$((SECONDS+{s})); while [ $SECONDS -lt $end ]; do :; done"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    c = SlurmCluster()
    try:
        c.start()
    except Exception as exc:  # noqa: BLE001  (any start failure fails the test, clearly)
        c.stop()
        pytest.fail(f"could not start a real Slurm for this test (it needs root): {exc}")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def jobs(cluster: SlurmCluster) -> dict[str, str]:
    """Run the jobs; name -> job id (array: the array's id)."""
    a, b = cluster.users
    ids = {
        # first the two that must be running: one waits for its time limit, one is cancelled
        "timeout": cluster.submit(b, "sleep 300", "--time=1"),
        "cancelled": cluster.submit(b, "sleep 300"),
        "ok": cluster.submit(a, BURN.format(s=2)),
        "failed": cluster.submit(a, "exit 3"),
        "array": cluster.submit(a, BURN.format(s=1), "--array=0-2"),
        "multicore": cluster.submit(
            b, f"{BURN.format(s=2)} &\n{BURN.format(s=2)}\nwait", "--cpus-per-task=2"
        ),
    }
    deadline = time.monotonic() + 60
    while cluster.states().get(ids["cancelled"]) != "RUNNING":
        if time.monotonic() > deadline:
            pytest.fail(f"the job to cancel never ran: {cluster.states()}\n{cluster.logs()}")
        time.sleep(0.3)
    time.sleep(1.2)  # let it use some wall time
    cluster.run("scancel", ids["cancelled"])
    cluster.wait_for("done", timeout=240)
    return ids


def sacct_allocations(cluster: SlurmCluster) -> list[dict[str, str]]:
    """sacct's own view, read independently of the probe: one dict per job allocation."""
    fields = ["JobID", "User", "ElapsedRaw", "TotalCPU", "CPUTimeRAW", "State", "ExitCode"]
    out = cluster.run("sacct", "-P", "-n", "-a", f"--format={','.join(fields)}", "-S", "now-1hour")
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]
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


def test_ledger_equals_sacct_for_two_users(
    cluster: SlurmCluster, jobs: dict[str, str], tmp_path: Path
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

    state = tmp_path / "slurm-probe.json"
    probe = SlurmProbe(sacct=["sacct"], runner=cluster.runner, state_path=state)
    events = probe.collect(time.time()).events
    assert probe.state == "ready"
    by_id = {e.id.rsplit(":", 1)[1]: e for e in events}
    j = jobs
    assert set(by_id) == {
        j["ok"],
        j["failed"],
        f"{j['array']}_0",
        f"{j['array']}_1",
        f"{j['array']}_2",
        j["multicore"],
        j["cancelled"],
        j["timeout"],
    }
    assert by_id[j["failed"]].attrs["state"] == "FAILED"
    assert by_id[j["failed"]].attrs["exit_code"] == 3
    assert by_id[j["cancelled"]].attrs["state"] == "CANCELLED"
    assert by_id[j["timeout"]].attrs["state"] == "TIMEOUT"
    assert by_id[j["timeout"]].end - by_id[j["timeout"]].start >= 60
    assert by_id[j["multicore"]].attrs["cores"] == 2
    assert by_id[j["multicore"]].user == b
    assert {e.attrs["partition"] for e in events} == {PARTITION}
    assert all(e.attrs["node"] == NODE for e in events)
    assert post(client, 2, now, events=events)["status"] == "applied"

    # sacct's own numbers, per user
    expected: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in sacct_allocations(cluster):
        e = expected[row["User"]]
        e["jobs"] += 1
        e["wall"] += int(row["ElapsedRaw"])
        e["core"] += int(row["CPUTimeRAW"])  # Slurm's own wall x allocated cores
        e["cpu"] += parse_duration(row["TotalCPU"])
    assert expected[a]["jobs"] == 5 and expected[b]["jobs"] == 3
    assert expected[a]["cpu"] > 0 and expected[b]["cpu"] > 0  # the jobs really burnt CPU
    got = ledger(client)
    for user, member in ((a, "alice"), (b, "bob")):
        assert got[(member, "batch_jobs")] == expected[user]["jobs"]
        assert got[(member, "batch_job_seconds")] == expected[user]["wall"]
        assert got[(member, "batch_wall_core_seconds")] == expected[user]["core"]
        assert got[(member, "batch_cpu_seconds")] == pytest.approx(expected[user]["cpu"], abs=1e-9)
        assert got[(member, "batch_cpu_hs23_seconds")] == pytest.approx(
            expected[user]["cpu"] * HS23, abs=1e-6
        )
        assert got[(member, "batch_wall_core_hs23_seconds")] == expected[user]["core"] * HS23
    assert ("alice", "batch_gpu_seconds") not in got  # no GPUs on this node

    # efficiency and queue wait as readers see them
    q = Query(client.app.state.services.engine)
    usage = q.batch_usage(LOCAL_ADMIN, now - 7200, now + 3600).set_index("member")
    bob = usage.loc["https://cms.example.org/|bob"]
    assert bob["cpu_efficiency"] == pytest.approx(expected[b]["cpu"] / expected[b]["core"])
    waits = q.latency_percentiles(
        LOCAL_ADMIN, "batch_queue_wait", now - 7200, now + 3600, by=("member",)
    )
    assert waits["count"].sum() == 8

    # the same window again, and a restarted probe: nothing new, nothing counted twice
    before = ledger(client)
    assert probe.collect(time.time()).events == []
    again = probe.read(now - 3600, time.time()).jobs
    assert len(again) == 8
    assert post(client, 3, now, events=[job.to_event() for job in again])["status"] == "applied"
    restarted = SlurmProbe(sacct=["sacct"], runner=cluster.runner, state_path=state)
    assert restarted.collect(time.time()).events == []
    assert ledger(client) == before
