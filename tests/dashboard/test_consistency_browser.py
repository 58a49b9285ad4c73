"""Tiles and pages agree, in headless Chromium, on the simulator's rich facility (GPUs, an
XRootD cache with its own counters, sessions, Dask): each Facility-page tile equals the figure
its page shows (GPUs, data read, sessions, CPU and cores), and a node whose agent went silent
is marked stale and left out of the live capacity on every page that counts it.

The server's clock is the test's: three hours are posted, then the clock moves on by
SILENT_SECONDS and every node but one reports once more, so that node has been silent for
longer than the AfmonAgentSilent threshold (NODE_STALE_SECONDS) when the pages are read."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from afmon.aggregator.query.operations import NODE_STALE_SECONDS
from afmon.aggregator.query.reads import LOCAL_ADMIN, Query
from afmon.aggregator.store.db import make_engine
from afmon.collectors.simulator import FacilitySimulator, Poster, backfill
from afmon.dashboard.figures import fmt_number, fmt_plain
from tests.dashboard.conftest import (
    FACILITY,
    TIMEOUT,
    TOKEN,
    app_settings,
    console_errors,
    open_fresh,
    serve,
    table_rows,
    wait_text,
)

pytestmark = pytest.mark.browser

SILENT_SECONDS = NODE_STALE_SECONDS + 100.0  # 11.7 min: the alert fires, the node is stale
SILENT_NODE = "sim-node002"  # a GPU node (four GPUs, one split into MIG instances)


@dataclass
class Facility:
    url: str
    query: Query
    clock: Any  # the server's clock


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Facility]:
    tmp = tmp_path_factory.mktemp("afmon-consistency")
    sim = FacilitySimulator(facility=FACILITY, nodes=3, members_per_vo=2, seed=11,
                            sessions_per_member_day=24, rich=True)  # fmt: skip
    settings = app_settings(tmp, sim.identity_toml())
    offset = [0.0]

    def clock() -> float:
        return time.time() + offset[0]

    with serve(settings, "uvicorn-consistency", clock=clock) as url:
        poster = Poster(url, TOKEN)
        now = time.time()
        backfill(sim, poster, now - 3 * 3600, now - 60, report=None)
        offset[0] = SILENT_SECONDS  # time passes: every node but one reports again
        for batch in sim.batches(now - 60, now + 60):
            if batch.node != SILENT_NODE:
                poster.post(batch)
        yield Facility(url, Query(make_engine(settings.database_url)), clock)


# -- reading the pages -------------------------------------------------------------------------


def _tile(d: Any, page: str, key: str) -> str:
    css = f"#{page} .tile[data-key='{key}']"
    WebDriverWait(d, TIMEOUT).until(lambda d: d.find_elements(By.CSS_SELECTOR, css), css)
    return d.find_element(By.CSS_SELECTOR, css).text


def _hour_of(tile: str) -> str:
    """The "HH:MM" the tile's last full hour starts at ("mean over 19:00-20:00 UTC")."""
    found = re.search(r"(\d\d:\d\d)-\d\d:\d\d UTC", tile)
    assert found, f"no hour in {tile!r}"
    return found.group(1)


def _stacked_at(d: Any, graph_id: str, hour: str) -> float:
    """The height of the stacked bars of `graph_id` at the step that starts at `hour`."""
    WebDriverWait(d, TIMEOUT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f"#{graph_id} g.trace.bars"),
        f"{graph_id} drew no bars",
    )
    return d.execute_script(
        "const gd = document.querySelector('#' + arguments[0] + ' .js-plotly-plot');"
        "let sum = 0; for (const t of gd.data) { t.x.forEach((x, i) => {"
        "  if (String(x).includes('T' + arguments[1] + ':00') || "
        "      String(x).includes(' ' + arguments[1] + ':00')) sum += t.y[i]; }); }"
        "return sum;",
        graph_id,
        hour,
    )


def _lines(tile: str) -> dict[str, str]:
    """A tile's "label value" lines (a value without spaces) as label -> value."""
    return dict(line.rsplit(" ", 1) for line in tile.splitlines()[1:] if " " in line)


def _window_start(d: Any) -> float:
    text = d.find_element(By.ID, "window-text").text
    return datetime.strptime(text[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()


# -- tests -------------------------------------------------------------------------------------


def test_gpu_tile_equals_the_gpus_page(rich: Facility, browser: Any) -> None:
    d = browser
    open_fresh(d, rich.url, "/")
    wait_text(d, "#fac-live-gpus", "GPUs")
    on_facility = d.find_element(By.ID, "fac-live-gpus").text
    stale_note = d.find_element(By.ID, "fac-live-gpus-stale").text
    cap = rich.query.capacity(LOCAL_ADMIN, rich.clock())
    live, silent = int(cap["gpus"].sum()), int(cap["stale_gpus"].sum())
    assert live > 0 and silent > 0  # the GPU node that went silent holds some of them
    assert f"of {fmt_number(live, 'GPUs', count=True)} (" in on_facility
    assert f"1 silent node ({fmt_number(silent, 'GPUs', count=True)}) left out" in stale_note

    open_fresh(d, rich.url, "/gpus")
    wait_text(d, "#gpu-live-gpus", "GPUs")
    assert d.find_element(By.ID, "gpu-live-gpus").text == on_facility  # one read, one figure
    assert d.find_element(By.ID, "gpu-live-gpus-stale").text == stale_note
    wait_text(d, "#gpu-mig-table", "GPU")
    devices = table_rows(d, "#gpu-mig-table")
    whole = [r for r in devices if r[2] == "GPU"]
    assert len(whole) == live + silent  # the layout lists every GPU that reported
    assert len([r for r in whole if r[0] == SILENT_NODE]) == silent
    assert console_errors(d) == []


def test_cpu_tile_equals_the_nodes_and_the_chart(rich: Facility, browser: Any) -> None:
    d = browser
    open_fresh(d, rich.url, "/")
    wait_text(d, "#fac-nodes-table", SILENT_NODE)
    nodes = table_rows(d, "#fac-nodes-table")
    live = [r for r in nodes if r[-1] == "live"]
    stale = [r for r in nodes if r[-1] != "live"]
    assert [r[1] for r in stale] == [SILENT_NODE]
    assert re.fullmatch(r"silent \d+ min: not in live capacity", stale[0][-1])
    assert stale[0][5].endswith("when last heard)")  # its last busy ratio, not as current
    cpu = d.find_element(By.ID, "fac-live-cpu").text
    cores = sum(float(r[2].replace(",", "")) for r in live)
    assert f"of {fmt_number(cores, 'cores')} (" in cpu
    silent_cores = fmt_number(float(stale[0][2]), "cores")
    assert d.find_element(By.ID, "fac-live-cpu-stale").text.startswith(
        f"1 silent node ({silent_cores}) left out"
    )
    # CPU in use over the last full hour: the chart's bar of that hour, in core-hours per hour
    hour = _hour_of(_tile(d, "fac-live", "cpu"))
    assert cpu.startswith(fmt_plain(_stacked_at(d, "fac-usage", hour)) + " of ")
    assert console_errors(d) == []


def test_data_tile_equals_the_data_page(rich: Facility, browser: Any) -> None:
    d = browser
    open_fresh(d, rich.url, "/")
    tile = _tile(d, "fac-live", "data")
    hour = re.search(r"Over (\d\d:\d\d)-", tile)
    assert hour, tile
    rate = re.search(r"Mean rate ([\d.,]+) MB/s", tile)
    assert rate, tile

    open_fresh(d, rich.url, "/data")
    wait_text(d, "#data-tiles", "Cache share of reads")
    by_source = _stacked_at(d, "data-by-source", hour.group(1))  # MB/s over that hour
    assert rate.group(1) == fmt_plain(by_source)
    # the attributed reads and the servers' own counters, each said for what it is
    attributed = _tile(d, "data-tiles", "all")
    servers = _tile(d, "data-tiles", "servers")
    assert attributed.startswith("Data moved by members")
    assert not attributed.count("Read, cache 0 GB")
    assert servers.startswith("XRootD servers' own counters")
    rows = table_rows(d, "#data-servers-table")
    assert _lines(servers)["Servers reporting"] == f"{len(rows):,}"
    opened = sum(float(r[5].replace(",", "")) for r in rows)
    assert _lines(servers)["Files opened"] == fmt_number(opened, count=True)
    assert "No XRootD server" not in d.find_element(By.ID, "page").text
    # a member's "Files opened" is what their records reported: never a 0 for "unknown"
    members = table_rows(d, "#data-members-table")
    assert members and all(r[6] != "0" for r in members)
    assert (
        "Files opened: what the servers' per-user records"
        in d.find_element(By.ID, "data-files-note").text
    )
    assert console_errors(d) == []


def test_session_counts_have_one_definition(rich: Facility, browser: Any) -> None:
    d = browser
    open_fresh(d, rich.url, "/")
    wait_text(d, "#fac-tiles", "Running now")
    open_now = _lines(_tile(d, "fac-live", "open"))["Interactive sessions"]
    tiles = [t.text for t in d.find_elements(By.CSS_SELECTOR, "#fac-tiles .tile")]
    ended = sum(int(re.search(r"Sessions started and ended (\d+)", t).group(1)) for t in tiles)
    running = sum(int(re.search(r"Running now (\d+) session", t).group(1)) for t in tiles)
    start = _window_start(d)

    open_fresh(d, rich.url, "/member")
    wait_text(d, "#mem-sessions-summary", "sessions in this range")
    rows = table_rows(d, "#mem-sessions-table")
    still = [r for r in rows if r[4] == "still running"]
    started_in = [
        r for r in rows
        if r[4] != "still running"
        and datetime.strptime(r[3], "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC).timestamp()
        >= start
    ]  # fmt: skip
    assert int(open_now) == running == len(still) > 0
    assert ended == len(started_in) > 0
    before = len(rows) - len(started_in) - len(still)
    assert d.find_element(By.ID, "mem-sessions-summary").text == (
        f"{len(rows)} sessions in this range: {ended} started in it and ended (the totals "
        f"above), {running} still running, {before} started before it."
    )
    # the member tiles add each one's running sessions, so-far time labelled as such
    member_tiles = [t.text for t in d.find_elements(By.CSS_SELECTOR, "#mem-tiles .tile")]
    assert sum(
        int(re.search(r"Running now (\d+) session", t).group(1)) for t in member_tiles
    ) == len(still)
    assert all("hours so far" in t for t in member_tiles)
    assert console_errors(d) == []
