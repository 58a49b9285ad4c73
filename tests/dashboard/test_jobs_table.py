"""`events_list.batch_jobs` and `jobs_table` on a SQLite store: the row limit, newest first,
scoping per role, a running job, unknown values shown as n/a."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine, text

from afmon.aggregator.query.base import LOCAL_ADMIN, Principal
from afmon.aggregator.query.events_list import batch_jobs, efficiency
from afmon.dashboard.jobs_table import jobs_table
from tests.dashboard.test_app import T0
from tests.dashboard.test_app import engine as engine  # noqa: F401  (the fixture)


def _job(conn: object, id_: str, member: str, start: float, end: float | None,
         **attrs: object) -> None:  # fmt: skip
    conn.execute(  # type: ignore[attr-defined]
        text(
            'INSERT INTO event (facility, kind, id, node, local_user, member_id, start, "end", '
            "attrs) VALUES ('af', 'batch_job', :id, 'wn', 'u', :m, :s, :e, :a)"
        ),
        {"id": id_, "m": member, "s": start, "e": end, "a": json.dumps(attrs)},
    )


@pytest.fixture
def jobs(engine: Engine) -> Engine:  # noqa: F811
    with engine.begin() as conn:
        for i in range(5):  # alice: 1 core x 100 s, CPU 10 s x i
            attrs = dict(cores=1, cpu_seconds=10.0 * i, wall_seconds=100, state="COMPLETED",
                         exit_code=0)  # fmt: skip
            _job(conn, f"a{i}", "iss-a|alice", T0 + i, T0 + i + 100, **attrs)
        _job(conn, "b-run", "iss-c|bob", T0 + 50, None, cores=2)  # running, no CPU time yet
    return engine


def test_efficiency_needs_cpu_wall_and_cores() -> None:
    assert efficiency(300.0, 100.0, 4) == pytest.approx(0.75)
    assert efficiency(None, 100.0, 4) is None
    assert efficiency(300.0, None, 4) is None
    assert efficiency(300.0, 0.0, 4) is None


def test_newest_first_limited_and_scoped(jobs: Engine) -> None:
    every = batch_jobs(jobs, LOCAL_ADMIN, T0, T0 + 3600)
    assert list(every["id"]) == ["b-run", "a4", "a3", "a2", "a1", "a0"]
    assert list(batch_jobs(jobs, LOCAL_ADMIN, T0, T0 + 3600, limit=2)["id"]) == ["b-run", "a4"]
    alice = batch_jobs(jobs, Principal("member", member_id="iss-a|alice"), T0, T0 + 3600)
    assert set(alice["member_id"]) == {"iss-a|alice"}
    assert list(alice["cpu_efficiency"]) == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.0])
    cms = batch_jobs(jobs, Principal("vo_manager", vo="cms"), T0, T0 + 3600)
    assert list(cms["id"]) == ["b-run"]
    assert batch_jobs(jobs, LOCAL_ADMIN, T0 + 3600, T0 + 7200).empty  # started before


def test_a_running_job_shows_running_and_n_a(jobs: Engine) -> None:
    table = jobs_table(batch_jobs(jobs, Principal("vo_manager", vo="cms"), T0, T0 + 3600))
    [row] = table.rows
    assert row[0:4] == ["b-run", "Bob Brown", "RUNNING", "n/a"]
    assert row[5:] == ["still running", "n/a", "2", "n/a", "0"]
