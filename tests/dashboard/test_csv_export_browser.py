"""The "Download CSV" link under every table, in headless Chromium: the file it downloads
holds the columns and rows the table shows, and those are the figures of the jobs posted
(computed here from the jobs, not copied from the page); a member's file holds only theirs."""

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

# (id, user, wall seconds, cores, CPU seconds)
JOBS = [
    ("slurm:af:201", "alice", 3600.0, 4, 10800.0),
    ("slurm:af:202", "alice", 1800.0, 2, 1800.0),
    ("slurm:af:203", "bob", 1800.0, 1, 1620.0),
]


def _expected(user: str) -> tuple[str, str, str, str]:
    """Jobs, wall core-hours, CPU hours and CPU efficiency of `user`'s jobs, as shown."""
    mine = [j for j in JOBS if j[1] == user]
    core_h = sum(wall * cores for _i, _u, wall, cores, _c in mine) / 3600
    cpu_h = sum(cpu for *_rest, cpu in mine) / 3600
    return str(len(mine)), f"{core_h:.2f}", f"{cpu_h:.2f}", f"{cpu_h / core_h:.0%}"


@pytest.fixture(scope="module")
def csv_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    settings = app_settings(tmp_path_factory.mktemp("afmon-csv-dash"))
    with serve(settings, "uvicorn-csv-export") as url:
        now = time.time()
        events = [
            wire.Event("batch_job", id_, user, now - 7200, now - 7200 + wall,
                       dict(cores=cores, cpu_seconds=cpu, wall_seconds=wall, node="wn-01"))
            for id_, user, wall, cores, cpu in JOBS
        ]  # fmt: skip
        batch = wire.Batch(version=wire.WIRE_VERSION, agent_id="slurm-ctl", facility=FACILITY,
                           node="slurm-ctl", seq=1, sent_at=now, events=events)  # fmt: skip
        ingest(url, batch)
        yield LiveApp(url, now)


def _download(driver: Any, table_id: str) -> tuple[str, list[list[str]]]:
    """The file name and the parsed CSV rows the table's "Download CSV" link downloads."""
    link = driver.find_element(By.ID, f"{table_id}-csv")
    assert link.text == "Download CSV"
    href = link.get_attribute("href")
    prefix = "data:text/csv;charset=utf-8,"
    assert href.startswith(prefix)
    return link.get_attribute("download"), list(
        csv.reader(io.StringIO(unquote(href[len(prefix) :])))
    )


def _headers(driver: Any, table_id: str) -> list[str]:
    return [th.text for th in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} thead th")]


def test_csv_holds_the_table_and_the_query_figures(csv_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, csv_app.url, "/batch")
    wait_text(d, "#bat-members-table", "Alice Archer")
    name, rows = _download(d, "bat-members-table")
    assert name == "bat-members-table.csv"
    # the header row and the rows are those the page shows
    assert rows[0] == _headers(d, "bat-members-table")
    assert rows[1:] == table_rows(d, "#bat-members-table")
    # and they are the jobs' figures: member, VO, jobs, core-hours, CPU hours, efficiency
    by_member = {r[0]: r for r in rows[1:]}
    assert tuple(by_member["Alice Archer"][2:6]) == _expected("alice")
    assert tuple(by_member["Bob Brown"][2:6]) == _expected("bob")
    # every table on the page has its link, each with its own file
    for table in d.find_elements(By.CSS_SELECTOR, "table.data"):
        tid = table.get_attribute("id")
        fname, trows = _download(d, tid)
        assert fname == f"{tid}.csv"
        assert trows[1:] == table_rows(d, f"#{tid}")
    severe = console_errors(d)
    assert severe == [], f"browser console errors: {severe}"


def test_a_members_csv_holds_only_their_rows(csv_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, csv_app.url, "/batch")
    wait_text(d, "#bat-members-table", "Alice Archer")
    pick_principal(d, f"member:{BOB_ID}")
    wait_text(d, "#bat-viewer", "Bob Brown")
    wait_text(d, "#bat-members-heading", "Your batch jobs")
    _name, rows = _download(d, "bat-members-table")
    assert len(rows) == 2
    assert rows[1][0] == "Bob Brown"
    assert tuple(rows[1][1:5]) == _expected("bob")
    for table in d.find_elements(By.CSS_SELECTOR, "table.data"):
        _n, trows = _download(d, table.get_attribute("id"))
        assert all("Alice" not in cell for row in trows for cell in row)
    severe = console_errors(d)
    assert severe == [], f"browser console errors: {severe}"
