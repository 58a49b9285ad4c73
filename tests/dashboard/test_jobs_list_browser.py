"""The Member page's list of batch jobs in headless Chromium: id, state, exit code, wall,
cores, CPU efficiency (CPU / (wall x cores), computed here from the jobs posted) and GPUs,
newest first; the admin sees everyone's, a member only their own; its CSV is the list."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest
from selenium.webdriver.common.by import By

from afmon.collectors import wire
from tests.dashboard.conftest import (
    BOB_ID,
    FACILITY,
    LiveApp,
    app_settings,
    console_errors,
    ingest,
    open_fresh,
    pick_principal,
    serve,
    table_rows,
    wait_text,
)

pytestmark = pytest.mark.browser

# (id, user, started this long ago, wall s, cores, CPU s, GPUs, state, exit code), oldest first
JOBS = [
    ("slurm:af:301", "alice", 9000, 3600.0, 4, 10800.0, 0, "COMPLETED", 0),
    ("slurm:af:302", "bob", 8000, 1800.0, 2, 900.0, 1, "FAILED", 2),
    ("slurm:af:303", "alice", 7000, 600.0, 1, 540.0, 0, "TIMEOUT", 0),
]
NAMES = {"alice": "Alice Archer", "bob": "Bob Brown"}


def _expected(user: str | None = None) -> list[list[str]]:
    """Job, member, state, exit code, wall hours, cores, CPU efficiency, GPUs; newest first."""
    return [
        [id_, NAMES[u], state, str(code), f"{wall / 3600:.2f}", str(cores),
         f"{cpu / (wall * cores):.0%}", str(gpus)]
        for id_, u, _ago, wall, cores, cpu, gpus, state, code in reversed(JOBS)
        if user is None or u == user
    ]  # fmt: skip


def _shown(driver: Any) -> list[list[str]]:
    """The table's cells without the two time columns (their text depends on the clock)."""
    return [r[:4] + r[6:] for r in table_rows(driver, "#mem-jobs-table")]


@pytest.fixture(scope="module")
def jobs_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    settings = app_settings(tmp_path_factory.mktemp("afmon-jobs-list"))
    with serve(settings, "uvicorn-jobs-list") as url:
        now = time.time()
        events = [
            wire.Event("batch_job", id_, user, now - ago, now - ago + wall,
                       dict(cores=cores, cpu_seconds=cpu, wall_seconds=wall, gpus=gpus,
                            state=state, exit_code=code, node="wn-01"))
            for id_, user, ago, wall, cores, cpu, gpus, state, code in JOBS
        ]  # fmt: skip
        batch = wire.Batch(version=wire.WIRE_VERSION, agent_id="slurm-ctl", facility=FACILITY,
                           node="slurm-ctl", seq=1, sent_at=now, events=events)  # fmt: skip
        ingest(url, batch)
        yield LiveApp(url, now)


def test_the_admin_sees_every_job_with_its_efficiency(jobs_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, jobs_app.url, "/member")
    wait_text(d, "#mem-jobs-table", "slurm:af:301")
    assert _shown(d) == _expected()
    link = d.find_element(By.ID, "mem-jobs-table-csv")
    data = unquote(link.get_attribute("href").split(",", 1)[1])
    rows = list(csv.reader(io.StringIO(data)))
    assert rows[0][:4] == ["Job", "Member", "State", "Exit code"]
    assert [r[:4] + r[6:] for r in rows[1:]] == _expected()
    severe = console_errors(d)
    assert severe == [], f"browser console errors: {severe}"


def test_a_member_sees_only_their_own_jobs(jobs_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, jobs_app.url, "/member")
    wait_text(d, "#mem-jobs-table", "slurm:af:301")
    pick_principal(d, f"member:{BOB_ID}")
    wait_text(d, "#mem-heading", "My usage")
    deadline = time.time() + 10.0
    while time.time() < deadline and len(table_rows(d, "#mem-jobs-table")) != 1:
        time.sleep(0.2)
    assert _shown(d) == _expected("bob")
    assert "Alice" not in d.find_element(By.ID, "mem-jobs").text
    severe = console_errors(d)
    assert severe == [], f"browser console errors: {severe}"
