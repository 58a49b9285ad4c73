"""The VO page's and the facility overview's callbacks as plain functions on a seeded database
(two facilities, two VOs), the CSV through Dash's callback endpoint, and the time range in the
URL."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from afmon.aggregator.core import latency
from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.identity.accounts import load_identity_file
from afmon.aggregator.query.reads import LOCAL_ADMIN, Principal, Query
from afmon.aggregator.store.db import create_schema, make_engine
from afmon.dashboard import vo_view as vv
from afmon.dashboard.app import create_dash, sync_range
from afmon.dashboard.facility_live import SLO_KINDS, live_view, slo_tiles
from afmon.dashboard.pages import common
from tests.dash_callbacks import post_callback as _call

T0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC
NOW = T0 + 10 * 3600 + 60.0
ALICE, CAROL, BOB = "iss-a|alice", "iss-a|carol", "iss-c|bob"
IDENTITY = """
[vos.atlas]
issuer = "iss-a"
[vos.cms]
issuer = "iss-c"
[[members]]
vo = "atlas"
subject = "alice"
display_name = "Alice Archer"
group = "/atlas/higgs"
accounts = [{ facility = "af-a", local = "alice" }, { facility = "af-b", local = "alice" }]
[[members]]
vo = "atlas"
subject = "carol"
display_name = "Carol Chen"
accounts = [{ facility = "af-a", local = "carol" }]
[[members]]
vo = "cms"
subject = "bob"
display_name = "Bob Brown"
accounts = [{ facility = "af-a", local = "bob" }]
"""
# (facility, vo, group, member, resource, hour offset from T0, amount)
USAGE = [
    ("af-a", "atlas", "/atlas/higgs", ALICE, "cpu_seconds", 8, 3600.0),
    ("af-a", "atlas", "/atlas/higgs", ALICE, "cpu_seconds", 9, 3600.0),
    ("af-b", "atlas", "/atlas/higgs", ALICE, "cpu_seconds", 9, 7200.0),
    ("af-a", "atlas", "/atlas", CAROL, "cpu_seconds", 9, 3600.0),
    ("af-a", "atlas", "/atlas", CAROL, "session_seconds", 9, 1800.0),
    ("af-a", "cms", "/cms", BOB, "cpu_seconds", 9, 14400.0),
    ("af-a", "cms", "/cms", BOB, "memory_byte_seconds", 9, 3600 * 8 * 2.0**30),
]


def _seed(engine: Engine, tmp: Path) -> None:
    create_schema(engine)
    (tmp / "identity.toml").write_text(IDENTITY)
    load_identity_file(engine, tmp / "identity.toml")
    with engine.begin() as conn:
        for fac, vo, grp, member, resource, h, amount in USAGE:
            conn.execute(
                text("INSERT INTO usage VALUES (:f, :vo, :g, :m, :r, :h, :a, 'x')"),
                {
                    "f": fac,
                    "vo": vo,
                    "g": grp,
                    "m": member,
                    "r": resource,
                    "h": T0 + h * 3600,
                    "a": amount,
                },
            )
        conn.execute(
            text(
                "INSERT INTO node (facility, node, cpu_cores, memory_bytes, updated) VALUES "
                "('af-a', 'n1', 64, 274877906944, :t), ('af-b', 'n2', 32, 137438953472, :t)"
            ),
            {"t": NOW},
        )
        conn.execute(
            text(
                'INSERT INTO event (facility, kind, id, node, local_user, member_id, start, "end",'
                " attrs) VALUES ('af-a', 'session', 's1', 'n1', 'bob', :bob, :s, NULL, '{}'),"
                " ('af-a', 'dask_cluster', 'd1', 'n1', 'alice', :alice, :s, NULL, '{}'),"
                " ('af-a', 'session', 's0', 'n1', 'alice', :alice, :s, :s, '{}')"
            ),
            {"bob": BOB, "alice": ALICE, "s": NOW - 600},
        )
        # time to session: 9 waits of <= 5 s and one of <= 30 s -> p95 in the 30 s bucket
        for le, count, total in ((5.0, 9, 27.0), (30.0, 1, 20.0)):
            conn.execute(
                text(
                    "INSERT INTO latency VALUES ('af-a', 'atlas', '/atlas', :m, 'time_to_session', "
                    "'default', :h, :le, :c, :s)"
                ),
                {"m": CAROL, "h": T0 + 9 * 3600, "le": le, "c": count, "s": total},
            )
        conn.execute(
            text(
                "INSERT INTO alert (rule, labels, active_since, status, severity, facility, vo, "
                "value, summary, description) VALUES ('AgentDown', '{}', :t, 'firing', "
                "'critical', 'af-a', NULL, 1, 'down', '')"
            ),
            {"t": NOW - 900},
        )


@pytest.fixture
def query(tmp_path: Path) -> Query:
    engine = make_engine(f"sqlite:///{tmp_path}/afmon.sqlite")
    _seed(engine, tmp_path)
    return Query(engine)


DAY = common.time_window("24h", NOW)


def test_vo_view_as_admin(query: Query) -> None:
    view = vv.vo_view(query, LOCAL_ADMIN, DAY, None)
    assert (view.vos, view.vo, view.groups, view.message) == (
        ["atlas", "cms"],
        "atlas",
        ["/atlas", "/atlas/higgs"],
        "",
    )
    rows = view.members[
        ["member", "group", "facilities", "cpu_seconds", "session_seconds", "share"]
    ].values.tolist()
    assert rows == [
        ["Alice Archer", "/atlas/higgs", "af-a, af-b", 4.0, 0.0, 80.0],
        ["Carol Chen", "/atlas", "af-a", 1.0, 0.5, 20.0],
    ]
    assert view.total == 18000.0 and view.active == 2
    assert view.share_of_visible == pytest.approx(100 * 5 / 9)  # atlas 5 h of 9 core-hours
    assert view.facilities.values.tolist() == [["af-a", 3.0, 60.0, 2], ["af-b", 2.0, 40.0, 1]]
    sums = {t.name: sum(t.y) for t in view.by_group.data}
    assert sums == pytest.approx({"/atlas/higgs": 4.0, "/atlas": 1.0})
    shares = view.shares.data[0]
    assert dict(zip(shares.y, shares.x, strict=True)) == pytest.approx(
        {"/atlas/higgs": 80.0, "/atlas": 20.0}
    )


def test_members_beyond_the_top_are_one_trace_and_the_stack_sums_to_the_vo(
    query: Query, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vv, "TOP_MEMBERS", 1)
    view = vv.vo_view(query, LOCAL_ADMIN, DAY, "atlas")
    sums = {t.name: sum(t.y) for t in view.by_member.data}
    assert sums == pytest.approx({"Alice Archer": 4.0, "Other members (1)": 1.0})


def test_filters_only_narrow(query: Query) -> None:
    higgs = vv.vo_view(query, LOCAL_ADMIN, DAY, "atlas", group="/atlas/higgs")
    assert higgs.members["member"].tolist() == ["Alice Archer"]
    named = vv.vo_view(query, LOCAL_ADMIN, DAY, "atlas", text="CAROL")
    assert named.members["member"].tolist() == ["Carol Chen"]
    by_id = vv.vo_view(query, LOCAL_ADMIN, DAY, "atlas", text="alice")
    assert by_id.members["member_id"].tolist() == [ALICE]
    manager = Principal("vo_manager", vo="cms", name="m")
    assert vv.vo_view(query, manager, DAY, None).vo == "cms"
    refused = vv.vo_view(query, manager, DAY, "atlas")
    assert refused.message == vv.not_allowed("atlas") and refused.members.empty
    alice = Principal("member", member_id=ALICE, vo="atlas", name="Alice Archer")
    mine = vv.vo_view(query, alice, DAY, "atlas")
    assert mine.members["member"].tolist() == ["Alice Archer"]
    assert mine.share_of_visible is None  # a member's figures are theirs, not the VO's
    cms = vv.vo_view(query, manager, DAY, None)
    assert cms.share_of == "Share of the facility"  # the VO's share of everyone's CPU time
    assert cms.share_of_visible == pytest.approx(100 * 4 / 9)
    assert vv.vo_view(query, alice, DAY, "atlas", text="carol").members.empty
    assert vv.vo_view(query, alice, DAY, "cms").message == vv.not_allowed("cms")


def test_the_csv_table_is_the_views_table(query: Query) -> None:
    """`vo_members` (the CSV download) builds only the table, and the same one."""
    for vo, group, needle in (
        ("atlas", None, ""),
        ("atlas", "/atlas/higgs", ""),
        ("atlas", None, "carol"),
    ):
        view = vv.vo_view(query, LOCAL_ADMIN, DAY, vo, group=group, text=needle)
        found = vv.vo_members(query, LOCAL_ADMIN, DAY, vo, group=group, text=needle)
        assert found is not None and found[0] == "atlas"
        assert found[1].equals(view.members)
    manager = Principal("vo_manager", vo="cms", name="m")
    assert vv.vo_members(query, manager, DAY, "atlas") is None


def test_empty_states_say_why(query: Query, tmp_path: Path) -> None:
    old = common.time_window("custom:2020-01-01:2020-01-02", NOW)
    assert (
        vv.vo_view(query, LOCAL_ADMIN, old, "atlas").message == "No usage recorded in this "
        "range yet."
    )
    empty = make_engine(f"sqlite:///{tmp_path}/empty.sqlite")
    create_schema(empty)
    assert vv.vo_view(Query(empty), LOCAL_ADMIN, DAY, None).message == vv.NO_MEMBERS
    load_identity_file(empty, tmp_path / "identity.toml")
    assert vv.vo_view(Query(empty), LOCAL_ADMIN, DAY, None).message == vv.NO_DATA_YET


def test_csv_through_the_callback_endpoint(query: Query) -> None:
    app = create_dash(query, ServerSettings(local_mode=True), clock=lambda: NOW)
    out = _call(
        app,
        ["vo-csv.data"],
        {
            "vo-csv-button.n_clicks": 1,
            "principal-picker.value": "admin",
            "range.value": "24h",
            "vo-vo.value": "atlas",
            "vo-resource.value": "cpu_seconds",
            "vo-filter.value": "",
        },
    )["vo-csv"]["data"]
    assert out["filename"] == "afmon-atlas-members-2025-12-31-24h.csv"
    rows = list(csv.DictReader(io.StringIO(out["content"])))
    assert [(r["Member"], r["Facilities"], r["CPU time [core-hours]"]) for r in rows] == [
        ("Alice Archer", "af-a, af-b", "4.0"),
        ("Carol Chen", "af-a", "1.0"),
    ]
    # a member asking for the CSV of another VO gets nothing
    refused = _call(
        app,
        ["vo-csv.data"],
        {
            "vo-csv-button.n_clicks": 1,
            "principal-picker.value": f"member:{ALICE}",
            "range.value": "24h",
            "vo-vo.value": "cms",
        },
    )
    assert "vo-csv" not in refused  # no_update: nothing is sent


def test_live_view(query: Query) -> None:
    slos = {"time_to_session": 10.0, "time_to_first_worker": 60.0}
    view = live_view(query, LOCAL_ADMIN, DAY, NOW, slos)  # last full hour: 09:00-10:00
    assert view.now.hour_start == T0 + 9 * 3600
    assert view.now.use["cores"] == pytest.approx(8.0)  # 28800 core-seconds in one hour
    assert view.now.use["memory_bytes"] == pytest.approx(8 * 2.0**30)
    assert view.now.capacity == {
        "cores": 96.0,
        "gpus": 0.0,
        "memory_bytes": 384 * 2.0**30,
        "nodes": 2.0,
    }
    assert view.open_events == {"session": 1, "dask_cluster": 1}
    session, worker = view.slos
    p95 = latency.quantile([(5.0, 9, 27.0), (30.0, 1, 20.0)], 0.95)  # within the 5-30 s bucket
    assert 10.0 < p95 <= 30.0
    assert session.tone == "bad" and ("p95", f"{p95:,.1f} s") in session.lines
    assert ("Target", "10 s: missed") in session.lines
    assert worker.tone == "muted" and worker.lines == [("", "no waits in this range")]
    assert view.alerts == 1
    assert view.top_vos.rows == [["atlas", "5.00", "55.6", "0.50"], ["cms", "4.00", "44.4", "0"]]
    bob = Principal("member", member_id=BOB, vo="cms", name="Bob")
    mine = live_view(query, bob, DAY, NOW, slos)
    assert mine.now.use["cores"] == pytest.approx(4.0) and mine.alerts is None
    assert mine.open_events == {"session": 1, "dask_cluster": 0}
    # bob's own figures, labelled as his, with his share of everyone's CPU time (4 of 9 h)
    assert mine.top_vos.rows == [["You", "4.00", "44.4", "0"]]
    assert [c.name for c in mine.top_vos.columns][:1] == [""]
    manager = live_view(query, Principal("vo_manager", vo="cms", name="m"), DAY, NOW, slos)
    assert manager.top_vos.rows == [["cms", "4.00", "44.4", "0"]]  # not 100 % of itself


class _PerCallWaits:
    """A kind's waits as the SLO tiles read them before: `latency_percentiles` per call."""

    def __init__(self, q: Query, args: tuple[Any, ...]) -> None:
        self._q, self._args = q, args

    def percentiles(self, *a: Any, **kw: Any) -> Any:
        return self._q.latency_percentiles(*self._args, *a, **kw)


class _CountingQuery:
    """`query`, counting its latency reads; `per_call` answers them the old way."""

    def __init__(self, q: Query, per_call: bool) -> None:
        self._q, self._per_call, self.reads = q, per_call, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._q, name)

    def latency_waits(self, p: Principal, kind: str, start: float, end: float) -> Any:
        self.reads.append(kind)
        if self._per_call:
            return _PerCallWaits(self._q, (p, kind, start, end))
        return self._q.latency_waits(p, kind, start, end)


def test_slo_tiles_read_each_kind_once_and_equal_the_query_method(query: Query) -> None:
    """The SLO tiles read each kind's waits once per render and show what
    `latency_percentiles` gives: per-wait records (ok and failed) mixed with histogram-only
    waits, for an admin and for members, targets met, missed and unset."""
    with query._engine.begin() as conn:  # noqa: SLF001
        for i, (kind, member, wait, attrs) in enumerate(
            [
                ("spawn", CAROL, 3.0, "{}"),
                ("spawn", CAROL, 12.5, '{"profile": "gpu"}'),
                ("spawn", ALICE, 7.0, '{"outcome": "failed"}'),
                ("spawn", BOB, 41.0, "{}"),
                ("dask_scale", ALICE, 50.0, '{"reason": "first_worker"}'),
                ("dask_scale", ALICE, 80.0, '{"reason": "first_worker"}'),
                ("dask_scale", ALICE, 20.0, '{"reason": "scale", "from": 1, "target": 4}'),
            ]
        ):
            start = T0 + 9 * 3600 + 60 * i
            conn.execute(
                text(
                    "INSERT INTO event (facility, kind, id, node, local_user, member_id, start, "
                    "\"end\", attrs) VALUES ('af-a', :k, :id, 'n1', 'x', :m, :s, :e, :a)"
                ),
                {"k": kind, "id": f"w{i}", "m": member, "s": start, "e": start + wait, "a": attrs},
            )
    bob = Principal("member", member_id=BOB, vo="cms", name="Bob")
    carol = Principal("member", member_id=CAROL, vo="atlas", name="Carol")
    targets = [
        {"time_to_session": 10.0, "time_to_first_worker": 60.0},
        {"time_to_session": 60.0, "time_to_first_worker": 90.0},
        {},
    ]
    for p in (LOCAL_ADMIN, bob, carol):
        for slos in targets:
            once = _CountingQuery(query, per_call=False)
            got = slo_tiles(once, p, DAY, slos)  # type: ignore[arg-type]
            assert once.reads == list(SLO_KINDS)  # one read per kind
            want = slo_tiles(_CountingQuery(query, per_call=True), p, DAY, slos)  # type: ignore[arg-type]
            assert got == want
    tiles = {t.key: t for t in slo_tiles(query, LOCAL_ADMIN, DAY, targets[0])}
    assert ("Waits", "2") in tiles["time_to_first_worker"].lines
    assert ("Target", "60 s: missed") in tiles["time_to_first_worker"].lines


def test_custom_windows_and_resolution() -> None:
    week = common.time_window("custom:2026-01-01:2026-01-07", NOW)
    assert (week.start, week.end, week.step, week.points) == (T0, T0 + 7 * 86400, "hour", 168)
    longer = common.time_window("custom:2026-01-01:2026-01-08", NOW)
    assert (longer.step, longer.points) == ("day", 8)
    years = common.time_window("custom:2020-01-01:2025-12-31", NOW)
    assert (years.end, years.points, years.step) == (T0, common.MAX_POINTS, "day")
    assert "Range shortened to its last 731 days" in years.describe()
    assert common.time_window("custom:2026-13-01:2026-01-02", NOW).key == "24h"
    assert common.custom_key("2026-01-09", "2026-01-02") == "custom:2026-01-02:2026-01-09"
    assert common.custom_key("yesterday", "2026-01-02") is None


def test_range_and_url_stay_in_step() -> None:
    value, options, first, last, search, *links = sync_range(
        None, "?vo=cms&range=custom&from=2026-01-01&to=2026-01-03", "24h", None, None
    )
    assert value == "custom:2026-01-01:2026-01-03" and (first, last) == ("2026-01-01", "2026-01-03")
    assert options[-1] == {"label": "Custom (below)", "value": value}
    assert links[0] == "/?range=custom&from=2026-01-01&to=2026-01-03"
    _v, _o, _f, _l, search, *_ = sync_range("range", "?vo=cms&range=24h", "7d", None, None)
    assert search == "?vo=cms&range=7d"
    value, *_rest = sync_range("range-apply", "", "7d", "2026-01-05", "2026-01-02")
    assert value == "custom:2026-01-02:2026-01-05"
    # a URL without a range keeps the one picked; a bad one is ignored
    for search in ("?vo=cms", "?range=forever", "?range=custom&from=x&to=y"):
        value, *_rest = sync_range("url", search, "7d", None, None)
        assert value is not None and not isinstance(value, str)  # no_update


def test_titles_inside_sentences_keep_their_acronyms() -> None:
    assert vv.in_sentence("CPU time") == "CPU time"
    assert vv.in_sentence("Interactive session time") == "interactive session time"
    assert dict(vv.member_columns("cpu_seconds"))["share"] == "Share of the VO's CPU time [%]"
