"""Colours keyed by name, the "others" fold, and the formatting helpers, without a browser."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from afmon.aggregator.query.reads import OTHERS
from afmon.dashboard import colours, figures
from afmon.dashboard.colours import OTHERS_COLOUR, PALETTE, assign, chart_colours
from afmon.dashboard.pages.alerts import alert_value
from afmon.dashboard.pages.interactive import natural_key, profile_label
from afmon.dashboard.vo_view import round_shown

T0 = 1_767_225_600  # 2026-01-01 00:00 UTC


def test_a_name_has_one_colour_whatever_else_is_shown() -> None:
    vos = ["atlas", "cms", "lhcb", "dune", "alice", "belle2", "unmapped"]
    every = assign(vos)
    assert len(set(every.values())) == len(vos) and set(every.values()) <= set(PALETTE)
    assert assign(reversed(vos)) == every  # order does not matter, only the names
    # a chart of some of them keeps each one's colour
    assert chart_colours(["cms", "atlas"], every) == {"atlas": every["atlas"], "cms": every["cms"]}
    assert chart_colours(["lhcb"], every) == {"lhcb": every["lhcb"]}
    # the preferred slot is a stable hash of the name: the same in every process
    assert colours.slot("atlas") == colours.slot("atlas") and 0 <= colours.slot("x") < len(PALETTE)


def test_no_chart_repeats_a_colour() -> None:
    names = [f"member-{i}" for i in range(40)]
    every = assign(names)  # more names than colours: some share one in the map
    assert len(set(every.values())) == len(PALETTE)
    for start in range(0, 40 - len(PALETTE)):
        shown = names[start : start + len(PALETTE)]
        chart = chart_colours(shown, every)
        assert sorted(chart) == sorted(shown)
        assert len(set(chart.values())) == len(shown)  # distinct within the chart


def _usage(members: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "time": pd.to_datetime([T0] * members, unit="s", utc=True),
            "member": [f"m{i:02d}" for i in range(members)],
            "amount": [3600.0 * (i + 1) for i in range(members)],
            "unit": "s",
        }
    )


def test_a_chart_with_more_keys_than_colours_folds_the_smallest_into_others() -> None:
    df = _usage(11)
    fig = figures.usage_figure(df, "cpu_seconds", "member", T0, T0 + 3600, "hour")
    traces = {t["name"]: (t["marker"]["color"], sum(t["y"])) for t in fig.data}
    assert len(traces) == len(PALETTE) + 1
    others = traces.pop("Others (3)")
    assert others == (OTHERS_COLOUR, pytest.approx(1.0 + 2.0 + 3.0))  # the three smallest
    assert len({c for c, _y in traces.values()}) == len(PALETTE)
    assert sum(y for _c, y in traces.values()) + others[1] == pytest.approx(sum(range(1, 12)))
    # a query's own OTHERS is one trace with the keys folded here, under the caller's label
    mine = pd.concat([df, df.head(1).assign(member=OTHERS, amount=7200.0)], ignore_index=True)
    fig = figures.usage_figure(
        mine, "cpu_seconds", "member", T0, T0 + 3600, "hour", names={OTHERS: "Other members"}
    )
    sums = {t["name"]: sum(t["y"]) for t in fig.data}
    assert sums["Other members"] == pytest.approx(6.0 + 2.0)
    assert fig.data[-1]["marker"]["color"] == OTHERS_COLOUR  # drawn last, on top


def test_the_colour_map_given_wins() -> None:
    df = _usage(2)
    fig = figures.usage_figure(
        df, "cpu_seconds", "member", T0, T0 + 3600, "hour", colours={"m00": PALETTE[5]}
    )
    by_name = {t["name"]: t["marker"]["color"] for t in fig.data}
    assert by_name["m00"] == PALETTE[5] and by_name["m01"] != PALETTE[5]


def test_small_numbers_are_never_zero() -> None:
    assert figures.fmt_plain(0.00023456) == "0.00023"
    assert figures.fmt_plain(0.5) == "0.50" and figures.fmt_plain(0) == "0"
    assert figures.fmt_plain(0.009999) == "0.01"  # rounds up to the 2-decimal range
    assert figures.fmt_number(2.0e-7, "core-hours") == "0.0000002 core-hours"
    shown = round_shown(np.array([0.0, 0.00023456, 2.456, 1234.5678]))
    assert shown.tolist() == [0.0, 0.00023, 2.46, 1234.57]


def test_profiles_sort_naturally_and_read_well() -> None:
    names = ["16 cores, 64 GiB", "2 cores, 8 GiB", "1 cores, 4 GiB", "dask-default"]
    assert [profile_label(n) for n in sorted(names, key=natural_key)] == [
        "1 core, 4 GiB",
        "2 cores, 8 GiB",
        "16 cores, 64 GiB",
        "dask-default",
    ]
    assert profile_label("11 cores") == "11 cores" and profile_label("1 GPUs") == "1 GPU"


@pytest.mark.parametrize(
    ("signal", "value", "shown"),
    [
        ("agent_silence_seconds", 660.0, "11.0 min"),
        ("time_to_session_p95_seconds", 12.5, "12.5 s"),
        ("tsdb_outbox_age_seconds", 9000.0, "2.5 h"),
        ("unmapped_usage_ratio", 0.125, "12.5 %"),
        ("gpu_hoarders", 2.0, "2 members"),
        ("gpu_idle_held", 1.0, "1 idle GPU"),
        ("ingest_rejected_batches", 3.0, "3 batches"),
        (None, 1.23456, "1.235"),
    ],
)
def test_alert_values_have_units(signal: str | None, value: float, shown: str) -> None:
    assert alert_value(signal, value) == shown
