"""End to end in headless Chromium: the real app under uvicorn, data posted as wire batches,
the pages rendered by the browser, and what each principal may see."""

from __future__ import annotations

from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.dashboard.conftest import (
    BOB_ID,
    NODE,
    TIMEOUT,
    LiveApp,
    console_errors,
    open_fresh,
    trace_sums,
    wait_text,
)

pytestmark = pytest.mark.browser


def _open(driver: Any, app: LiveApp, path: str) -> None:
    """Open `path` as a first-time visitor (no remembered principal or range)."""
    open_fresh(driver, app.url, path)


_wait_text = wait_text


def _wait_traces(driver: Any, graph_id: str, n: int) -> None:
    """Wait until plotly has drawn `n` bar traces in the graph."""
    WebDriverWait(driver, TIMEOUT).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, f"#{graph_id} g.trace.bars")) == n,
        f"graph {graph_id} did not draw {n} traces",
    )


def _trace_sums(driver: Any, graph_id: str) -> dict[str, float]:
    return trace_sums(driver, f"#{graph_id}")


def _no_console_errors(driver: Any) -> None:
    severe = console_errors(driver)
    assert severe == [], f"browser console errors: {severe}"


def test_facility_page_as_facility_admin(live_app: LiveApp, browser: Any) -> None:
    d = browser
    _open(d, live_app, "/")
    _wait_text(d, "#demo-banner", "Local demo mode: no login; pick who you are")
    _wait_text(d, "#fac-tiles", "2.50 core-hours")
    tiles = {
        t.get_attribute("data-key"): t.text
        for t in d.find_elements(By.CSS_SELECTOR, "#fac-tiles .tile")
    }
    assert list(tiles) == ["atlas", "cms", "unmapped"]
    assert "CPU time 2.50 core-hours" in tiles["atlas"]  # alice 7200 s + carol 1800 s
    assert "CPU time normalised by HEPscore23 31.25 HS23-hours" in tiles["atlas"]
    assert "Resident memory x time 1.00 GB-hours" in tiles["atlas"]
    assert "Session time of ended sessions 0.50 hours" in tiles["atlas"]
    assert "Sessions started and ended 1 session" in tiles["atlas"]
    assert "Running now 0 sessions" in tiles["atlas"]
    assert "Running now 1 session" in tiles["cms"]  # bob's, not in the ledger yet
    assert "CPU time 1.50 core-hours" in tiles["cms"]  # bob 5400 s
    assert "CPU time 0.25 core-hours" in tiles["unmapped"]  # eve 900 s, no mapping
    assert d.find_element(By.ID, "fac-active").text == "4"

    _wait_traces(d, "fac-usage", 3)
    sums = _trace_sums(d, "fac-usage")
    assert sums == pytest.approx({"atlas": 2.5, "cms": 1.5, "unmapped": 0.25})
    assert d.find_element(By.CSS_SELECTOR, "#fac-usage .ytitle").text == "CPU time [core-hours]"
    assert d.find_element(By.CSS_SELECTOR, "#fac-usage .xtitle").text == "Time (UTC)"

    rows = d.find_elements(By.CSS_SELECTOR, "#fac-nodes-table tbody tr")
    assert [r.text.split()[:6] for r in rows] == [["af-test", NODE, "64", "256.0", "12.50", "42.0"]]
    assert rows[0].text.endswith("UTC live")  # its agent reported just now
    _no_console_errors(d)


def test_member_page_as_facility_admin(live_app: LiveApp, browser: Any) -> None:
    d = browser
    _open(d, live_app, "/")
    _wait_text(d, "#fac-tiles", "core-hours")
    d.find_element(By.ID, "nav-member").click()  # client-side navigation
    _wait_text(d, "#mem-sessions", "Alice Archer")
    assert d.find_element(By.ID, "mem-heading").text == "Usage per member"
    _wait_traces(d, "mem-cpu", 4)
    assert _trace_sums(d, "mem-cpu") == pytest.approx(
        {
            "Alice Archer": 2.0,
            "Bob Brown": 1.5,
            "Carol Chen": 0.5,
            "unmapped accounts at af-test": 0.25,
        }
    )
    _wait_traces(d, "mem-memory", 1)
    assert _trace_sums(d, "mem-memory") == pytest.approx({"Alice Archer": 1.0})
    assert d.find_element(By.CSS_SELECTOR, "#mem-memory .ytitle").text == (
        "Memory x time [GB-hours]"
    )
    assert _trace_sums(d, "mem-session-time") == pytest.approx({"Alice Archer": 0.5})
    sessions = {
        r.text.split(" af-test")[0]: r.text
        for r in d.find_elements(By.CSS_SELECTOR, "#mem-sessions-table tbody tr")
    }
    assert set(sessions) == {"Alice Archer", "Bob Brown"}
    assert sessions["Alice Archer"].endswith(" 0.50")
    assert "still running" in sessions["Bob Brown"]
    _no_console_errors(d)


def test_a_member_sees_only_their_own_usage(live_app: LiveApp, browser: Any) -> None:
    d = browser
    _open(d, live_app, "/")
    _wait_text(d, "#fac-tiles", "2.50 core-hours")
    d.find_element(By.ID, "principal-picker").click()
    option = WebDriverWait(d, TIMEOUT).until(
        EC.element_to_be_clickable(
            (
                By.XPATH,
                f"//*[@role='listbox']//input[@value='member:{BOB_ID}']/ancestor::*[@role='option']",
            )
        )
    )
    option.click()
    _wait_text(d, "#fac-viewer", "Bob Brown")
    _wait_text(d, "#fac-tiles", "1.50 core-hours")
    _wait_traces(d, "fac-usage", 1)
    assert _trace_sums(d, "fac-usage") == pytest.approx({"You": 1.5})  # his, not cms's
    assert d.find_element(By.ID, "fac-active").text == "1"
    _wait_text(d, "#fac-nodes", "visible to facility admins only")
    body = d.find_element(By.TAG_NAME, "body").text
    for other in ("Alice", "Carol", "atlas", "unmapped", "2.50", "node-01"):
        assert other not in body, f"{other!r} is shown to Bob"

    d.find_element(By.ID, "nav-member").click()
    _wait_text(d, "#mem-viewer", "Usage of Bob Brown")
    assert d.find_element(By.ID, "mem-heading").text == "My usage"
    _wait_text(d, "#mem-sessions", "still running")
    _wait_traces(d, "mem-cpu", 1)
    assert _trace_sums(d, "mem-cpu") == pytest.approx({"Bob Brown": 1.5})
    body = d.find_element(By.TAG_NAME, "body").text
    assert "Member: Bob Brown (cms)" in body  # the picker remembers who I am
    for other in ("Alice", "Carol", "Dave", "unmapped", "atlas"):
        assert other not in body, f"{other!r} is shown to Bob"
    _no_console_errors(d)
