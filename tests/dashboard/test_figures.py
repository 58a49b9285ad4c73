"""The pure figure/table functions on small DataFrames: numbers, units and axis titles."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from afmon.dashboard import figures

T0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC
H = 3600


def _usage(rows: list[tuple[int, str, float]], by: str = "vo", unit: str = "s") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "time": pd.to_datetime([t for t, _k, _a in rows], unit="s", utc=True),
            by: [k for _t, k, _a in rows],
            "amount": [a for _t, _k, a in rows],
            "unit": unit,
        }
    )


@pytest.mark.parametrize(
    ("resource", "factor", "unit", "axis"),
    [
        ("cpu_seconds", 1 / 3600, "core-hours", "CPU time [core-hours]"),
        ("cpu_hs23_seconds", 1 / 3600, "HS23-hours", "CPU time x HEPscore23 [HS23-hours]"),
        ("memory_byte_seconds", 1 / 3.6e12, "GB-hours", "Memory x time [GB-hours]"),
        ("io_read_bytes", 1e-9, "GB", "Bytes read [GB]"),
        ("session_seconds", 1 / 3600, "hours", "Session time [hours]"),
        ("sessions", 1.0, "sessions", "Sessions started [sessions]"),
        ("batch_job_seconds", 1 / 3600, "hours", "Batch job wall time [hours]"),
    ],
)
def test_display_units(resource: str, factor: float, unit: str, axis: str) -> None:
    du = figures.display_unit(resource)
    assert math.isclose(du.factor, factor)
    assert du.unit == unit
    assert du.axis == axis


def test_every_resource_has_an_option_with_its_unit() -> None:
    options = figures.resource_options()
    assert {o["value"] for o in options} == set(figures.RESOURCES)
    cpu = next(o for o in options if o["value"] == "cpu_seconds")
    assert cpu["label"] == "CPU time (core-hours)"


def test_number_formatting() -> None:
    assert figures.fmt_number(2.5, "core-hours") == "2.50 core-hours"
    assert figures.fmt_number(12345.678, "GB") == "12,345.68 GB"
    assert figures.fmt_number(0.0, "hours") == "0 hours"
    assert figures.fmt_number(0.004, "hours") == "0.004 hours"
    assert figures.fmt_number(3.0, "sessions", count=True) == "3 sessions"
    assert figures.fmt_number(1.0, "sessions", count=True) == "1 session"
    assert figures.fmt_number(None, "GB") == "n/a"
    assert figures.display_unit("memory_byte_seconds").format(7.2e12) == "2.00 GB-hours"
    assert figures.fmt_utc(T0 + 90) == "2026-01-01 00:01:30 UTC"


def test_usage_figure_stacks_vos_in_core_hours_over_the_whole_window() -> None:
    df = _usage([(T0, "atlas", 7200.0), (T0, "cms", 1800.0), (T0 + 2 * H, "atlas", 3600.0)])
    fig = figures.usage_figure(df, "cpu_seconds", "vo", T0, T0 + 24 * H, "hour")
    assert fig.layout.barmode == "stack"
    assert fig.layout.yaxis.title.text == "CPU time [core-hours]"
    assert fig.layout.xaxis.title.text == "Time (UTC)"
    assert fig.layout.title.text == "CPU time, per hour"
    assert [t.name for t in fig.data] == ["atlas", "cms"]  # largest first
    atlas, cms = fig.data
    assert len(atlas.x) == 24  # empty hours are shown as zero, not left out
    assert list(atlas.y[:3]) == [2.0, 0.0, 1.0]
    assert list(cms.y[:3]) == [0.5, 0.0, 0.0]
    assert sum(atlas.y) == 3.0
    assert pd.Timestamp(atlas.x[0]) == pd.Timestamp(T0, unit="s", tz="UTC")
    assert atlas.xperiod == 3_600_000


def test_usage_figure_converts_memory_and_names_members() -> None:
    df = _usage([(T0 + H, "iss|a", 3.6e12), (T0 + H, "iss|b", 7.2e12)], by="member", unit="B·s")
    fig = figures.usage_figure(
        df,
        "memory_byte_seconds",
        "member",
        T0,
        T0 + 24 * H,
        "hour",
        names={"iss|a": "Alice", "iss|b": "Bob"},
    )
    assert fig.layout.yaxis.title.text == "Memory x time [GB-hours]"
    assert {t.name: sum(t.y) for t in fig.data} == {"Bob": 2.0, "Alice": 1.0}


def test_usage_figure_daily_buckets() -> None:
    df = _usage([(T0 + 86400, "atlas", 86400.0)])
    fig = figures.usage_figure(df, "cpu_seconds", "vo", T0, T0 + 30 * 86400, "day")
    (trace,) = fig.data
    assert len(trace.x) == 30
    assert trace.y[1] == 24.0
    assert fig.layout.title.text == "CPU time, per day (UTC)"


def test_empty_usage_says_why_and_keeps_the_unit() -> None:
    for df in (_usage([]), _usage([(T0, "atlas", 0.0)])):
        fig = figures.usage_figure(df, "session_seconds", "vo", T0, T0 + 24 * H, "hour")
        assert len(fig.data) == 0
        assert fig.layout.annotations[0].text == "No usage recorded in this range yet."
        assert fig.layout.yaxis.title.text == "Session time [hours]"


def test_nodes_table() -> None:
    df = pd.DataFrame(
        {
            "facility": ["af", "af"],
            "node": ["n1", "n2"],
            "cpu_cores": [64.0, None],
            "memory_bytes": [256 * 2.0**30, None],
            "hepscore23_per_core": [12.5, None],
            "cpu_busy_ratio": [0.423, None],
            "updated": [T0 + 61.0, T0],
        }
    )
    table = figures.nodes_table(df)
    assert [c.name for c in table.columns] == [
        "Facility",
        "Node",
        "CPU cores",
        "Memory [GiB]",
        "HEPscore23 per core",
        "CPU busy [%]",
        "Last update (UTC)",
    ]
    assert table.rows[0] == ["af", "n1", "64", "256.0", "12.50", "42.3", "2026-01-01 00:01:01 UTC"]
    assert table.rows[1][2:6] == ["n/a"] * 4
    assert figures.nodes_table(df.iloc[0:0]).rows == []


def test_sessions_table_running_and_ended() -> None:
    df = pd.DataFrame(
        {
            "facility": ["af", "af"],
            "id": ["s1", "s2"],
            "member_id": ["m|a", "m|b"],
            "display_name": ["Alice", "Bob"],
            "local_user": ["alice", "bob"],
            "node": ["n1", "n1"],
            "start": [T0, T0 + H],
            "end": [T0 + 1800.0, None],
        }
    )
    table = figures.sessions_table(df, now=T0 + 2.5 * H)
    assert table.columns[-1].name == "Duration [hours]"
    bob, alice = table.rows  # newest first
    assert alice == [
        "Alice",
        "af",
        "n1",
        "2026-01-01 00:00:00 UTC",
        "2026-01-01 00:30:00 UTC",
        "0.50",
    ]
    assert bob[4] == "still running"
    assert bob[5] == "1.50 (so far)"


def test_totals_tiles_per_vo() -> None:
    df = pd.DataFrame(
        {
            "vo": ["atlas", "atlas", "cms", "cms"],
            "resource": ["cpu_seconds", "sessions", "cpu_seconds", "memory_byte_seconds"],
            "amount": [9000.0, 2.0, 18000.0, 3.6e12],
            "unit": ["s", "1", "s", "B·s"],
        }
    )
    tiles = figures.totals_tiles(df, "vo")
    assert [t.key for t in tiles] == ["cms", "atlas"]  # most CPU first
    cms, atlas = (dict(t.lines) for t in tiles)
    assert cms["CPU time"] == "5.00 core-hours"
    assert cms["Resident memory x time"] == "1.00 GB-hours"
    assert cms["Sessions started and ended"] == "0 sessions"
    assert atlas["CPU time"] == "2.50 core-hours"
    assert atlas["CPU time normalised by HEPscore23"] == "0 HS23-hours"
    assert atlas["Sessions started and ended"] == "2 sessions"
    assert "Running now" not in cms  # no running sessions given
    assert figures.totals_tiles(df.iloc[0:0], "vo") == []


def test_totals_tiles_with_running_sessions() -> None:
    """Running sessions are shown as such, beside the ledger's ended ones; a key with only
    running sessions gets a tile of its own."""
    df = pd.DataFrame(
        {"vo": ["atlas"], "resource": ["cpu_seconds"], "amount": [3600.0], "unit": ["s"]}
    )
    running = pd.DataFrame(
        {"vo": ["atlas", "lhcb"], "sessions": [1, 2], "seconds": [1800.0, 9000.0]}
    )
    tiles = {t.key: dict(t.lines) for t in figures.totals_tiles(df, "vo", running=running)}
    assert tiles["atlas"]["Running now"] == "1 session, 0.50 hours so far"
    assert tiles["atlas"]["Sessions started and ended"] == "0 sessions"
    assert tiles["lhcb"]["Running now"] == "2 sessions, 2.50 hours so far"
    assert tiles["lhcb"]["CPU time"] == "0 core-hours"


def test_member_names() -> None:
    df = pd.DataFrame(
        {"member_id": ["i|a"], "display_name": ["Alice"], "vo": ["x"], "group": ["/x"]}
    )
    assert figures.member_names(df) == {"i|a": "Alice"}
