"""Every figure of the weekly report equals the simulator's ground truth, and the levels
add up exactly (members to groups to VOs to the facility)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from afmon.aggregator import __version__
from afmon.aggregator.core import latency
from afmon.aggregator.query.reads import LOCAL_ADMIN, Principal, Query
from afmon.aggregator.report.build import NO_LATENCY, build_report
from afmon.aggregator.report.formats import render_csv, render_json
from afmon.aggregator.report.quantities import LEVELS, quantities
from afmon.aggregator.store.schema import RESOURCES
from tests.report.conftest import (
    FACILITY,
    PREV,
    QUIET_NODE,
    QUIET_TIMES,
    SILENCE_SECONDS,
    UNMAPPED_ID,
    WEEK,
    World,
)

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "report-schema.json").read_text())


@pytest.fixture(scope="module")
def doc(world: World) -> dict[str, Any]:
    return build_report(world.query, LOCAL_ADMIN, WEEK, world.settings)


def test_document_follows_the_published_schema(doc: dict[str, Any]) -> None:
    jsonschema.validate(doc, SCHEMA)
    assert doc["week"] == "2026-W09" and doc["previous_week"] == "2026-W08"
    assert doc["window"]["start"] == "2026-02-23T00:00:00Z"
    assert doc["window"]["end"] == "2026-03-02T00:00:00Z"


def test_every_member_figure_equals_the_ground_truth(world: World, doc: dict[str, Any]) -> None:
    now, before = world.expected(str(WEEK)), world.expected(str(PREV))
    rows = {r["member"]: r for r in doc["levels"]["member"]}
    assert set(rows) == {m for m, _ in now} | {m for m, _ in before}
    assert UNMAPPED_ID in rows and len(rows) == 7  # six members and the unmapped account
    checked = 0
    for member, row in rows.items():
        assert row["facility"] == FACILITY
        for r in RESOURCES:
            assert row["usage"][r] == now.get((member, r), 0.0), (member, r)
            assert row["previous"][r] == before.get((member, r), 0.0), (member, r)
            checked += bool(now.get((member, r)))
        # the hour forms: core-hours, HEPscore23-hours, GB-hours, session hours
        assert row["usage"]["cpu_hours"] == now[(member, "cpu_seconds")] / 3600
        assert row["usage"]["cpu_hs23_hours"] == now[(member, "cpu_hs23_seconds")] / 3600
        assert row["usage"]["memory_gb_hours"] == now[(member, "memory_byte_seconds")] / 3.6e12
        assert row["usage"]["session_hours"] == now[(member, "session_seconds")] / 3600
        prev_cpu = before[(member, "cpu_seconds")]
        assert row["change"]["cpu_seconds"] == round(
            (now[(member, "cpu_seconds")] - prev_cpu) / prev_cpu, 6
        )
    assert checked >= 7 * 7  # every member used all seven simulated resources


def test_csv_tables_equal_the_json_and_the_truth(world: World, doc: dict[str, Any]) -> None:
    now = world.expected(str(WEEK))
    table = list(csv.DictReader(io.StringIO(render_csv(doc, "member").decode())))
    keys = [tuple(r[k] for k in LEVELS["member"]) for r in table]
    assert keys == sorted(keys)  # rows in a fixed order
    names = [q.name for q in quantities()]
    assert list(table[0]) == [*LEVELS["member"], "display_name", *names] + [
        f"previous_{r}" for r in RESOURCES
    ]
    for r in table:
        for res in RESOURCES:
            assert float(r[res]) == now.get((r["member"], res), 0.0)
    for level in LEVELS:
        rows = list(csv.DictReader(io.StringIO(render_csv(doc, level).decode())))
        assert len(rows) == len(doc["levels"][level])
        for csv_row, json_row in zip(rows, doc["levels"][level], strict=True):
            for name in names:
                assert float(csv_row[name]) == json_row["usage"][name]


def _sum_by(rows: list[dict[str, Any]], keys: tuple[str, ...], part: str) -> dict:
    out: dict[tuple[str, ...], dict[str, float]] = {}
    for row in rows:
        acc = out.setdefault(tuple(row[k] for k in keys), {})
        for name, v in row[part].items():
            acc[name] = acc.get(name, 0.0) + v
    return out


@pytest.mark.parametrize("part", ["usage", "previous"])
def test_members_sum_to_groups_vos_and_the_facility(doc: dict[str, Any], part: str) -> None:
    levels = doc["levels"]
    for lower, upper in (("member", "group"), ("group", "vo"), ("vo", "facility")):
        keys = LEVELS[upper]
        sums = _sum_by(levels[lower], keys, part)
        totals = {tuple(r[k] for k in keys): r[part] for r in levels[upper]}
        assert sums.keys() == totals.keys()
        for key, amounts in totals.items():
            for name in RESOURCES:
                assert sums[key][name] == amounts[name], (lower, upper, key, name)
    assert levels["facility"][0]["usage"]["cpu_seconds"] > 0


def test_completeness_names_the_silent_node_and_the_unmapped_share(
    world: World, doc: dict[str, Any]
) -> None:
    c = doc["completeness"]
    assert c["silence_threshold_seconds"] == SILENCE_SECONDS
    nodes = {a["node"]: a for a in c["agents"]}
    assert set(nodes) == {"sim-node001", "sim-node002", QUIET_NODE}
    quiet = nodes[QUIET_NODE]
    assert quiet["batches"] == 1
    assert [(s["from"], s["to"]) for s in quiet["silences"]] == [
        ("2026-02-23T00:00:00Z", "2026-02-25T00:00:00Z"),
        ("2026-02-25T00:00:00Z", "2026-03-02T00:00:00Z"),
    ]
    assert quiet["silences"][0]["gap_seconds"] == QUIET_TIMES[1] - QUIET_TIMES[0]
    assert quiet["silent_seconds"] == 7 * 86400
    for node in ("sim-node001", "sim-node002"):
        assert nodes[node]["silences"] == [] and nodes[node]["batches"] == 7 * 24
    truth = world.expected(str(WEEK))
    shares = {u["resource"]: u for u in c["unmapped"]}
    for r in ("cpu_seconds", "session_seconds", "memory_byte_seconds"):
        total = sum(v for (_m, res), v in truth.items() if res == r)
        assert shares[r]["unmapped"] == truth[(UNMAPPED_ID, r)]
        assert shares[r]["total"] == total
        assert shares[r]["share"] == round(truth[(UNMAPPED_ID, r)] / total, 6)


def test_latency_percentiles_against_the_slos(world: World, doc: dict[str, Any]) -> None:
    lat = doc["latency"]
    assert lat["status"] == "ok"
    atlas001 = world.member_ids["atlas001"]
    rows = {(r["member"], r["kind"]): r for r in lat["levels"]["member"]}
    tts = rows[(atlas001, "time_to_session")]
    # waits 3, 4, 8 s: exact from the per-wait records (linear between the waits)
    assert (tts["count"], tts["p50_seconds"], tts["p95_seconds"]) == (3, 4.0, 7.6)
    assert (tts["slo_seconds"], tts["within_slo_ratio"], tts["mean_seconds"]) == (10, 1, 5)
    cms = rows[(world.member_ids["cms001"], "time_to_session")]
    assert (cms["count"], cms["within_slo_ratio"]) == (1, 0)  # 30 s: over the 10 s SLO
    ttfw = rows[(atlas001, "time_to_first_worker")]
    assert (ttfw["count"], ttfw["slo_seconds"], ttfw["within_slo_ratio"]) == (1, 60, 1)
    facility = {r["kind"]: r for r in lat["levels"]["facility"]}
    assert facility["time_to_session"]["count"] == 4
    # the week before had none
    before = build_report(world.query, LOCAL_ADMIN, PREV, world.settings)
    assert before["latency"]["status"] == NO_LATENCY


class _PerCallWaits:
    """A kind's waits as the report read them before: `latency_percentiles` per call."""

    def __init__(self, q: Query, args: tuple[Any, ...]) -> None:
        self._q, self._args = q, args

    def percentiles(self, *a: Any, **kw: Any) -> Any:
        return self._q.latency_percentiles(*self._args, *a, **kw)


class _CountingQuery:
    """`world.query`, counting its latency reads; `per_call` answers them the old way."""

    def __init__(self, q: Query, per_call: bool) -> None:
        self._q, self._per_call, self.reads = q, per_call, []

    def __getattr__(self, name: str) -> Any:
        if name in ("latency_percentiles", "latency_buckets"):
            raise AssertionError(f"the report called {name}: a read per call")
        return getattr(self._q, name)

    def latency_waits(self, p: Principal, kind: str, start: float, end: float) -> Any:
        self.reads.append(kind)
        if self._per_call:
            return _PerCallWaits(self._q, (p, kind, start, end))
        return self._q.latency_waits(p, kind, start, end)


@pytest.mark.parametrize("who", ["admin", "admin, atlas only", "cms manager", "atlas001"])
def test_latency_reads_each_kind_once_and_equals_the_query_methods(world: World, who: str) -> None:
    """The latency section reads each kind's waits once per report (not once per level and
    kind) and is exactly what `latency_percentiles` per level and kind gives."""
    principal, filters = {
        "admin": (LOCAL_ADMIN, {}),
        "admin, atlas only": (LOCAL_ADMIN, {"vo": "atlas"}),
        "cms manager": (Principal("vo_manager", vo="cms"), {}),
        "atlas001": (Principal("member", member_id=world.member_ids["atlas001"]), {}),
    }[who]
    once = _CountingQuery(world.query, per_call=False)
    doc = build_report(once, principal, WEEK, world.settings, **filters)  # type: ignore[arg-type]
    assert sorted(once.reads) == sorted(latency.KINDS)  # one read per kind
    per_call = _CountingQuery(world.query, per_call=True)
    want = build_report(per_call, principal, WEEK, world.settings, **filters)  # type: ignore[arg-type]
    assert doc["latency"] == want["latency"]
    assert render_json(doc) == render_json(want)
    assert doc["latency"]["status"] == "ok" and doc["latency"]["levels"]["member"]


def test_provenance_and_no_generation_time(world: World, doc: dict[str, Any]) -> None:
    prov = doc["provenance"]
    assert prov["afmon_version"] == __version__
    assert prov["settings"]["report_silence_seconds"] == SILENCE_SECONDS
    assert [r["name"] for r in prov["resources"]] == list(RESOURCES)
    other = build_report(
        world.query,
        LOCAL_ADMIN,
        WEEK,
        world.settings.model_copy(update={"report_hs06_per_hs23": 1.2}),
    )
    assert other["provenance"]["settings_sha256"] != prov["settings_sha256"]
    text = render_json(doc).decode()
    assert "generated" not in text
    # the only times in the body are the windows, the silences and the month windows
    assert "2026-03-0" in text and "T" in doc["window"]["start"]


def test_filters_and_principals_narrow_the_report(world: World) -> None:
    atlas = build_report(world.query, LOCAL_ADMIN, WEEK, world.settings, vo="atlas")
    assert {r["vo"] for r in atlas["levels"]["member"]} == {"atlas"}
    me = world.member_ids["cms002"]
    mine = build_report(world.query, Principal("member", member_id=me), WEEK, world.settings)
    assert [r["member"] for r in mine["levels"]["member"]] == [me]
    assert mine["completeness"]["agents"] is None  # agent liveness: facility admins only
    assert mine["scope"]["role"] == "member"
    nobody = build_report(world.query, LOCAL_ADMIN, WEEK, world.settings, facility="other-af")
    assert all(nobody["levels"][level] == [] for level in LEVELS)
