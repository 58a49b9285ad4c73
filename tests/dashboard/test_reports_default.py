"""The Reports page opens on the latest week with usage, not on an empty one."""

from __future__ import annotations

from pathlib import Path

from afmon.aggregator.query.reads import LOCAL_ADMIN, Principal, Query
from afmon.aggregator.report.week import Week
from afmon.aggregator.store.db import make_engine
from afmon.dashboard.pages.reports import default_week, week_options
from tests.dashboard.test_vo_view import ALICE, NOW, T0, _seed

LATER = NOW + 5 * 7 * 86400  # five weeks after the only usage


def test_the_latest_week_with_usage(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/afmon.sqlite")
    _seed(engine, tmp_path)
    q = Query(engine)
    before = Week.last_complete(LATER).end
    assert q.last_usage_hour(LOCAL_ADMIN, before) == T0 + 9 * 3600
    assert q.last_usage_hour(Principal("member", member_id=ALICE), before) == T0 + 9 * 3600
    assert q.last_usage_hour(Principal("vo_manager", vo="lhcb"), before) is None
    assert q.last_usage_hour(LOCAL_ADMIN, T0) is None  # nothing before the first hour

    options = week_options(LATER)
    week, hint = default_week(options, q.last_usage_hour(LOCAL_ADMIN, before))
    assert week == str(Week.containing(T0 + 9 * 3600)) != options[0]["value"]
    assert week in {o["value"] for o in options}
    assert hint == f"Opened on {week}, the latest week with usage: the weeks after it are empty."


def test_the_newest_week_when_it_has_usage_or_none_has() -> None:
    options = week_options(NOW + 7 * 86400)
    newest = options[0]["value"]
    inside = Week.last_complete(NOW + 7 * 86400).start + 3600
    assert default_week(options, inside) == (newest, "")
    assert default_week(options, None) == (newest, "No usage is recorded in the last 12 weeks.")
    too_old = Week.containing(NOW).start - 20 * 7 * 86400  # older than the weeks offered
    assert default_week(options, too_old) == default_week(options, None)
