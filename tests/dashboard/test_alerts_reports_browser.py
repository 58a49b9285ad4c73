"""The Alerts and Reports pages in headless Chromium: a real server evaluates a real rule on
ingested data, the browser shows what each principal may see, and the report links serve."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.dashboard.conftest import (
    ALICE_ID,
    CPU_SECONDS,
    FACILITY,
    TIMEOUT,
    _batches,
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

# eve is not in the identity map: her CPU time is the unmapped share the rule watches
UNMAPPED_SHARE = CPU_SECONDS["eve"] / sum(CPU_SECONDS.values())
RULES = """
rules:
  - name: TestUnmappedUsage
    signal: unmapped_usage_ratio
    op: ">"
    threshold: 0.01
    for: 0s
    severity: info
    summary: "Unmapped usage above 1 % at {{ $labels.facility }}"
    description: "{{ $value | humanizePercentage }} of the CPU time is unmapped."
"""


@pytest.fixture(scope="module")
def alerting_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app with one rule that the known data breaches, evaluated twice a second."""
    tmp: Path = tmp_path_factory.mktemp("afmon-alerts-reports")
    (tmp / "rules.yaml").write_text(RULES)
    settings = app_settings(tmp, alert_rules_file=tmp / "rules.yaml", alert_interval_seconds=0.5)
    with serve(settings, name="uvicorn-alerts-reports-test") as url:
        for batch in _batches(time.time()):
            ingest(url, batch)
        yield url


def test_alerts_page_shows_a_rule_firing_on_ingested_data(alerting_app: str, browser: Any) -> None:
    d = browser
    open_fresh(d, alerting_app, "/")
    wait_text(d, "#fac-tiles", "core-hours")
    d.find_element(By.ID, "nav-alerts").click()

    def firing(d: Any) -> str | None:
        """The firing section's text once the page has rendered it (None before)."""
        found = d.find_elements(By.ID, "alerts-firing")
        return found[0].text if found and found[0].text else None

    # the page reads the alert table once per load: reload until the rule has fired
    deadline = time.monotonic() + TIMEOUT
    while "TestUnmappedUsage" not in (WebDriverWait(d, TIMEOUT).until(firing) or ""):
        assert time.monotonic() < deadline, "the rule never fired on the page"
        time.sleep(0.5)
        d.refresh()
    WebDriverWait(d, TIMEOUT).until(
        lambda d: d.find_elements(By.ID, "alerts-firing-table"), "no firing table"
    )
    ((rule, severity, where, value, since, resolved, summary),) = table_rows(
        d, "#alerts-firing-table"
    )
    assert (rule, severity, where) == ("TestUnmappedUsage", "info", f"facility={FACILITY}")
    assert value == f"{100 * UNMAPPED_SHARE:.1f} %"  # the rule's signal is a ratio
    assert since.endswith("UTC") and resolved == ""
    assert summary == f"Unmapped usage above 1 % at {FACILITY}"
    assert d.find_element(By.ID, "alerts-resolved").text == "No alert was resolved yet."

    # alerts are the operators': a member sees none, and is told so
    pick_principal(d, f"member:{ALICE_ID}")
    wait_text(d, "#alerts-firing", "No alert is firing.")
    assert console_errors(d) == []


def test_reports_page_links_every_file_of_the_week(alerting_app: str, browser: Any) -> None:
    d = browser
    open_fresh(d, alerting_app, "/")
    wait_text(d, "#fac-tiles", "core-hours")
    d.find_element(By.ID, "nav-reports").click()
    wait_text(d, "#rep-links", "JSON (one document)")
    week = d.find_element(By.CSS_SELECTOR, "#rep-week").text  # the newest complete week
    assert " to " in week
    links = {
        a.text: a.get_attribute("href")
        for a in d.find_elements(By.CSS_SELECTOR, "#rep-link-list a.rep-link")
    }
    assert {"JSON (one document)", "HTML (self-contained, opens offline)"} <= set(links)
    assert any(label.startswith("CSV per ") for label in links)
    assert any(label.startswith("APEL summary") for label in links)
    # what the links serve, fetched as the local-mode browser would
    for label, href in links.items():
        r = httpx.get(href, timeout=30)
        assert r.status_code == 200, (label, r.status_code, r.text[:300])
        assert r.content, label
    report = httpx.get(links["JSON (one document)"], timeout=30).json()
    assert week.split(" ")[0] in str(report)

    pick_principal(d, f"member:{ALICE_ID}")
    wait_text(d, "#rep-links", "built for the facility admin")
    assert console_errors(d) == []


def test_the_range_picker_is_shown_only_where_a_page_follows_it(
    alerting_app: str, browser: Any
) -> None:
    d = browser
    open_fresh(d, alerting_app, "/")
    wait_text(d, "#fac-tiles", "core-hours")
    controls = d.find_element(By.ID, "range-controls")
    assert controls.is_displayed()
    for nav, ready in (("nav-alerts", "#alerts-firing"), ("nav-reports", "#rep-links")):
        d.find_element(By.ID, nav).click()
        WebDriverWait(d, TIMEOUT).until(lambda d, css=ready: d.find_elements(By.CSS_SELECTOR, css))
        WebDriverWait(d, TIMEOUT).until(
            lambda d: not d.find_element(By.ID, "range-controls").is_displayed(),
            f"the range picker is still shown after {nav}",
        )
    d.find_element(By.ID, "nav-data").click()
    WebDriverWait(d, TIMEOUT).until(
        lambda d: d.find_element(By.ID, "range-controls").is_displayed(),
        "the range picker did not come back on the Data page",
    )
    assert console_errors(d) == []
