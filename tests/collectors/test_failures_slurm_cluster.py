"""Failure rates from a real Slurm: the jobs of the Slurm probe's cluster test (a completed
job, one that exits 3, an array, a job cancelled while running, a requeued one that then
completes, one killed by its time limit) through the probe and the real ingest; the failure
rates and the failed jobs by state and exit code equal what sacct itself lists."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from fastapi.testclient import TestClient

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query import failures
from afmon.aggregator.query.base import LOCAL_ADMIN
from afmon.aggregator.web.app import create_app
from tests.collectors.slurm_cluster import SlurmCluster
from tests.collectors.test_probe_slurm_cluster import (  # noqa: F401  (the module's fixtures)
    FACILITY,
    TOKEN,
    Run,
    cluster,
    identity_file,
    jobs,
    post,
    sacct_allocations,
)


def _sacct_outcomes(c: SlurmCluster) -> tuple[Counter[tuple[str, str]], Counter[tuple[str, ...]]]:
    """From sacct's own rows (one per job): (user, outcome) counts and (user, state, exit code)
    of the jobs that did not succeed."""
    outcomes: Counter[tuple[str, str]] = Counter()
    failed: Counter[tuple[str, ...]] = Counter()
    for row in sacct_allocations(c):
        state = row["State"].split()[0]  # "CANCELLED by 0"
        code = row["ExitCode"].partition(":")[0]
        if state == "CANCELLED":
            outcome = "cancelled"
        elif state == "TIMEOUT":
            outcome = "timed_out"
        else:
            outcome = "ok" if state == "COMPLETED" and code == "0" else "failed"
        outcomes[(row["User"], outcome)] += 1
        if outcome != "ok":
            failed[(row["User"], state, code, outcome)] += 1
    return outcomes, failed


def test_failure_rates_equal_sacct(cluster: SlurmCluster, jobs: Run, tmp_path: Path) -> None:  # noqa: F811
    a, b = cluster.users
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path}/afmon.sqlite",
        facility_tokens={FACILITY: TOKEN},
        identity_file=identity_file(tmp_path, cluster.users),
    )
    client = TestClient(create_app(settings, with_dashboard=False))
    assert post(client, 1, time.time(), events=list(jobs.polled.values()))["status"] == "applied"
    engine = client.app.state.services.engine
    rates = failures.failure_rates(engine, LOCAL_ADMIN, 0, time.time() + 3600, by="member")
    got = {r.member.split("|")[1]: r for r in rates.itertuples() if r.activity == "batch"}
    outcomes, failed = _sacct_outcomes(cluster)
    for user, member in ((a, "alice"), (b, "bob")):
        r = got[member]
        starts = sum(n for (u, _), n in outcomes.items() if u == user)
        bad = outcomes[(user, "failed")] + outcomes[(user, "timed_out")]
        assert (r.starts, r.failed, r.timed_out, r.cancelled) == (
            starts, bad, outcomes[(user, "timed_out")], outcomes[(user, "cancelled")],
        )  # fmt: skip
        assert r.failure_rate == bad / starts
    # alice: 13 jobs (the requeued job once), the one that exits 3 failed; bob: 3 jobs, one
    # killed by its time limit (a failure) and one cancelled (none)
    assert (got["alice"].starts, got["alice"].failed) == (13, 1)
    assert (got["bob"].starts, got["bob"].failed, got["bob"].cancelled) == (3, 1, 1)
    table = failures.batch_failures(engine, LOCAL_ADMIN, 0, time.time() + 3600, by="member")
    rows = Counter({
        ({"alice": a, "bob": b}[r.member.split("|")[1]], r.state, str(r.exit_code), r.outcome):
        r.jobs for r in table.itertuples()
    })  # fmt: skip
    assert rows == failed
    assert rows[(a, "FAILED", "3", "failed")] == 1
