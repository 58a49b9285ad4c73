"""The public facility card's page (`/public`, docs/public-card.md) in headless Chromium: no
sign-in, the facility's capacity as its agent reported it, the JSON document it links to, and
no member name anywhere."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By

from tests.dashboard.conftest import (
    FACILITY,
    _batches,
    app_settings,
    console_errors,
    ingest,
    serve,
    table_rows,
    wait_text,
)

pytestmark = pytest.mark.browser


def test_public_card_page(tmp_path: Any, browser: Any) -> None:
    settings = app_settings(tmp_path, public_card=True, public_card_min_members=2)
    with serve(settings, "uvicorn-public-card") as url:
        for batch in _batches(time.time()):
            ingest(url, batch)
        card = httpx.get(f"{url}/public.json", timeout=30).json()
        [facility] = card["facilities"]
        d = browser
        d.get(f"{url}/public")
        wait_text(d, f"#card-{FACILITY} h2", FACILITY)
        cap = facility["capacity"]
        [row] = table_rows(d, f"#card-{FACILITY} table:first-of-type")
        assert row == [str(cap["nodes"]), f"{cap['cpu_cores']:,.0f}",
                       f"{cap['memory_bytes'] / 2**30:,.0f}", str(cap["gpus"])]  # fmt: skip
        assert cap["nodes"] == 1
        body = d.find_element(By.TAG_NAME, "body").text
        assert "Alice" not in body and "alice" not in body and "node-01" not in body
        d.find_element(By.LINK_TEXT, "This card as JSON").click()
        wait_text(d, "body", '"schema":"afmon-public-card/1"')
        assert console_errors(d) == []
