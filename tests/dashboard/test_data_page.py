"""The Data page in headless Chromium: the real app under uvicorn with its own database, data
posted as wire batches (XRootD bytes by source, host-probe IO, server series), and what the
facility admin and a member see."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from afmon.collectors import wire
from tests.dashboard.conftest import (
    ALICE_ID,
    FACILITY,
    NODE,
    TIMEOUT,
    LiveApp,
    app_settings,
    console_errors,
    ingest,
    open_fresh,
    pick_principal,
    serve,
    trace_sums,
    wait_text,
)

pytestmark = pytest.mark.browser
# (user, metric, source, bytes): alice reads from a cache and local storage, bob remotely,
# carol only through POSIX on the node (the host probe), which the page counts as local
XROOTD = [
    ("alice", "user_data_read_bytes", "cache", 2e9),
    ("alice", "user_data_read_bytes", "local", 1e9),
    ("alice", "user_data_written_bytes", "cache", 0.25e9),
    ("bob", "user_data_read_bytes", "remote", 3e9),
]
IDENTITY = {"alice": "verified", "bob": "asserted"}  # the XRootD probe's `identity` label
CAROL_POSIX_READ = 0.5e9
SERVERS = [("10.0.0.5:1094", "local", 1e9), ("10.0.0.9:1094", "cache", 2e9)]


def _series(now: float) -> list[wire.Series]:
    t, created = now - 1200.0, now - 1800.0  # counters from zero at `created`: count in full
    out = [
        wire.Series(
            metric,
            "bytes",
            "counter",
            # bob logged in without an authentication protocol: his name is only asserted
            {"user": u, "source": s, "node": NODE, "identity": IDENTITY[u]},
            [t],
            [v],
            created=created,
        )
        for u, metric, s, v in XROOTD
    ]
    out += [
        wire.Series(
            "user_files_opened",
            "1",
            "counter",
            {"user": u, "source": s, "node": NODE},
            [t],
            [n],
            created=created,
        )
        for u, s, n in (("alice", "cache", 4.0), ("bob", "remote", 2.0))
    ]
    out.append(
        wire.Series(
            "user_io_read_bytes",
            "bytes",
            "counter",
            {"user": "carol", "node": NODE},
            [t],
            [CAROL_POSIX_READ],
            created=created,
        )
    )
    for server, role, read in SERVERS:
        labels = {"server": server, "source": role, "node": NODE}
        out.append(
            wire.Series(
                "xrootd_server_read_bytes",
                "bytes",
                "counter",
                labels,
                [t - 60, t],
                [0.0, read],
                created=created,
            )
        )
        out.append(
            wire.Series(
                "xrootd_server_files_opened",
                "1",
                "counter",
                labels,
                [t - 60, t],
                [0.0, 3.0],
                created=created,
            )
        )
    return out


@pytest.fixture(scope="module")
def data_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    settings = app_settings(tmp_path_factory.mktemp("afmon-data-page"))
    with serve(settings, "uvicorn-data-page") as url:
        now = time.time()
        ingest(
            url,
            wire.Batch(
                version=wire.WIRE_VERSION,
                agent_id="agent-data",
                facility=FACILITY,
                node=NODE,
                seq=1,
                sent_at=now,
                series=_series(now),
            ),
        )
        yield LiveApp(url, now)


def _trace_sums(d: Any, graph_id: str) -> dict[str, float]:
    WebDriverWait(d, TIMEOUT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f"#{graph_id} g.trace.bars"),
        f"graph {graph_id} drew no bars",
    )
    return trace_sums(d, f"#{graph_id}")


def _rows(d: Any, table_id: str) -> list[list[str]]:
    return [
        [c.text for c in r.find_elements(By.TAG_NAME, "td")]
        for r in d.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")
    ]


def test_data_page_as_facility_admin(data_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, data_app.url, "/data")
    wait_text(d, "#data-tiles", "Cache share of reads")
    tile = d.find_element(By.CSS_SELECTOR, "#data-tiles .tile").text
    assert "Read, local 1.50 GB" in tile  # alice's XRootD local 1 GB + carol's POSIX 0.5 GB
    assert "Read, cache 2.00 GB" in tile and "Read, remote 3.00 GB" in tile
    assert "Written, all sources 0.25 GB" in tile
    assert "Cache share of reads 30.8 %" in tile  # 2 / 6.5
    assert "Identity unverified 3.00 GB" in tile  # bob's remote reads

    per_hour = 3600 * 1e6  # the graphs show MB/s averaged over each hour
    assert _trace_sums(d, "data-by-source") == pytest.approx(
        {"local": 1.5e9 / per_hour, "cache": 2e9 / per_hour, "remote": 3e9 / per_hour}
    )
    assert _trace_sums(d, "data-by-member") == pytest.approx(
        {
            "Alice Archer": 3e9 / per_hour,
            "Bob Brown": 3e9 / per_hour,
            "Carol Chen": 0.5e9 / per_hour,
        }
    )
    assert _trace_sums(d, "data-by-vo") == pytest.approx(
        {"atlas": 3.5e9 / per_hour, "cms": 3e9 / per_hour}
    )
    assert d.find_element(By.CSS_SELECTOR, "#data-by-source .ytitle").text == "Read rate [MB/s]"

    assert _rows(d, "data-members-table") == [
        ["Alice Archer", "atlas", "1.00", "2.00", "0", "0.25", "4", "66.7 %", "0"],
        ["Carol Chen", "atlas", "0.50", "0", "0", "0", "n/a", "0.0 %", "0"],
        ["Bob Brown", "cms", "0", "0", "3.00", "0", "2", "0.0 %", "3.00"],
    ]
    servers = _rows(d, "data-servers-table")
    assert [r[:3] for r in servers] == [
        ["10.0.0.9:1094", "cache", "2.00"],
        ["10.0.0.5:1094", "local", "1.00"],
    ]
    assert [r[5] for r in servers] == ["3", "3"]
    severe = console_errors(d)
    assert severe == [], f"browser console errors: {severe}"


def test_data_page_as_a_member_shows_only_their_bytes(data_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, data_app.url, "/data")
    wait_text(d, "#data-tiles", "Cache share of reads")
    pick_principal(d, f"member:{ALICE_ID}")
    wait_text(d, "#data-servers-note", "facility admins only")
    wait_text(d, "#data-tiles", "Read, remote 0 GB")
    assert _rows(d, "data-members-table") == [
        ["Alice Archer", "atlas", "1.00", "2.00", "0", "0.25", "4", "66.7 %", "0"]
    ]
    assert "Identity unverified" not in d.find_element(By.CSS_SELECTOR, "#data-tiles").text
    assert set(_trace_sums(d, "data-by-member")) == {"Alice Archer"}
