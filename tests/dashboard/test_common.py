"""Time windows and the demo-mode principal picker."""

from __future__ import annotations

import pandas as pd
import pytest

from afmon.aggregator.query.reads import LOCAL_ADMIN
from afmon.dashboard.pages import common

T0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC, a Thursday

MEMBERS = pd.DataFrame(
    {
        "member_id": ["iss-a|alice", "iss-a|carol", "iss-c|bob", "afmon:unmapped|af"],
        "display_name": ["Alice", "Carol", "Bob", "unmapped accounts at af"],
        "vo": ["atlas", "atlas", "cms", "unmapped"],
        "group": ["/atlas", "/atlas", "/cms", "unmapped"],
    }
)


def test_windows_are_aligned_to_whole_steps() -> None:
    now = T0 + 10 * 3600 + 125.0  # 10:02:05
    day = common.time_window("24h", now)
    assert (day.start, day.end, day.step) == (T0 - 13 * 3600, T0 + 11 * 3600, "hour")
    week = common.time_window("7d", now)
    assert (week.end - week.start, week.step) == (7 * 86400, "hour")
    month = common.time_window("30d", now)
    assert (month.start, month.end, month.step) == (T0 - 29 * 86400, T0 + 86400, "day")
    assert day.describe() == (
        "2025-12-31 11:00:00 UTC to 2026-01-01 11:00:00 UTC, hourly steps"
    )
    assert month.describe().endswith("daily (UTC days) steps")


def test_window_on_a_boundary_and_unknown_key() -> None:
    w = common.time_window("bogus", float(T0))
    assert (w.key, w.start, w.end) == ("24h", T0 - 23 * 3600, T0 + 3600)


def test_principal_options_leave_out_unmapped() -> None:
    options = common.principal_options(MEMBERS)
    assert [o["value"] for o in options] == [
        "admin", "vo:atlas", "vo:cms", "member:iss-a|alice", "member:iss-a|carol",
        "member:iss-c|bob",
    ]
    assert options[3]["label"] == "Member: Alice (atlas)"


def test_principal_for() -> None:
    assert common.principal_for("admin", MEMBERS) is LOCAL_ADMIN
    vo = common.principal_for("vo:cms", MEMBERS)
    assert vo is not None and (vo.role, vo.vo) == ("vo_manager", "cms")
    bob = common.principal_for("member:iss-c|bob", MEMBERS)
    assert bob is not None
    assert (bob.role, bob.member_id, bob.vo, bob.name) == ("member", "iss-c|bob", "cms", "Bob")


@pytest.mark.parametrize(
    "key", [None, "", "vo:lhcb", "vo:unmapped", "member:nobody", "member:afmon:unmapped|af", "x"]
)
def test_unknown_principals_are_nobody(key: str | None) -> None:
    assert common.principal_for(key, MEMBERS) is None
