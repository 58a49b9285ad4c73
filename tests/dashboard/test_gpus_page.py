"""The GPUs page in headless Chromium: a real app under uvicorn (its own, so the other pages'
data stay as they are) fed with the GPU probe's batches from the fake-NVML scenario."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from afmon.collectors import wire
from tests.aggregator.test_gpu_ledger import identity_toml, member_id, post_batch
from tests.collectors.fake_nvml import CYCLES, STEP, Scenario
from tests.dashboard.conftest import (
    LiveApp,
    app_settings,
    console_errors,
    open_fresh,
    pick_principal,
    serve,
    table_rows,
    wait_text,
)

pytestmark = pytest.mark.browser
FACILITY, TOKEN = "gpu-af", "gpu-token"


@pytest.fixture(scope="module")
def gpu_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    tmp = tmp_path_factory.mktemp("afmon-gpus")
    settings = app_settings(
        tmp, identity_toml(FACILITY), FACILITY, TOKEN, gpu_model_factors={"h100": 2.0}
    )
    with serve(settings, "uvicorn-gpus-test") as url, httpx.Client(timeout=10) as client:
        now = time.time()
        scenario = Scenario(tmp / "proc")
        probe = scenario.probe()
        for k in range(CYCLES):
            scenario.advance(k)
            t = now - 1800 + k * STEP
            out = probe.collect(t)
            batch = wire.Batch(
                version=wire.WIRE_VERSION,
                agent_id="gpu-agent",
                facility=FACILITY,
                node="gpu-node-1",
                seq=k,
                sent_at=t,
                series=out.series,
                events=out.events,
            )
            post_batch(client, url, TOKEN, batch)
        yield LiveApp(url, now)


def test_gpus_page_as_facility_admin(gpu_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, gpu_app.url, "/gpus")
    wait_text(d, "#gpu-members-table", "Alice")
    members = {r[0]: r[1:] for r in table_rows(d, "#gpu-members-table")}
    # allocated 210 s = 0.06 h, active 123.75 s = 0.03 h: 59 %
    assert members["Alice"] == ["0.06", "0.03", "59%"]
    assert members["Carol"] == ["0.16", "0.10", "62%"]
    vos = {r[0]: r[1] for r in table_rows(d, "#gpu-vos-table")}
    assert set(vos) == {"atlas", "cms"}
    models = {r[0]: r for r in table_rows(d, "#gpu-models-table")}
    assert models["H100"][3:] == ["2.00", "0.16"]  # 0.08 h x factor 2 (AFMON_GPU_MODEL_FACTORS)
    idle = table_rows(d, "#gpu-idle-table")
    assert [(r[0], r[2], r[5]) for r in idle] == [("Frank", "GPU-4", r[5]) for r in idle]
    assert len(idle) == 1 and idle[0][5] != "still idle"  # it ended when frank's GPU got busy
    mig = table_rows(d, "#gpu-mig-table")
    assert sorted(r[2] for r in mig) == ["GPU"] * 5 + ["MIG instance"] * 2
    assert {r[6] for r in mig if r[2] == "MIG instance"} == {"unavailable"}
    rows = d.execute_script(
        "const gd = document.querySelector('#gpu-heatmap .js-plotly-plot');"
        "return gd.data[0].type + ':' + gd.data[0].y.length;"
    )
    assert rows == "heatmap:4"  # four whole GPUs; the MIG instances have no GPM here
    # access breadth: the five GPUs, every member with GPU time served (docs/gpu.md)
    wait_text(d, "#gpu-breadth-table", FACILITY)
    [breadth] = table_rows(d, "#gpu-breadth-table")
    assert breadth[:2] == [FACILITY, "5"]
    assert breadth[3] == str(len(members))
    severe = console_errors(d)
    assert severe == [], severe


def test_a_member_sees_only_their_own_gpu_time(gpu_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, gpu_app.url, "/gpus")
    wait_text(d, "#gpu-members-table", "Alice")
    pick_principal(d, f"member:{member_id('bob')}")
    wait_text(d, "#gpu-viewer", "member")
    wait_text(d, "#gpu-mig-notice", "facility admins")
    assert [r[0] for r in table_rows(d, "#gpu-members-table")] == ["Bob"]
    assert table_rows(d, "#gpu-idle-table") == []  # frank's idle GPU is not bob's business
