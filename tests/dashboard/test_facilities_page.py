"""The Facilities page in headless Chromium on a VO-level afmon: two facilities publish their
ledger hours to it (docs/federation.md), and the page compares them as the query computes
them (aggregator/query/comparison.py); the API answers the same; a member sees their own."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from selenium.webdriver.common.by import By
from sqlalchemy import create_engine

from afmon.aggregator.federation.messages import HourRows, Publication
from afmon.aggregator.query.base import Principal
from afmon.aggregator.query.comparison import facility_comparison
from afmon.aggregator.query.reads import Query
from tests.dashboard.conftest import (
    ALICE_ID,
    BOB_ID,
    LiveApp,
    app_settings,
    console_errors,
    open_fresh,
    pick_principal,
    serve,
    wait_text,
)

pytestmark = pytest.mark.browser
PEERS = {"af-x": "fed-token-x-0123456789", "af-y": "fed-token-y-0123456789"}


def _publications(hour: int) -> dict[str, Publication]:
    atlas = ("atlas", "/atlas")
    cms = ("cms", "/cms")
    x = HourRows(
        hour, 1,
        usage=[
            (*atlas, ALICE_ID, "cpu_seconds", 7200.0, "s"),
            (*atlas, ALICE_ID, "sessions", 2.0, "1"),
            (*atlas, ALICE_ID, "data_read_local_bytes", 300.0, "B"),
            (*atlas, ALICE_ID, "data_read_cache_bytes", 100.0, "B"),
            (*atlas, ALICE_ID, "data_read_remote_bytes", 100.0, "B"),
            (*atlas, ALICE_ID, "batch_cpu_seconds", 900.0, "s"),
            (*atlas, ALICE_ID, "batch_wall_core_seconds", 1200.0, "s"),
            (*atlas, ALICE_ID, "gpu_allocated_seconds", 1000.0, "s"),
            (*atlas, ALICE_ID, "gpu_active_seconds", 250.0, "s"),
            (*cms, BOB_ID, "cpu_seconds", 1800.0, "s"),
        ],
        latency=[
            (*atlas, ALICE_ID, "time_to_session", "", 5.0, 3, 9.0),
            (*atlas, ALICE_ID, "time_to_session", "", 30.0, 1, 20.0),
        ],
    )  # fmt: skip
    y = HourRows(hour, 1, usage=[(*cms, BOB_ID, "cpu_seconds", 3600.0, "s")])
    return {
        "af-x": Publication("af-x", "member", None, [x]),
        "af-y": Publication("af-y", "member", None, [y]),
    }


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveApp, str]]:
    tmp = tmp_path_factory.mktemp("afmon-facilities")
    settings = app_settings(tmp, federation_peers=PEERS)
    with serve(settings, "uvicorn-facilities-page") as url:
        now = time.time()
        hour = math.floor(now / 3600) * 3600 - 3600
        for facility, pub in _publications(hour).items():
            r = httpx.post(
                f"{url}/api/v1/federation/ledger",
                content=msgspec.json.encode(pub),
                headers={"Authorization": f"Bearer {PEERS[facility]}"},
                timeout=10,
            )
            assert r.status_code == 200, r.text
        yield LiveApp(url, now), settings.database_url


def _rows(driver: Any) -> list[list[str]]:
    return [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in driver.find_elements(By.CSS_SELECTOR, "#fcmp-grid tbody tr")
    ]


def _expected_p95(database_url: str, now: float) -> str:
    engine = create_engine(database_url)
    try:
        df = facility_comparison(
            Query(engine), Principal("facility_admin"), now - 86400, now + 3600,
            {"time_to_session": 10.0},
        )  # fmt: skip
    finally:
        engine.dispose()
    p95 = df.set_index("facility").loc["af-x", "time_to_session_p95_seconds"]
    return f"{p95:,.1f} s"


def test_facilities_side_by_side_as_admin(hub: tuple[LiveApp, str], browser: Any) -> None:
    app, database_url = hub
    d = browser
    open_fresh(d, app.url, "/facilities")
    wait_text(d, "#fcmp-grid", "af-y")
    assert d.find_element(By.ID, "nav-facilities").text == "Facilities"
    wait_text(d, "#fcmp-intro", "Use at 2 facilities in this range")
    rows = {r[0]: r for r in _rows(d)}
    # facility, members, CPU hours, sessions, TTS p95, within SLO, worker p95, within,
    # read local/cache/remote, batch efficiency, GPU busy
    assert rows["af-x"] == [
        "af-x", "2", "2.50", "2", _expected_p95(database_url, app.now), "75.0 %", "n/a",
        "n/a", "60.0 %", "20.0 %", "20.0 %", "75.0 %", "25.0 %",
    ]  # fmt: skip
    assert rows["af-y"] == [
        "af-y", "1", "1.00", "0", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"
    ]  # fmt: skip
    api = httpx.get(
        f"{app.url}/api/v1/facilities",
        params={"start": app.now - 86400, "end": app.now + 3600},
        timeout=10,
    ).json()
    assert [(r["facility"], r["cpu_hours"], r["active_members"]) for r in api] == [
        ("af-x", 2.5, 2),
        ("af-y", 1.0, 1),
    ]
    assert api[0]["data_read_local_share"] == 0.6 and api[1]["gpu_busy_ratio"] is None
    assert console_errors(d) == []


def test_a_member_sees_their_own_use_per_facility(hub: tuple[LiveApp, str], browser: Any) -> None:
    app, _ = hub
    d = browser
    open_fresh(d, app.url, "/facilities")
    wait_text(d, "#fcmp-grid", "af-y")
    pick_principal(d, f"member:{BOB_ID}")
    wait_text(d, "#fcmp-intro", "Your own use at 2 facilities")
    heads = [h.text for h in d.find_elements(By.CSS_SELECTOR, "#fcmp-grid thead th")]
    assert "Your CPU hours" in heads
    rows = {r[0]: r[:4] for r in _rows(d)}
    assert rows == {"af-x": ["af-x", "1", "0.50", "0"], "af-y": ["af-y", "1", "1.00", "0"]}
    assert "Alice" not in d.find_element(By.TAG_NAME, "body").text
