"""The Batch page in headless Chromium: the real app under uvicorn with its own batch jobs and
one interactive spawn posted as wire batches; what an admin and a member see."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

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
    wait_text,
)

pytestmark = pytest.mark.browser


def _jobs(now: float) -> list[wire.Event]:
    def job(id_: str, user: str, start: float, wall: float, cores: int, cpu: float, gpus: int,
            wait: float, account: str, qos: str | None = None) -> wire.Event:  # fmt: skip
        attrs = dict(partition="short", cores=cores, cpu_seconds=cpu, gpus=gpus,
                     wall_seconds=wall, submit=start - wait, node="wn-01", account=account,
                     qos=qos)  # fmt: skip
        attrs = {k: v for k, v in attrs.items() if v is not None}
        return wire.Event("batch_job", id_, user, start, start + wall, attrs)

    return [
        # alice, QoS normal: 4 cores x 1 h at 75 % (account physics), 2 cores x 1 h at 50 %
        # with a GPU (account mltrain)
        job("slurm:af:101", "alice", now - 7200, 3600, 4, 10800.0, 0, 600, "physics", "normal"),
        job("slurm:af:102", "alice", now - 5400, 3600, 2, 3600.0, 1, 60, "mltrain", "normal"),
        # bob: 1 core x 30 min at 90 %, account physics, no QoS
        job("slurm:af:103", "bob", now - 3000, 1800, 1, 1620.0, 0, 1200, "physics"),
        # an interactive session start of alice's: 5 s
        wire.Event("spawn", "spawn-alice-1", "alice", now - 1000, now - 995),
    ]


@pytest.fixture(scope="module")
def batch_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    settings = app_settings(tmp_path_factory.mktemp("afmon-batch-dash"))
    with serve(settings, "uvicorn-batch-page") as url:
        now = time.time()
        ingest(
            url,
            wire.Batch(
                version=wire.WIRE_VERSION,
                agent_id="slurm-ctl",
                facility=FACILITY,
                node="slurm-ctl",
                seq=1,
                sent_at=now,
                events=_jobs(now),
            ),
        )
        yield LiveApp(url, now)


def _rows(driver: Any, table_id: str) -> list[list[str]]:
    return [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")
    ]


def test_batch_page_as_facility_admin(batch_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, batch_app.url, "/batch")
    wait_text(d, "#bat-members-table", "Alice Archer")
    assert d.find_element(By.ID, "nav-batch").text == "Batch"
    # jobs, wall core-hours, CPU hours, CPU efficiency, GPU hours, HS23-hours (default 10)
    assert _rows(d, "bat-vos-table") == [
        ["atlas", "2", "6.00", "4.00", "67%", "1.00", "40.00"],
        ["cms", "1", "0.50", "0.45", "90%", "0", "4.50"],
    ]
    assert _rows(d, "bat-members-table") == [
        ["Alice Archer", "atlas", "2", "6.00", "4.00", "67%", "1.00", "40.00"],
        ["Bob Brown", "cms", "1", "0.50", "0.45", "90%", "0", "4.50"],
    ]
    # jobs, wall core-hours, CPU efficiency, GPU hours per account and per QoS
    assert _rows(d, "bat-account-table") == [
        ["physics", "2", "4.50", "77%", "0"],  # (10800 + 1620) / (4 x 3600 + 1800)
        ["mltrain", "1", "2.00", "50%", "1.00"],
    ]
    assert _rows(d, "bat-qos-table") == [
        ["normal", "2", "6.00", "67%", "1.00"],
        ["(none)", "1", "0.50", "90%", "0"],
    ]
    heads = d.find_elements(By.CSS_SELECTOR, "#bat-qos-table thead th")
    assert [h.text for h in heads] == ["QoS", "Jobs", "Wall core-hours", "CPU efficiency",
                                       "GPU hours"]  # fmt: skip
    # queue waits 600, 60 and 1200 s; one session start of 5 s
    waits = {r[0]: r for r in _rows(d, "bat-waits-table")}
    assert waits["Batch queue wait"][:3] == ["Batch queue wait", "3", "10.3 min"]
    assert waits["Time to session"][:3] == ["Time to session", "1", "5.0 s"]
    sums = d.execute_script(
        "const gd = document.querySelector('#bat-core-hours .js-plotly-plot');"
        "return Object.fromEntries(gd.data.map(t => [t.name, t.y.reduce((a, b) => a + b, 0)]));"
    )
    assert sums == pytest.approx({"Alice Archer": 6.0, "Bob Brown": 0.5})
    assert d.find_element(By.CSS_SELECTOR, "#bat-core-hours .ytitle").text == (
        "Batch wall x cores [core-hours]"
    )  # short enough to fit beside the plot
    severe = console_errors(d)
    assert severe == [], f"browser console errors: {severe}"


def test_a_member_sees_only_their_own_batch_jobs(batch_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, batch_app.url, "/batch")
    wait_text(d, "#bat-members-table", "Alice Archer")
    pick_principal(d, f"member:{BOB_ID}")
    wait_text(d, "#bat-viewer", "Bob Brown")
    wait_text(d, "#bat-members-table", "Bob Brown")
    # his own jobs under his own heading: no per-VO table, no VO column
    wait_text(d, "#bat-members-heading", "Your batch jobs")
    assert _rows(d, "bat-members-table") == [["Bob Brown", "1", "0.50", "0.45", "90%", "0", "4.50"]]
    assert not d.find_element(By.ID, "bat-vos-section").is_displayed()
    assert _rows(d, "bat-account-table") == [["physics", "1", "0.50", "90%", "0"]]
    assert _rows(d, "bat-qos-table") == [["(none)", "1", "0.50", "90%", "0"]]
    waits = {r[0]: r for r in _rows(d, "bat-waits-table")}
    assert waits["Batch queue wait"][:3] == ["Batch queue wait", "1", "20.0 min"]
    assert "Time to session" not in waits  # alice's, not bob's
    body = d.find_element(By.TAG_NAME, "body").text
    for other in ("Alice", "atlas", "6.00", "mltrain"):
        assert other not in body, f"{other!r} is shown to Bob"
