"""Fixtures for the dashboard's end-to-end tests: the real app under uvicorn with known data
posted over HTTP as wire batches, and headless Chromium driven by selenium 4."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from tests.conftest import free_port

TIMEOUT = 20  # seconds a browser test waits for something to show
FACILITY = "af-test"
TOKEN = "test-token-af"
NODE = "node-01"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-extensions",
    "--window-size=1280,900",
)

IDENTITY_TOML = """
[vos.atlas]
issuer = "https://atlas-auth.example.org/"
[vos.cms]
issuer = "https://cms-auth.example.org/"

[[members]]
vo = "atlas"
subject = "alice-sub"
display_name = "Alice Archer"
group = "/atlas/higgs"
accounts = [{ facility = "af-test", local = "alice" }]

[[members]]
vo = "atlas"
subject = "carol-sub"
display_name = "Carol Chen"
accounts = [{ facility = "af-test", local = "carol" }]

[[members]]
vo = "cms"
subject = "bob-sub"
display_name = "Bob Brown"
accounts = [{ facility = "af-test", local = "bob" }]

[[members]]
vo = "cms"
subject = "dave-sub"
display_name = "Dave Diaz"
accounts = [{ facility = "af-test", local = "dave" }]
"""

# CPU seconds each local user burns (eve has no mapping: accounted as unmapped)
CPU_SECONDS = {"alice": 7200.0, "carol": 1800.0, "bob": 5400.0, "eve": 900.0}
ALICE_RSS_BYTES = 6e9  # held for 600 s: 3.6e12 B·s = 1.00 GB-hours
NODE_CORES = 64.0
NODE_MEMORY = 256 * 2.0**30
NODE_HS23 = 12.5
NODE_BUSY = 0.42
ALICE_ID = "https://atlas-auth.example.org/|alice-sub"
BOB_ID = "https://cms-auth.example.org/|bob-sub"


@dataclass
class LiveApp:
    url: str
    now: float


def _batches(now: float) -> list[wire.Batch]:
    t1, t2 = now - 1200.0, now - 600.0
    series = [
        wire.Series("node_cpu_cores", "cores", "gauge", {"node": NODE}, [t2], [NODE_CORES]),
        wire.Series("node_memory_bytes", "bytes", "gauge", {"node": NODE}, [t2], [NODE_MEMORY]),
        wire.Series("node_hepscore23_per_core", "HS23", "gauge", {"node": NODE}, [t2], [NODE_HS23]),
        wire.Series("node_cpu_busy_ratio", "ratio", "gauge", {"node": NODE}, [t2], [NODE_BUSY]),
        wire.Series(
            "user_memory_rss_bytes",
            "bytes",
            "gauge",
            {"user": "alice", "node": NODE},
            [t1, t2],
            [ALICE_RSS_BYTES, ALICE_RSS_BYTES],
        ),
    ]
    # a counter's first sample is a baseline: the increase to the second one is accounted
    series += [
        wire.Series(
            "user_cpu_seconds",
            "seconds",
            "counter",
            {"user": user, "node": NODE},
            [t1, t2],
            [100.0, 100.0 + cpu],
        )
        for user, cpu in CPU_SECONDS.items()
    ]
    events = [
        wire.Event("session", "s-alice-1", "alice", now - 3000.0, now - 1200.0),  # 0.50 h
        wire.Event("session", "s-bob-1", "bob", now - 1800.0, None),  # still running
    ]
    common = {
        "version": wire.WIRE_VERSION,
        "agent_id": "agent-node-01",
        "facility": FACILITY,
        "node": NODE,
        "sent_at": now,
    }
    return [wire.Batch(seq=1, series=series, **common), wire.Batch(seq=2, events=events, **common)]


def app_settings(
    tmp: Path,
    identity_toml: str = IDENTITY_TOML,
    facility: str = FACILITY,
    token: str = TOKEN,
    **extra: Any,
) -> ServerSettings:
    """Local-mode settings on a fresh SQLite database in `tmp`, with one facility's token."""
    (tmp / "identity.toml").write_text(identity_toml)
    return ServerSettings(
        database_url=f"sqlite:///{tmp}/afmon.sqlite",
        facility_tokens={facility: token},
        identity_file=tmp / "identity.toml",
        local_mode=True,
        log_level="warning",
        **extra,
    )


@contextmanager
def serve(
    settings: ServerSettings,
    name: str = "uvicorn-dashboard-test",
    clock: Callable[[], float] = time.time,
) -> Iterator[str]:
    """`create_app(settings, clock=clock)` under uvicorn in a thread on a free port; yields its
    URL and stops it (also when the body fails)."""
    port = free_port()
    app = create_app(settings, clock=clock)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start the afmon app")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "uvicorn did not stop"


def ingest(url: str, batch: wire.Batch, token: str = TOKEN) -> None:
    """POST one wire batch; it must be applied."""
    r = httpx.post(
        f"{url}/api/v1/ingest",
        content=wire.encode(batch),
        timeout=10,
        headers={"Authorization": f"Bearer {token}", "Content-Type": wire.CONTENT_TYPE},
    )
    assert r.status_code == 200 and r.json()["status"] == "applied", r.text


# -- browser helpers -------------------------------------------------------------------------


def open_fresh(driver: Any, url: str, path: str) -> None:
    """Open `path` as a first-time visitor (no remembered principal or range)."""
    driver.get(f"{url}/healthz")
    driver.execute_script("window.sessionStorage.clear(); window.localStorage.clear();")
    driver.get(f"{url}{path}")


def wait_text(driver: Any, css: str, text: str, timeout: float = TIMEOUT) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        EC.text_to_be_present_in_element((By.CSS_SELECTOR, css), text),
        f"{text!r} never appeared in {css}",
    )


def table_rows(driver: Any, css: str) -> list[list[str]]:
    """The cell texts of every row with cells (header rows left out) under `css`."""
    from selenium.webdriver.common.by import By

    return [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in driver.find_elements(By.CSS_SELECTOR, f"{css} tr")
        if tr.find_elements(By.TAG_NAME, "td")
    ]


def pick_principal(driver: Any, value: str) -> None:
    """Choose `value` (e.g. "member:<id>") in the local-mode principal picker."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "principal-picker").click()
    WebDriverWait(driver, TIMEOUT).until(
        EC.element_to_be_clickable(
            (
                By.XPATH,
                f"//*[@role='listbox']//input[@value='{value}']/ancestor::*[@role='option']",
            )
        )
    ).click()


def grid_rows(driver: Any, grid_id: str) -> list[dict[str, Any]] | None:
    """What an AG Grid (dash-ag-grid) holds after its own filters and sorting, in its order:
    each row's data; None until the grid is ready."""
    return driver.execute_script(
        "let api; try { api = dash_ag_grid.getApi(arguments[0]); } catch (e) { return null; }"
        "if (!api) return null;"
        "const rows = []; api.forEachNodeAfterFilterAndSort(n => rows.push(n.data));"
        "return rows;",
        grid_id,
    )


def trace_sums(driver: Any, graph_css: str) -> dict[str, float]:
    """What the browser plots: trace name -> sum of its y values."""
    return driver.execute_script(
        "const gd = document.querySelector(arguments[0] + ' .js-plotly-plot');"
        "return Object.fromEntries(gd.data.map(t => [t.name, t.y.reduce((a, b) => a + b, 0)]));",
        graph_css,
    )


def console_errors(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


@pytest.fixture(scope="package")
def live_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    """`create_app` (SQLite in tmp, local mode) under uvicorn in a thread, with known data."""
    settings = app_settings(tmp_path_factory.mktemp("afmon-dash"))
    with serve(settings) as url:
        now = time.time()
        for batch in _batches(now):
            ingest(url, batch)
        yield LiveApp(url, now)


@pytest.fixture(scope="package")
def browser() -> Iterator[object]:
    """Headless Chromium via selenium 4; fails (never skips) when Chromium is missing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(binary) is None:
            pytest.fail(
                f"{binary} is missing: the dashboard's browser tests need Debian's chromium "
                "and chromium-driver (apt-get install chromium chromium-driver)"
            )
    profile = tempfile.mkdtemp(prefix="afmon-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except Exception as exc:  # noqa: BLE001  (any start failure must fail, clearly)
        shutil.rmtree(profile, ignore_errors=True)
        pytest.fail(f"headless Chromium did not start: {exc}")
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
