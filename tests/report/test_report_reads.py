"""The report's reads: the APEL interactive end times looked up per key equal the month's
hourly rows grouped, and reading concurrently gives the same document, each total once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from afmon.aggregator.query.reads import LOCAL_ADMIN, Principal, Query
from afmon.aggregator.report import apel_inputs, build
from afmon.aggregator.report.build import build_report
from afmon.aggregator.report.formats import render_json
from afmon.aggregator.report.quantities import LEVELS
from afmon.aggregator.store.db import create_schema, make_engine, read_connection
from afmon.aggregator.store.rollup import backfill_daily
from afmon.aggregator.store.schema import RESOURCES, UNMAPPED
from tests.report.conftest import WEEK, World

HOUR = 3600
START = 1_790_000_000 // 86400 * 86400  # a midnight
END = START + 10 * 86400


def _ledger(path: Path) -> Query:
    """Members with interactive hours, zero hours at the edges, a second group for one
    member, non-interactive use only, rows outside the window and an unmapped account."""
    engine = make_engine(f"sqlite:///{path}")
    create_schema(engine)
    rows = []

    def use(f: str, vo: str, g: str, m: str, r: str, hours: range, amount: float = 1.0) -> None:
        rows.extend((f, vo, g, m, r, START + h * HOUR, amount, RESOURCES[r].unit) for h in hours)

    use("af-a", "atlas", "/atlas/g0", "a|1", "cpu_seconds", range(5, 40, 3))
    use("af-a", "atlas", "/atlas/g0", "a|1", "cpu_seconds", range(0, 5), amount=0.0)
    use("af-a", "atlas", "/atlas/g0", "a|1", "session_seconds", range(41, 60))
    use("af-a", "atlas", "/atlas/g1", "a|1", "sessions", range(100, 101))  # moved group
    use("af-b", "atlas", "/atlas/g0", "a|1", "cpu_seconds", range(200, 230))  # other facility
    use("af-a", "cms", "/cms/g0", "c|1", "memory_byte_seconds", range(0, 100))  # not interactive
    use("af-a", "cms", "/cms/g0", "c|2", "session_seconds", range(-30, 10))  # before the window
    use("af-a", "cms", "/cms/g0", "c|2", "session_seconds", range(239, 260))  # and after it
    use("af-a", "cms", "/cms/g0", "c|3", "cpu_seconds", range(230, 240), amount=0.0)  # zeros
    use("af-a", UNMAPPED, UNMAPPED, "afmon:unmapped|af-a", "cpu_seconds", range(0, 50))
    with engine.begin() as conn:
        conn.connection.driver_connection.cursor().executemany(
            "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
        )
        backfill_daily(conn)  # the daily rollup the usage totals read whole days from
    return Query(engine)


def grouped(q: Query, p: Principal, facility: str | None, vo: str | None) -> dict[Any, Any]:
    """The end times by grouping the window's hourly rows (how they were read before)."""
    cond, params = apel_inputs.scope_sql(p)
    extra, more = apel_inputs._filters(facility, vo, "facility", "vo")
    sql = (
        "SELECT facility, vo, grp, member_id, MIN(hour), MAX(hour) FROM usage "
        "WHERE resource IN ('session_seconds', 'sessions', 'cpu_seconds') AND hour >= :s "
        f"AND hour < :e AND amount <> 0 AND vo <> :u AND {cond}{extra} "
        "GROUP BY facility, vo, grp, member_id"
    )
    with read_connection(q._engine) as conn:
        found = conn.execute(text(sql), {"s": START, "e": END, "u": UNMAPPED, **params, **more})
        return {tuple(r[:4]): (r[4] + HOUR, r[5] + HOUR) for r in found}


@pytest.mark.parametrize(
    ("principal", "facility", "vo"),
    [
        (LOCAL_ADMIN, None, None),
        (LOCAL_ADMIN, "af-a", None),
        (LOCAL_ADMIN, None, "cms"),
        (Principal("vo_manager", vo="atlas"), None, None),
        (Principal("member", member_id="c|2"), None, None),
        (Principal("facility_admin", facility="af-b"), None, None),
    ],
)
def test_interactive_end_times_equal_the_grouped_hours(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    principal: Principal,
    facility: str | None,
    vo: str | None,
) -> None:
    q = _ledger(tmp_path / "ledger.sqlite")
    keys = [
        tuple(k)
        for k in q.usage_totals(LOCAL_ADMIN, START, END)[list(LEVELS["member"])]
        .drop_duplicates()
        .itertuples(index=False)
    ]
    assert len(keys) == 7  # every key with rows in the window, unmapped included
    monkeypatch.setattr(apel_inputs, "KEYS_PER_READ", 2)  # several reads of a few keys
    got = apel_inputs.interactive_bounds(q, principal, START, END, keys, facility, vo)
    assert got == grouped(q, principal, facility, vo)
    if principal is LOCAL_ADMIN and facility is None and vo is None:
        assert got[("af-a", "atlas", "/atlas/g0", "a|1")] == (START + 6 * HOUR, START + 60 * HOUR)
        assert ("af-a", "cms", "/cms/g0", "c|1") not in got  # no interactive use
        assert ("af-a", "cms", "/cms/g0", "c|3") not in got  # only zeros
        assert got[("af-a", "cms", "/cms/g0", "c|2")] == (START + HOUR, END)


def test_reading_concurrently_gives_the_same_document_and_reads_each_total_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    usage_totals = world.query.usage_totals

    def counted(p: Principal, start: float, end: float, by: tuple[str, ...] = ()) -> Any:
        calls.append((start, end, by))
        return usage_totals(p, start, end, by=by)

    monkeypatch.setattr(world.query, "usage_totals", counted)
    together = render_json(build_report(world.query, LOCAL_ADMIN, WEEK, world.settings))
    # both weeks per level, and each month the week touches; no window read twice
    assert len(calls) == len(set(calls)) == 2 * len(LEVELS) + len(WEEK.months())
    monkeypatch.setattr(build, "READERS", 1)
    assert render_json(build_report(world.query, LOCAL_ADMIN, WEEK, world.settings)) == together
