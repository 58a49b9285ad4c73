"""The HTML report opens offline in headless Chromium with every figure drawn."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from afmon.aggregator.query.reads import LOCAL_ADMIN
from afmon.aggregator.report.build import build_report
from afmon.aggregator.report.html import render_html, shown_quantities
from tests.dashboard.conftest import CHROME_FLAGS, CHROMEDRIVER, CHROMIUM
from tests.report.conftest import WEEK, World

pytestmark = pytest.mark.browser
# every request that would leave the machine goes to a closed port
OFFLINE_FLAGS = ("--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>")


@pytest.fixture(scope="module")
def offline_browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} is missing: apt-get install chromium chromium-driver")
    profile = tempfile.mkdtemp(prefix="afmon-report-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROME_FLAGS, *OFFLINE_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except Exception as exc:  # noqa: BLE001
        shutil.rmtree(profile, ignore_errors=True)
        pytest.fail(f"headless Chromium did not start: {exc}")
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_html_report_draws_its_figures_offline(
    world: World, offline_browser: Any, tmp_path: Path
) -> None:
    doc = build_report(world.query, LOCAL_ADMIN, WEEK, world.settings)
    page = tmp_path / "report.html"
    page.write_bytes(render_html(doc))
    shown = [q["name"] for q in shown_quantities(doc)]
    assert "cpu_hours" in shown and "memory_gb_hours" in shown and "sessions" in shown
    d = offline_browser
    d.get(page.as_uri())
    deadline = time.monotonic() + 30
    drawn: list[str] = []
    while time.monotonic() < deadline:
        drawn = d.execute_script(
            "return Array.from(document.querySelectorAll('#figures .js-plotly-plot'))"
            ".filter(e => e.querySelectorAll('.main-svg .bars path').length > 0)"
            ".map(e => e.id)"
        )
        if len(drawn) == len(shown):
            break
        time.sleep(0.2)
    assert drawn == [f"fig-{name}" for name in shown]
    assert d.execute_script("return typeof window.Plotly") == "object"
    remote = d.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => !n.startsWith('file:') && !n.startsWith('data:'))"
    )
    assert remote == []
    errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    title = d.find_element("css selector", "h1").text
    assert title == f"afmon weekly report {WEEK}"
    assert "ok" in d.find_element("id", "latency-status").text
    assert d.find_element("id", "table-agents").text.count("quiet-node") == 1
