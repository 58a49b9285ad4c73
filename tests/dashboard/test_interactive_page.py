"""The Interactive page in headless Chromium: the real app under uvicorn with waits posted as
wire events; the admin sees everyone's distribution, SLO share, profiles and outliers, a member
only their own waits."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from afmon.collectors import wire
from tests.dashboard.conftest import (
    ALICE_ID,
    FACILITY,
    app_settings,
    console_errors,
    ingest,
    open_fresh,
    pick_principal,
    serve,
    wait_text,
)

pytestmark = pytest.mark.browser
# (user, wait seconds, profile): alice 2, 4 and 30 s; bob 6 s on a GPU profile
WAITS = [
    ("alice", 2.0, "small"),
    ("alice", 4.0, "small"),
    ("alice", 30.0, "small"),
    ("bob", 6.0, "gpu"),
]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = app_settings(tmp_path_factory.mktemp("afmon-interactive"))
    with serve(settings, "uvicorn-interactive") as url:
        now = time.time()
        events = [
            wire.Event(
                "spawn",
                f"sp-{i}",
                user,
                now - 1800 + i,
                now - 1800 + i + wait,
                {"profile": profile, "outcome": "ok"},
            )
            for i, (user, wait, profile) in enumerate(WAITS)
        ]
        ingest(
            url,
            wire.Batch(
                version=1,
                agent_id="hub",
                facility=FACILITY,
                node="hub",
                seq=1,
                sent_at=now,
                events=events,
            ),
        )
        yield url


def _rows(d: Any, table: str) -> list[str]:
    return [r.text for r in d.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")]


def test_interactive_page_admin_and_member(app_url: str, browser: Any) -> None:
    d = browser
    open_fresh(d, app_url, "/interactive")
    wait_text(d, "#int-summary-text", "Time to session: 4 waits")
    summary = d.find_element(By.ID, "int-summary-text").text
    assert "75.0 % within the SLO of 10 s" in summary  # 2, 4, 6 s of 2, 4, 6, 30 s
    assert d.find_element(By.ID, "nav-interactive").get_attribute("class") == "active"
    slowest = _rows(d, "int-slowest-table")
    assert slowest[0].startswith("Alice Archer") and "30.00" in slowest[0]
    assert slowest[0].endswith("yes") and slowest[-1].endswith("no")
    profiles = {r.split()[0]: r for r in _rows(d, "int-profiles-table")}
    assert set(profiles) == {"gpu", "small"}
    assert profiles["gpu"].split()[1] == "1" and profiles["small"].split()[1] == "3"
    bars = d.execute_script(
        "const gd = document.querySelector('#int-dist .js-plotly-plot');"
        "return gd.data[0].y.reduce((a, b) => a + b, 0);"
    )
    assert bars == 4
    severe = console_errors(d)
    assert severe == [], severe

    # a member sees only their own waits
    pick_principal(d, f"member:{ALICE_ID}")
    wait_text(d, "#int-summary-text", "Time to session: 3 waits")
    wait_text(d, "#int-viewer", "Your own waits, Alice Archer")
    assert all(r.startswith("Alice Archer") for r in _rows(d, "int-slowest-table"))
