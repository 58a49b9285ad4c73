"""The Interactive page in headless Chromium: the real app under uvicorn with waits posted as
wire events; the admin sees everyone's distribution, SLO share, profiles and outliers, a member
only their own waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from aggregator.app import create_app
from aggregator.settings import ServerSettings
from collectors import wire
from tests.conftest import free_port
from tests.dashboard.conftest import ALICE_ID, FACILITY, IDENTITY_TOML, TOKEN

pytestmark = pytest.mark.browser
TIMEOUT = 20
# (user, wait seconds, profile): alice 2, 4 and 30 s; bob 6 s on a GPU profile
WAITS = [
    ("alice", 2.0, "small"),
    ("alice", 4.0, "small"),
    ("alice", 30.0, "small"),
    ("bob", 6.0, "gpu"),
]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("afmon-interactive")
    (tmp / "identity.toml").write_text(IDENTITY_TOML)
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp}/afmon.sqlite",
        facility_tokens={FACILITY: TOKEN},
        identity_file=tmp / "identity.toml",
        local_mode=True,
        log_level="warning",
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="uvicorn-interactive", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
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
        batch = wire.Batch(
            version=1,
            agent_id="hub",
            facility=FACILITY,
            node="hub",
            seq=1,
            sent_at=now,
            events=events,
        )
        r = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/ingest",
            content=wire.encode(batch),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _wait_text(d: Any, css: str, text: str) -> None:
    WebDriverWait(d, TIMEOUT).until(
        EC.text_to_be_present_in_element((By.CSS_SELECTOR, css), text),
        f"{text!r} never appeared in {css}",
    )


def _rows(d: Any, table: str) -> list[str]:
    return [r.text for r in d.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")]


def test_interactive_page_admin_and_member(app_url: str, browser: Any) -> None:
    d = browser
    d.get(f"{app_url}/healthz")
    d.execute_script("window.sessionStorage.clear(); window.localStorage.clear();")
    d.get(f"{app_url}/interactive")
    _wait_text(d, "#int-summary-text", "Time to session: 4 waits")
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
    severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe

    # a member sees only their own waits
    d.find_element(By.ID, "principal-picker").click()
    WebDriverWait(d, TIMEOUT).until(
        EC.element_to_be_clickable(
            (
                By.XPATH,
                f"//*[@role='listbox']//input[@value='member:{ALICE_ID}']/ancestor::*[@role='option']",
            )
        )
    ).click()
    _wait_text(d, "#int-summary-text", "Time to session: 3 waits")
    _wait_text(d, "#int-viewer", "Your own waits, Alice Archer")
    assert all(r.startswith("Alice Archer") for r in _rows(d, "int-slowest-table"))
