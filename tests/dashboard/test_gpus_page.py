"""The GPUs page in headless Chromium: a real app under uvicorn (its own, so the other pages'
data stay as they are) fed with the GPU probe's batches from the fake-NVML scenario."""

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
from tests.aggregator.test_gpu_ledger import identity_toml, member_id, post_batch
from tests.collectors.fake_nvml import CYCLES, STEP, Scenario
from tests.conftest import free_port
from tests.dashboard.conftest import LiveApp

pytestmark = pytest.mark.browser
FACILITY, TOKEN, TIMEOUT = "gpu-af", "gpu-token", 20


@pytest.fixture(scope="module")
def gpu_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    tmp: Path = tmp_path_factory.mktemp("afmon-gpus")
    (tmp / "identity.toml").write_text(identity_toml(FACILITY))
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp}/afmon.sqlite", facility_tokens={FACILITY: TOKEN},
        identity_file=tmp / "identity.toml", local_mode=True, log_level="warning",
        gpu_model_factors={"h100": 2.0},
    )  # fmt: skip
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="uvicorn-gpus-test", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start the afmon app")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        now = time.time()
        scenario = Scenario(tmp / "proc")
        probe = scenario.probe()
        with httpx.Client(timeout=10) as client:
            for k in range(CYCLES):
                scenario.advance(k)
                t = now - 1800 + k * STEP
                out = probe.collect(t)
                batch = wire.Batch(version=wire.WIRE_VERSION, agent_id="gpu-agent",
                                   facility=FACILITY, node="gpu-node-1", seq=k, sent_at=t,
                                   series=out.series, events=out.events)  # fmt: skip
                post_batch(client, url, TOKEN, batch)
        yield LiveApp(url, now)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _wait_text(driver: Any, css: str, text: str) -> None:
    WebDriverWait(driver, TIMEOUT).until(
        EC.text_to_be_present_in_element((By.CSS_SELECTOR, css), text),
        f"{text!r} never appeared in {css}",
    )


def _rows(driver: Any, css: str) -> list[list[str]]:
    return [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in driver.find_elements(By.CSS_SELECTOR, f"{css} tr")
        if tr.find_elements(By.TAG_NAME, "td")
    ]


def test_gpus_page_as_facility_admin(gpu_app: LiveApp, browser: Any) -> None:
    d = browser
    d.get(f"{gpu_app.url}/healthz")
    d.execute_script("window.sessionStorage.clear(); window.localStorage.clear();")
    d.get(f"{gpu_app.url}/gpus")
    _wait_text(d, "#gpu-members-table", "Alice")
    members = {r[0]: r[1:] for r in _rows(d, "#gpu-members-table")}
    # allocated 210 s = 0.06 h, active 123.75 s = 0.03 h: 59 %
    assert members["Alice"] == ["0.06", "0.03", "59%"]
    assert members["Carol"] == ["0.16", "0.10", "62%"]
    vos = {r[0]: r[1] for r in _rows(d, "#gpu-vos-table")}
    assert set(vos) == {"atlas", "cms"}
    models = {r[0]: r for r in _rows(d, "#gpu-models-table")}
    assert models["H100"][3:] == ["2.00", "0.16"]  # 0.08 h x factor 2 (AFMON_GPU_MODEL_FACTORS)
    idle = _rows(d, "#gpu-idle-table")
    assert [(r[0], r[2], r[5]) for r in idle] == [("Frank", "GPU-4", r[5]) for r in idle]
    assert len(idle) == 1 and idle[0][5] != "still idle"  # it ended when frank's GPU got busy
    mig = _rows(d, "#gpu-mig-table")
    assert sorted(r[2] for r in mig) == ["GPU"] * 5 + ["MIG instance"] * 2
    assert {r[6] for r in mig if r[2] == "MIG instance"} == {"unavailable"}
    rows = d.execute_script(
        "const gd = document.querySelector('#gpu-heatmap .js-plotly-plot');"
        "return gd.data[0].type + ':' + gd.data[0].y.length;"
    )
    assert rows == "heatmap:4"  # four whole GPUs; the MIG instances have no GPM here
    severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe


def test_a_member_sees_only_their_own_gpu_time(gpu_app: LiveApp, browser: Any) -> None:
    d = browser
    d.get(f"{gpu_app.url}/healthz")
    d.execute_script("window.sessionStorage.clear(); window.localStorage.clear();")
    d.get(f"{gpu_app.url}/gpus")
    _wait_text(d, "#gpu-members-table", "Alice")
    d.find_element(By.ID, "principal-picker").click()
    option = WebDriverWait(d, TIMEOUT).until(EC.element_to_be_clickable((
        By.XPATH,
        f"//*[@role='listbox']//input[@value='member:{member_id('bob')}']"
        "/ancestor::*[@role='option']",
    )))  # fmt: skip
    option.click()
    _wait_text(d, "#gpu-viewer", "member")
    _wait_text(d, "#gpu-mig-notice", "facility admins")
    assert [r[0] for r in _rows(d, "#gpu-members-table")] == ["Bob"]
    assert _rows(d, "#gpu-idle-table") == []  # frank's idle GPU is not bob's business
