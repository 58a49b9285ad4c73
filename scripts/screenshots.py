"""Screenshots of every dashboard page for docs/screenshots/, taken with the browser tests'
tooling: the real app under uvicorn (local mode, SQLite in a temporary folder), a day of the
facility simulator posted over HTTP as wire batches, and headless Chromium.

    python scripts/screenshots.py [--out docs/screenshots] [--hours 24]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from afmon.collectors.simulator import FacilitySimulator, Poster, backfill  # noqa: E402
from afmon.dashboard.app import PAGES  # noqa: E402
from tests.dashboard.conftest import (  # noqa: E402
    CHROME_FLAGS,
    CHROMEDRIVER,
    CHROMIUM,
    app_settings,
    open_fresh,
    serve,
)

FACILITY, TOKEN = "af-demo", "demo-token"
# what each page shows once its data are in (the last element to fill)
READY = {
    "/": "#fac-top-vos-table",
    "/vo": "#vo-table .ag-cell",
    "/member": "#mem-sessions",
    "/alerts": "#page",
    "/reports": "#page",
    "/gpus": "#page",
    "/batch": "#page",
    "/interactive": "#int-summary-text",
    "/data": "#data-tiles",
}


def _name(path: str) -> str:
    return "facility" if path == "/" else path.strip("/")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    ap.add_argument("--hours", type=float, default=24.0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sim = FacilitySimulator(facility=FACILITY, nodes=3, members_per_vo=4, seed=7)
    with tempfile.TemporaryDirectory(prefix="afmon-shots-") as tmp:
        settings = app_settings(Path(tmp), sim.identity_toml(), FACILITY, TOKEN)
        with serve(settings, "uvicorn-screenshots") as url:
            now = time.time()
            backfill(sim, Poster(url, TOKEN), now - args.hours * 3600, now, report=None)
            options = webdriver.ChromeOptions()
            options.binary_location = CHROMIUM
            for flag in CHROME_FLAGS:
                options.add_argument(flag.replace("1280,900", "1280,1000"))
            options.add_argument(f"--user-data-dir={tmp}/chromium")
            driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
            try:
                for path in PAGES:
                    open_fresh(driver, url, path)
                    css = READY.get(path, "#page")
                    WebDriverWait(driver, 30).until(
                        lambda d, css=css: d.execute_script(
                            "const e = document.querySelector(arguments[0]);"
                            "return e && e.innerText.trim().length > 0 && "
                            "!document.querySelector('[data-dash-is-loading=\"true\"]');",
                            css,
                        ),
                        f"{path} did not fill {css}",
                    )
                    time.sleep(1.5)  # let plotly finish its transitions
                    height = driver.execute_script("return document.body.scrollHeight")
                    driver.set_window_size(1280, min(max(900, height + 40), 4000))
                    target = args.out / f"{_name(path)}.png"
                    driver.save_screenshot(str(target))
                    driver.set_window_size(1280, 1000)
                    print(f"{path} -> {target}")
            finally:
                driver.quit()
                shutil.rmtree(f"{tmp}/chromium", ignore_errors=True)


if __name__ == "__main__":
    main()
