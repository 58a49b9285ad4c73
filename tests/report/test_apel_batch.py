"""APEL batch summaries from the jobs themselves: one per month of the jobs' end, member, node
count and processors, with the first and last end, equal to the jobs sent; interactive
summaries with the ends of their first and last hour; every field the APEL server stores
NOT NULL present."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from afmon.aggregator.query.reads import Principal
from afmon.aggregator.report import apel
from afmon.aggregator.report.apel_inputs import count_hosts, node_count, processors
from tests.report.apel_world import (
    ALICE,
    BOB,
    DEFAULT_HS23,
    FACILITY,
    JOBS,
    NODE_HS23,
    WEEK,
    BatchWorld,
    build_world,
    t,
)

# what the APEL server's NormalisedSummaries table stores NOT NULL or keys on, as message fields
REQUIRED = (
    "Site", "Month", "Year", "GlobalUserName", "VO", "VOGroup", "SubmitHost", "Infrastructure",
    "NodeCount", "Processors", "EarliestEndTime", "LatestEndTime", "WallDuration",
    "CpuDuration", "NormalisedWallDuration", "NormalisedCpuDuration", "NumberOfJobs",
)  # fmt: skip
USERS = {"alice": ALICE, "bob": BOB}


@pytest.fixture(scope="module")
def bw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchWorld]:
    world = build_world(tmp_path_factory.mktemp("apel-batch"))
    try:
        yield world
    finally:
        world.client.close()


def v04(doc: dict[str, Any]) -> list[dict[str, str]]:
    header, records = apel.parse_summary_message(apel.render_v04(doc).decode())
    assert header == apel.V04_HEADER
    return records


def hs23(value: str) -> int:
    """The HEPscore23 figure of a v0.4 benchmark map."""
    marks = dict(p.split(": ") for p in value.strip("{}").split(", "))
    return int(marks["HEPscore23"])


def truth(window_start: float, window_end: float) -> dict[tuple, dict[str, float]]:
    """The jobs of mapped members that ended in the window, summed per APEL key."""
    out: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    ends: dict[tuple, list[float]] = defaultdict(list)
    for j in JOBS:
        if j.user not in USERS or not window_start <= j.end < window_end:
            continue
        key = (USERS[j.user], str(j.node_count), str(j.cores))
        factor = NODE_HS23.get(j.node, DEFAULT_HS23)
        s = out[key]
        s["NumberOfJobs"] += 0 if j.requeued else 1
        s["WallDuration"] += j.wall
        s["CpuDuration"] += j.cpu
        s["NormalisedWallDuration"] += j.wall * factor
        s["NormalisedCpuDuration"] += j.cpu * factor
        ends[key].append(j.end)
    for key, s in out.items():
        s["EarliestEndTime"], s["LatestEndTime"] = min(ends[key]), max(ends[key])
    return out


def batch_records(records: list[dict[str, str]], month: str) -> dict[tuple, dict[str, str]]:
    return {
        (r["GlobalUserName"], r["NodeCount"], r["Processors"]): r
        for r in records
        if r["SubmitHost"] == f"{FACILITY}/batch" and r["Month"] == month
    }


def test_hostlists_and_attributes_give_node_count_and_processors() -> None:
    assert count_hosts("n1") == 1
    assert count_hosts("n[1-2]") == 2
    assert count_hosts("c[01-03,7],gpu1") == 5
    assert count_hosts("r[1-2]-n[1-4]") == 8
    assert count_hosts("None assigned") == 0 and count_hosts("") == 0
    assert node_count({"nodes": "a[1-3],b2"}) == 4
    assert node_count({"nodes": 6}) == 6
    assert node_count({}) == 1 and node_count({"nodes": "None assigned"}) == 1
    assert processors({"cores": 16}) == 16 and processors({}) == 1


def test_batch_summaries_per_month_of_end_and_key_equal_the_jobs(bw: BatchWorld) -> None:
    records = v04(bw.doc())
    for month, (lo, hi) in (("2", (t(1, 0), t(1, 0, month=3))), ("3", (t(1, 0, 3), WEEK.end))):
        got, want = batch_records(records, month), truth(lo, hi)
        assert set(got) == set(want), month
        for key, r in got.items():
            w = want[key]
            assert int(r["NumberOfJobs"]) == w["NumberOfJobs"]
            assert int(r["WallDuration"]) == round(w["WallDuration"])
            assert int(r["CpuDuration"]) == round(w["CpuDuration"])
            assert hs23(r["NormalisedWallDuration"]) == round(w["NormalisedWallDuration"])
            assert hs23(r["NormalisedCpuDuration"]) == round(w["NormalisedCpuDuration"])
            assert int(r["EarliestEndTime"]) == w["EarliestEndTime"]
            assert int(r["LatestEndTime"]) == w["LatestEndTime"]
    feb = batch_records(records, "2")
    # alice's single-node 4-core jobs: two, a requeued run (usage, not a job) and one of 3 Feb
    assert feb[(ALICE, "1", "4")]["NumberOfJobs"] == "3"
    assert feb[(ALICE, "1", "4")]["EarliestEndTime"] == str(int(t(3, 6)))
    assert feb[(ALICE, "2", "8")]["NodeCount"] == "2"  # n[1-2]
    assert feb[(BOB, "1", "2")]["VO"] == "cms"  # HTCondor: no node list, one node
    # the job over the month boundary belongs to March, the month it ended in
    assert batch_records(records, "3")[(ALICE, "1", "4")]["WallDuration"] == "14400"
    assert all(r["GlobalUserName"] != "nobody" and r["VO"] != "unmapped" for r in records)


def test_every_record_has_what_the_server_stores_not_null(bw: BatchWorld) -> None:
    records = v04(bw.doc())
    assert {r["SubmitHost"] for r in records} == {f"{FACILITY}/batch", f"{FACILITY}/interactive"}
    for r in records:
        assert [f for f in REQUIRED if f not in r] == [], r
        month = datetime(int(r["Year"]), int(r["Month"]), 1, tzinfo=UTC).timestamp()
        nxt = t(1, 0, month=int(r["Month"]) + 1)
        assert month <= int(r["EarliestEndTime"]) <= int(r["LatestEndTime"]) <= nxt
        assert int(r["NodeCount"]) >= 1 and int(r["Processors"]) >= 0


def test_interactive_summaries_end_with_their_first_and_last_hour(bw: BatchWorld) -> None:
    got = {r["Month"]: r for r in v04(bw.doc()) if r["SubmitHost"] == f"{FACILITY}/interactive"}
    assert set(got) == {"2", "3"}  # alice only; the late session counts in both months
    feb, mar = got["2"], got["3"]
    assert (feb["NodeCount"], feb["Processors"]) == ("1", "0")
    assert int(feb["EarliestEndTime"]) == t(24, 10)  # the hour 09:00-10:00 of the first session
    assert int(feb["LatestEndTime"]) == t(1, 0, month=3)  # 23:00-24:00 on 28 February
    assert int(mar["EarliestEndTime"]) == int(mar["LatestEndTime"]) == t(1, 1, month=3)
    assert int(feb["WallDuration"]) == 2.5 * 3600 + 3600 and int(mar["WallDuration"]) == 3600


def test_batch_figures_add_up_to_the_ledger(bw: BatchWorld) -> None:
    """Over both months of the week the jobs are the ledger's (none crosses the window's
    edges): APEL's per-core normalised wall x Processors is the ledger's core-normalised
    wall, and jobs, wall, CPU and normalised CPU are the same sums."""
    doc = bw.doc()
    records = v04(doc)
    ledger: dict[str, float] = defaultdict(float)
    for month in doc["month_to_date"]:
        for m in month["members"]:
            if m["member"] == ALICE:
                for k, v in m["usage"].items():
                    ledger[k] += v
    mine = [r for r in records if r["GlobalUserName"] == ALICE and "batch" in r["SubmitHost"]]
    assert sum(int(r["NumberOfJobs"]) for r in mine) == ledger["batch_jobs"]
    assert sum(int(r["WallDuration"]) for r in mine) == ledger["batch_job_seconds"]
    assert sum(int(r["CpuDuration"]) for r in mine) == ledger["batch_cpu_seconds"]
    assert sum(hs23(r["NormalisedCpuDuration"]) for r in mine) == ledger["batch_cpu_hs23_seconds"]
    assert (
        sum(hs23(r["NormalisedWallDuration"]) * int(r["Processors"]) for r in mine)
        == ledger["batch_wall_core_hs23_seconds"]
    )


def test_the_next_week_resends_march_with_the_later_job(bw: BatchWorld) -> None:
    records = v04(bw.doc(WEEK.shifted(1)))
    assert {r["Month"] for r in records} == {"3"}
    mar = batch_records(records, "3")[(ALICE, "1", "4")]
    late = next(j for j in JOBS if j.id == "slurm:c:8")
    assert int(mar["NumberOfJobs"]) == 2 and int(mar["LatestEndTime"]) == late.end


def test_a_member_sees_only_their_own_summaries(bw: BatchWorld) -> None:
    doc = bw.doc(principal=Principal(role="member", member_id=BOB))
    records = v04(doc)
    assert records and {r["GlobalUserName"] for r in records} == {BOB}
    assert all(row["member"] == BOB for m in doc["apel"]["months"] for row in m["batch"])
    assert v04(bw.doc(principal=Principal(role="vo_manager", vo="atlas"))) == [
        r for r in v04(bw.doc()) if r["VO"] == "atlas"
    ]


def test_site_is_the_gocdb_name_once_set(bw: BatchWorld) -> None:
    unset = bw.doc()
    assert {r["Site"] for r in v04(unset)} == {FACILITY}
    assert unset["apel"]["site"] is None
    assert any("AFMON_APEL_SITE" in w for w in unset["apel"]["warnings"])
    named = bw.doc(apel_site="UKI-EXAMPLE-AF")
    assert {r["Site"] for r in v04(named)} == {"UKI-EXAMPLE-AF"}
    assert not any("AFMON_APEL_SITE" in w for w in named["apel"]["warnings"])
    # the site changes nothing but Site
    strip = [{k: v for k, v in r.items() if k != "Site"} for r in v04(unset)]
    assert strip == [{k: v for k, v in r.items() if k != "Site"} for r in v04(named)]


def test_v03_is_hepspec06_or_has_no_records(bw: BatchWorld) -> None:
    plain = bw.doc()
    assert apel.render_v03(plain) == (apel.V03_HEADER + "\n").encode()
    assert any("v0.3" in w for w in plain["apel"]["warnings"])
    with_factor = bw.doc(report_hs06_per_hs23=0.8)
    assert not any("v0.3" in w for w in with_factor["apel"]["warnings"])
    header, v03 = apel.parse_summary_message(apel.render_v03(with_factor).decode())
    assert header == apel.V03_HEADER
    four = v04(with_factor)
    assert len(v03) == len(four)
    for a, b in zip(v03, four, strict=True):
        # same key and raw figures; normalised: HEPscore23 x HEPSPEC06 per HEPscore23
        assert {k: v for k, v in a.items() if "Normalised" not in k} == {
            k: v for k, v in b.items() if "Normalised" not in k
        }
        marks = dict(p.split(": ") for p in b["NormalisedCpuDuration"].strip("{}").split(", "))
        assert a["NormalisedCpuDuration"] == marks["hepspec"]
        assert abs(int(a["NormalisedCpuDuration"]) - 0.8 * int(marks["HEPscore23"])) <= 1


def test_same_data_same_bytes(bw: BatchWorld) -> None:
    assert apel.render_v04(bw.doc()) == apel.render_v04(bw.doc())


def test_postgresql_gives_the_same_apel_section(
    bw: BatchWorld, pg_url: str, tmp_path: Path
) -> None:
    """The reads of apel_inputs on the other ledger backend: the same section, the same bytes."""
    pg = build_world(tmp_path, pg_url)
    try:
        assert pg.doc()["apel"] == bw.doc()["apel"]
        assert apel.render_v04(pg.doc()) == apel.render_v04(bw.doc())
    finally:
        pg.client.close()
        pg.client.app.state.services.engine.dispose()
