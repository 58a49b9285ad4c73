"""The Usage patterns page in headless Chromium: the real app under uvicorn, batch jobs that
failed with known states and exit codes, server starts, Dask computations, a notebook and a
terminal session and XRootD reads labelled by format posted as wire batches; what the
facility admin and a member see."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from afmon.aggregator.query.access import period_of
from afmon.collectors import wire
from tests.dashboard.conftest import (
    BOB_ID,
    FACILITY,
    IDENTITY_TOML,
    NODE,
    LiveApp,
    app_settings,
    console_errors,
    ingest,
    open_fresh,
    pick_principal,
    serve,
    table_rows,
    wait_text,
)

pytestmark = pytest.mark.browser


def _events(h: float) -> list[wire.Event]:
    """Everything within the first half hour of the hour `h`, so within one day and week."""

    def job(n: int, state: str, code: int) -> wire.Event:
        attrs = dict(cores=1, cpu_seconds=60.0, wall_seconds=300, node=NODE, state=state,
                     exit_code=code)  # fmt: skip
        return wire.Event("batch_job", f"slurm:af:{n}", "alice", h + 60 * n, h + 60 * n + 300,
                          attrs)  # fmt: skip

    def timed(kind: Any, id_: str, user: str, **attrs: Any) -> wire.Event:
        return wire.Event(kind, id_, user, h + 100.0, h + 140.0, attrs)

    return [
        job(1, "COMPLETED", 0), job(2, "FAILED", 1), job(3, "FAILED", 1), job(4, "TIMEOUT", 0),
        timed("spawn", "sp1", "alice", outcome="ok"),
        timed("spawn", "sp2", "alice", outcome="timeout"),
        timed("dask_computation", "dc1", "bob", outcome="ok"),
        timed("dask_computation", "dc2", "bob", outcome="erred"),
        timed("dask_worker", "dw1", "bob", nthreads=4),
        wire.Event("session", "s1", "alice", h, h + 1200.0, {"profile": "default"}),
        wire.Event("session", "s2", "bob", h, h + 600.0, {"kind": "terminal"}),
    ]  # fmt: skip


def _reads(h: float) -> list[wire.Series]:
    out = []
    for fmt, read, files in (("physlite", 2e9, 3.0), ("ntuple", 0.5e9, 1.0)):
        labels = {"user": "carol", "source": "remote", "identity": "verified", "auth": "token",
                  "node": NODE, "format": fmt}  # fmt: skip
        out.append(wire.Series("user_data_read_bytes", "bytes", "counter", labels, [h + 600.0],
                               [read], created=h))  # fmt: skip
        out.append(wire.Series("user_files_opened", "1", "counter", labels, [h + 600.0],
                               [files], created=h))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def usage_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    identity = IDENTITY_TOML.replace(
        'display_name = "Alice Archer"', 'display_name = "Alice Archer"\ninstitution = "CERN"'
    )
    settings = app_settings(tmp_path_factory.mktemp("afmon-usage-page"), identity)
    with serve(settings, "uvicorn-usage-page") as url:
        now = time.time()
        h = (now - 7200) // 3600 * 3600
        batch = wire.Batch(version=wire.WIRE_VERSION, agent_id="agent-usage", facility=FACILITY,
                           node=NODE, seq=1, sent_at=now, events=_events(h),
                           series=_reads(h))  # fmt: skip
        ingest(url, batch)
        yield LiveApp(url, h)


def test_usage_patterns_as_facility_admin(usage_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, usage_app.url, "/usage")
    wait_text(d, "#use-failures-table", "Alice Archer")
    assert d.find_element("id", "nav-usage").text == "Usage patterns"
    # starts, failed (timed out included), timed out, cancelled, failure rate
    assert table_rows(d, "#use-failures-table") == [
        ["Alice Archer", "Batch jobs", "4", "3", "1", "0", "75%"],
        ["Alice Archer", "Session starts", "2", "1", "1", "0", "50%"],
        ["Bob Brown", "Dask computations", "2", "1", "0", "0", "50%"],
    ]
    assert table_rows(d, "#use-batch-failures-table") == [
        ["Alice Archer", "FAILED", "1", "2"],
        ["Alice Archer", "TIMEOUT", "0", "1"],
    ]
    # all, notebook, terminal, Dask, batch, data access only, other
    week = period_of(usage_app.now, "week")
    assert table_rows(d, "#use-access-table") == [[week, "3", "1", "1", "1", "1", "1", "0"]]
    # per home institution: alice's identity entry names hers, the others' none
    assert table_rows(d, "#use-institutions-table") == [
        [week, "(unknown)", "2", "0", "1", "1", "0", "1", "0"],
        [week, "CERN", "1", "1", "0", "0", "1", "0", "0"],
    ]
    assert table_rows(d, "#use-formats-table") == [
        ["Carol Chen", "PHYSLITE", "2.00", "3"],
        ["Carol Chen", "ntuple", "0.50", "1"],
    ]
    bars = d.execute_script(
        "const gd = document.querySelector('#use-format-bytes .js-plotly-plot');"
        "return Object.fromEntries(gd.data[0].x.map((x, i) => [x, gd.data[0].y[i]]));"
    )
    assert bars == pytest.approx({"PHYSLITE": 2.0, "ntuple": 0.5})
    severe = console_errors(d)
    assert severe == [], f"browser console errors: {severe}"


def test_a_member_sees_only_their_own_usage_patterns(usage_app: LiveApp, browser: Any) -> None:
    d = browser
    open_fresh(d, usage_app.url, "/usage")
    wait_text(d, "#use-failures-table", "Alice Archer")
    pick_principal(d, f"member:{BOB_ID}")
    wait_text(d, "#use-viewer", "Bob Brown")
    wait_text(d, "#use-failures-table", "Dask computations")
    assert table_rows(d, "#use-failures-table") == [
        ["Bob Brown", "Dask computations", "2", "1", "0", "0", "50%"]
    ]
    assert d.find_element("id", "use-batch-failures-table").text == (
        "Every batch job that started in this range succeeded."
    )
    week = period_of(usage_app.now, "week")
    assert table_rows(d, "#use-access-table") == [[week, "1", "0", "1", "1", "0", "0", "0"]]
    body = d.find_element("tag name", "body").text
    for other in ("Alice", "Carol", "PHYSLITE"):
        assert other not in body, f"{other!r} is shown to Bob"
