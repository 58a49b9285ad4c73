"""The VO page and the facility overview in headless Chromium (the package's live app: alice
and carol in atlas, bob and dave in cms, eve unmapped): what is shown, the filters and the time
picker, state in the URL, the CSV download, and that editing the URL widens no member's view."""

from __future__ import annotations

import csv
import io
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tests.dashboard.conftest import (
    ALICE_ID,
    TIMEOUT,
    LiveApp,
    console_errors,
    grid_rows,
    open_fresh,
    pick_principal,
    table_rows,
    trace_sums,
    wait_text,
)

pytestmark = pytest.mark.browser


def _query(driver: Any) -> dict[str, list[str]]:
    return parse_qs(urlparse(driver.current_url).query)


def _wait_query(driver: Any, name: str, value: str) -> None:
    WebDriverWait(driver, TIMEOUT).until(
        lambda d: _query(d).get(name) == [value], f"the URL never got {name}={value}"
    )


def _type_date(driver: Any, picker_id: str, day: str) -> None:
    box = driver.find_element(By.CSS_SELECTOR, f"input#{picker_id}")
    box.click()
    box.send_keys(Keys.END, *[Keys.BACKSPACE] * 10, day, Keys.ENTER)
    WebDriverWait(driver, TIMEOUT).until(lambda _d: box.get_attribute("value") == day)


def _members(driver: Any) -> list[list[str]]:
    """Member grid rows as shown: name, group, CPU core-hours, share (%)."""

    def ready(d: Any) -> tuple[list[dict[str, Any]]] | None:
        rows = grid_rows(d, "vo-table")
        return None if rows is None else (rows,)

    (rows,) = WebDriverWait(driver, TIMEOUT).until(ready, "the member grid never became ready")
    return [[r["member"], r["group"], f"{r['cpu_seconds']:.2f}", f"{r['share']:.2f}"] for r in rows]


def test_vo_page_as_admin_filters_and_url(live_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, live_app.url, "/vo")
    wait_text(d, "#vo-table", "Alice Archer")
    assert _members(d) == [
        ["Alice Archer", "/atlas/higgs", "2.00", "80.00"],
        ["Carol Chen", "/atlas", "0.50", "20.00"],
    ]
    assert d.find_element(By.ID, "nav-vo").get_attribute("class") == "active"
    _wait_query(d, "vo", "atlas")  # the view is in the URL once it is shown
    WebDriverWait(d, TIMEOUT).until(lambda d: trace_sums(d, "#vo-by-group"))
    assert trace_sums(d, "#vo-by-group") == pytest.approx({"/atlas/higgs": 2.0, "/atlas": 0.5})
    assert trace_sums(d, "#vo-by-member") == pytest.approx({"Alice Archer": 2.0, "Carol Chen": 0.5})
    assert d.find_element(By.CSS_SELECTOR, "#vo-by-group .ytitle").text == ("CPU time [core-hours]")
    wait_text(d, "#vo-tiles", "2.50 core-hours")
    assert "Share of all VOs" in d.find_element(By.ID, "vo-tiles").text  # 2.5 / 4.25 h
    assert "58.8 %" in d.find_element(By.ID, "vo-tiles").text
    assert table_rows(d, "#vo-facilities-table") == [["af-test", "2.50", "100.0", "2"]]

    # the name filter narrows the table and lands in the URL
    box = d.find_element(By.CSS_SELECTOR, "#vo-filter")
    box.send_keys("carol", Keys.ENTER)
    _wait_query(d, "q", "carol")
    WebDriverWait(d, TIMEOUT).until(lambda d: len(_members(d)) == 1, "filter did not apply")
    assert _members(d) == [["Carol Chen", "/atlas", "0.50", "20.00"]]

    # a shared link opens the same view: another VO, another resource
    open_fresh(d, live_app.url, "/vo?vo=cms&resource=session_seconds")
    wait_text(d, "#vo-table", "Bob Brown")
    assert [r[0] for r in _members(d)] == ["Bob Brown"]  # dave used nothing
    wait_text(d, "#vo-by-group .ytitle", "Session time [hours]")
    assert console_errors(d) == []


def test_member_grid_sorts_and_filters_in_the_browser(live_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, live_app.url, "/vo?vo=atlas")
    wait_text(d, "#vo-table", "Alice Archer")
    assert [r[0] for r in _members(d)] == ["Alice Archer", "Carol Chen"]  # most CPU first
    header = '#vo-table .ag-header-cell[col-id="cpu_seconds"] .ag-header-cell-label'
    d.find_element(By.CSS_SELECTOR, header).click()  # ascending
    WebDriverWait(d, TIMEOUT).until(
        lambda d: [r[0] for r in _members(d)] == ["Carol Chen", "Alice Archer"], "no sort"
    )
    # every column has a filter box under its header: the group's keeps one group
    boxes = d.find_elements(By.CSS_SELECTOR, "#vo-table .ag-floating-filter input")
    columns = [c["field"] for c in d.execute_script(
        "return dash_ag_grid.getApi('vo-table').getColumnDefs();"
    )]  # fmt: skip
    boxes[columns.index("group")].send_keys("higgs")
    WebDriverWait(d, TIMEOUT).until(
        lambda d: [r[0] for r in _members(d)] == ["Alice Archer"], "the filter did not apply"
    )
    assert d.find_element(By.CSS_SELECTOR, '#vo-table .ag-cell[col-id="cpu_seconds"]').text == (
        "2.00"
    )  # two decimals, as the header's unit says
    assert console_errors(d) == []


def test_time_picker_changes_what_is_shown(live_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, live_app.url, "/vo")
    wait_text(d, "#vo-table", "Alice Archer")
    d.find_element(By.XPATH, "//*[@id='range']//label[contains(., 'Last 30 d')]").click()
    _wait_query(d, "range", "30d")
    wait_text(d, "#window-text", "daily (UTC days) steps")
    wait_text(d, "#vo-by-group .gtitle", "per day (UTC)")
    # a custom range of days long ago: nothing in it, and the page says so
    _type_date(d, "range-from", "2020-01-01")
    _type_date(d, "range-to", "2020-01-03")
    d.find_element(By.ID, "range-apply").click()
    _wait_query(d, "range", "custom")
    assert _query(d)["from"] == ["2020-01-01"] and _query(d)["to"] == ["2020-01-03"]
    wait_text(d, "#window-text", "2020-01-01 00:00:00 UTC to 2020-01-04 00:00:00 UTC")
    wait_text(d, "#vo-notice", "No usage recorded in this range yet.")
    assert _members(d) == []
    # the custom range travels with the navigation links
    href = d.find_element(By.ID, "nav-facility").get_attribute("href")
    assert href.endswith("/?range=custom&from=2020-01-01&to=2020-01-03")
    # and a link with a custom range opens it
    today = datetime.fromtimestamp(time.time(), UTC).date().isoformat()
    open_fresh(d, live_app.url, f"/vo?range=custom&from={today}&to={today}")
    wait_text(d, "#window-text", f"{today} 00:00:00 UTC to ")
    wait_text(d, "#vo-table", "Alice Archer")
    assert console_errors(d) == []


def test_csv_download(live_app: LiveApp, browser: Any) -> None:
    d = browser
    with tempfile.TemporaryDirectory(prefix="afmon-csv-") as tmp:
        d.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": tmp})
        open_fresh(d, live_app.url, "/vo?vo=atlas")
        wait_text(d, "#vo-table", "Alice Archer")
        d.find_element(By.ID, "vo-csv-button").click()
        WebDriverWait(d, TIMEOUT).until(
            lambda _d: list(Path(tmp).glob("*.csv")), "no CSV was downloaded"
        )
        path = next(Path(tmp).glob("*.csv"))
        assert path.name.startswith("afmon-atlas-members-") and path.name.endswith("-24h.csv")
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [r["Member"] for r in rows] == ["Alice Archer", "Carol Chen"]
    assert rows[0]["CPU time [core-hours]"] == "2.0"
    assert rows[0]["Member ID"] == ALICE_ID
    assert rows[1]["Share of the VO's CPU time [%]"] == "20.0"


def test_a_member_cannot_widen_the_view_by_editing_the_url(live_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, live_app.url, "/vo")
    wait_text(d, "#vo-table", "Carol Chen")
    pick_principal(d, f"member:{ALICE_ID}")
    wait_text(d, "#vo-viewer", "Alice Archer")
    WebDriverWait(d, TIMEOUT).until(lambda d: [r[0] for r in _members(d)] == ["Alice Archer"])
    # another VO: not allowed, and nothing of it is shown
    d.get(f"{live_app.url}/vo?vo=cms")
    wait_text(d, "#vo-notice", "Not allowed: you may not see the VO 'cms'")
    body = d.find_element(By.TAG_NAME, "body").text
    for other in ("Bob", "Dave", "1.50"):
        assert other not in body, f"{other!r} is shown to Alice"
    # her own VO, asking for carol by name: still only herself, so nobody matches
    d.get(f"{live_app.url}/vo?vo=atlas&q=carol")
    wait_text(d, "#vo-table-note", "No member matches 'carol'.")
    assert "Carol" not in d.find_element(By.ID, "vo-page").text
    # the facility page with a range in the URL: still her usage only
    d.get(f"{live_app.url}/?range=7d")
    wait_text(d, "#fac-viewer", "Alice Archer")
    wait_text(d, "#fac-tiles", "2.00 core-hours")
    assert "0.50 core-hours" not in d.find_element(By.ID, "fac-tiles").text  # carol's
    assert console_errors(d) == []


def test_facility_overview_live_tiles(live_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, live_app.url, "/")
    wait_text(d, "#fac-live", "CPU in use")
    live = {
        t.get_attribute("data-key"): t.text
        for t in d.find_elements(By.CSS_SELECTOR, "#fac-live .tile")
    }
    assert "of 64.00 cores" in live["cpu"]  # the node's capacity
    assert "of 256.00 GiB" in live["memory"]
    assert "Interactive sessions 1" in live["open"]  # bob's is still running
    assert "no waits in this range" in live["time_to_session"]
    assert live["alerts"].endswith("0 firing")
    assert d.find_element(By.ID, "fac-alerts-link").get_attribute("href").endswith("/alerts")
    assert table_rows(d, "#fac-top-vos-table") == [
        ["atlas", "2.50", "58.8", "0.50"],
        ["cms", "1.50", "35.3", "0"],
        ["unmapped", "0.25", "5.9", "0"],
    ]
    # the resource picked is kept in the URL
    d.find_element(By.ID, "fac-resource").click()
    WebDriverWait(d, TIMEOUT).until(
        lambda d: d.find_elements(By.XPATH, "//*[@role='option'][contains(., 'Resident memory')]")
    )[0].click()
    _wait_query(d, "resource", "memory_byte_seconds")
    wait_text(d, "#fac-usage .ytitle", "Memory x time [GB-hours]")
    assert console_errors(d) == []
