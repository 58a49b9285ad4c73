"""The APEL messages parse back field by field, carry every field the APEL server requires,
the whole month to date (across a month boundary), and equal the ground truth; v0.3 only
in HEPSPEC06."""

from __future__ import annotations

import json
from typing import Any

import pytest

from afmon.aggregator.query.reads import LOCAL_ADMIN
from afmon.aggregator.report import apel
from afmon.aggregator.report.build import build_report
from afmon.aggregator.report.week import Week
from afmon.aggregator.store.schema import UNMAPPED, Resource
from tests.report.conftest import FACILITY, PREV, WEEK, World

# the APEL server stores these NOT NULL or keys on them (tests/report/data/apel_server.sql)
MANDATORY = (
    "Site", "Month", "Year", "GlobalUserName", "VO", "VOGroup", "SubmitHost", "Infrastructure",
    "NodeCount", "Processors", "EarliestEndTime", "LatestEndTime", "WallDuration",
    "CpuDuration", "NormalisedWallDuration", "NormalisedCpuDuration", "NumberOfJobs",
)  # fmt: skip
INTEGERS = ("WallDuration", "CpuDuration", "NumberOfJobs", "NodeCount", "Processors")


def messages(world: World, week: Week, **settings: Any) -> tuple[list, list]:
    """(v0.3, v0.4) records; v0.3 in HEPSPEC06 with a factor of 1 unless told otherwise."""
    s = world.settings.model_copy(update={"report_hs06_per_hs23": 1.0, **settings})
    doc = build_report(world.query, LOCAL_ADMIN, week, s)
    h3, v03 = apel.parse_summary_message(apel.render_v03(doc).decode())
    h4, v04 = apel.parse_summary_message(apel.render_v04(doc).decode())
    assert h3 == "APEL-summary-job-message: v0.3"
    assert h4 == "APEL-normalised-summary-message: v0.4"
    return v03, v04


def marks(value: str) -> dict[str, int]:
    """A v0.4 benchmark map, `{hepspec: 5, HEPscore23: 7}` -> {"hepspec": 5, "HEPscore23": 7}."""
    return {k: int(v) for k, v in (p.split(": ") for p in value.strip("{}").split(", "))}


def by_member(records: list[dict[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
    return {(r["Month"], r["GlobalUserName"]): r for r in records}


def test_records_are_complete_and_in_whole_seconds(world: World) -> None:
    _, v04 = messages(world, WEEK)
    assert len(v04) == 2 * 6  # February and March to date, six mapped members
    for r in v04:
        assert [f for f in MANDATORY if f not in r] == [], r
        for field in INTEGERS:
            assert r[field].isdigit(), (field, r[field])
        assert r["Site"] == FACILITY and r["Year"] == "2026"
        assert r["VO"] != UNMAPPED and r["VOGroup"].startswith(f"/{r['VO']}")
        assert r["SubmitHost"] == f"{FACILITY}/interactive"
        assert (r["NodeCount"], r["Processors"]) == ("1", "0")  # one node; cores not known
        assert set(marks(r["NormalisedCpuDuration"])) == {"hepspec", "HEPscore23"}
    doc = build_report(world.query, LOCAL_ADMIN, WEEK, world.settings)
    raw = apel.render_v04(doc).decode()
    assert raw.endswith("%%\n") and raw.count("\n%%\n") == len(v04)


def test_interactive_end_times_are_hour_ends_within_the_month(world: World) -> None:
    """EarliestEndTime/LatestEndTime: the ends of the first and last hour of the member's
    interactive usage in the month to date, so within the month (its end included)."""
    _, v04 = messages(world, WEEK)
    doc = build_report(world.query, LOCAL_ADMIN, WEEK, world.settings)
    windows = {m["month_number"]: m["window"] for m in doc["month_to_date"]}
    for r in v04:
        w = windows[int(r["Month"])]
        first, last = int(r["EarliestEndTime"]), int(r["LatestEndTime"])
        assert first % 3600 == 0 and last % 3600 == 0
        assert w["start_epoch"] < first <= last <= w["end_epoch"]


def test_month_to_date_across_the_month_boundary_equals_the_truth(world: World) -> None:
    """W08 lies in February; W09 ends on Sunday 1 March. The W09 send carries all of
    February (W08 included) and March to date; the W10 send carries March only, and its
    March records still hold 1 March, which lies in the week before."""
    _, w08 = messages(world, PREV)
    _, w09 = messages(world, WEEK)
    _, w10 = messages(world, WEEK.shifted(1))
    assert {r["Month"] for r in w08} == {"2"}
    assert {r["Month"] for r in w09} == {"2", "3"}
    assert {r["Month"] for r in w10} == {"3"}
    assert by_member(w10) == {k: v for k, v in by_member(w09).items() if k[0] == "3"}
    before, now = world.expected(str(PREV)), world.expected(str(WEEK))
    feb08, all09 = by_member(w08), by_member(w09)
    for (_month, member), r in feb08.items():
        assert int(r["CpuDuration"]) == before[(member, "cpu_seconds")]
        assert int(r["WallDuration"]) == before[(member, "session_seconds")]
        assert int(r["NumberOfJobs"]) == before[(member, "sessions")]
        hs23 = marks(r["NormalisedCpuDuration"])["HEPscore23"]
        assert hs23 == round(before[(member, "cpu_hs23_seconds")])
        # February grew by W09's February days; the two months of W09 hold both weeks
        both = {
            f: int(all09[("2", member)][f]) + int(all09[("3", member)][f])
            for f in ("CpuDuration", "WallDuration", "NumberOfJobs")
        }
        assert both == {
            "CpuDuration": before[(member, "cpu_seconds")] + now[(member, "cpu_seconds")],
            "WallDuration": before[(member, "session_seconds")] + now[(member, "session_seconds")],
            "NumberOfJobs": before[(member, "sessions")] + now[(member, "sessions")],
        }
        assert int(all09[("2", member)]["CpuDuration"]) >= int(r["CpuDuration"])


def test_v04_is_hepscore23_and_v03_only_hepspec06(world: World) -> None:
    """v0.4 names its benchmark (HEPscore23; hepspec too with a factor). v0.3 has no
    benchmark name and is read as HEPSPEC06: without a factor it has no records."""
    doc = build_report(world.query, LOCAL_ADMIN, WEEK, world.settings)
    assert apel.render_v03(doc) == b"APEL-summary-job-message: v0.3\n"
    assert any("v0.3" in w for w in doc["apel"]["warnings"])
    _, plain = apel.parse_summary_message(apel.render_v04(doc).decode())
    v03, v04 = messages(world, WEEK, report_hs06_per_hs23=0.5)
    assert len(plain) == len(v03) == len(v04)
    for p, a, b in zip(plain, v03, v04, strict=True):
        for field in ("NormalisedCpuDuration", "NormalisedWallDuration"):
            hs23 = marks(p[field])["HEPscore23"]
            assert p[field] == f"{{HEPscore23: {hs23}}}"
            assert b[field] == f"{{hepspec: {a[field]}, HEPscore23: {hs23}}}"
            assert abs(int(a[field]) - hs23 * 0.5) <= 1  # HEPSPEC06 seconds
        assert {k: v for k, v in a.items() if not k.startswith("Normalised")} == {
            k: v for k, v in p.items() if not k.startswith("Normalised")
        }


def _doc_with_gpu_usage() -> dict[str, Any]:
    member = {
        "facility": "af",
        "vo": "atlas",
        "group": "/atlas/higgs",
        "member": "iss|a",
        "display_name": "A",
    }
    return {
        "month_to_date": [
            {
                "month": "2026-03",
                "year": 2026,
                "month_number": 3,
                "members": [
                    {
                        **member,
                        "usage": {
                            "gpu_allocated_seconds": 7200.0,
                            "gpu_active_seconds": 1800.0,
                            "gpu_a100_allocated_seconds": 3600,
                            "gpu_a100_active_seconds": 900,
                        },
                    },
                    {
                        **member,
                        "vo": UNMAPPED,
                        "member": "afmon:unmapped|af",
                        "usage": {"gpu_allocated_seconds": 50.0},
                    },
                ],
            }
        ]
    }


def test_accelerator_records_for_gpu_time(monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = {
        "cpu_seconds": Resource("cpu_seconds", "s", "CPU time"),
        "gpu_allocated_seconds": Resource("gpu_allocated_seconds", "s", "GPU held"),
        "gpu_active_seconds": Resource("gpu_active_seconds", "s", "GPU busy"),
    }
    monkeypatch.setattr(apel, "RESOURCES", catalog)
    msg = json.loads(apel.render_accelerator(_doc_with_gpu_usage()))
    assert msg["MessageType"] == "APEL-accelerator-message"
    [rec] = msg["Records"]  # the unmapped account is left out
    assert (rec["AvailableDuration"], rec["ActiveDuration"], rec["Type"]) == (7200, 1800, "GPU")
    assert (rec["MeasurementMonth"], rec["MeasurementYear"], rec["SiteName"]) == (3, 2026, "af")
    assert rec["Model"] is None and rec["FQAN"] == "/atlas/higgs"
    # SiteName is the APEL site once AFMON_APEL_SITE is set
    named = {**_doc_with_gpu_usage(), "apel": {"site": "GOCDB-AF", "warnings": [], "months": []}}
    assert json.loads(apel.render_accelerator(named))["Records"][0]["SiteName"] == "GOCDB-AF"
    # per model when the catalog accounts models
    catalog["gpu_a100_allocated_seconds"] = Resource("gpu_a100_allocated_seconds", "s", "A100")
    catalog["gpu_a100_active_seconds"] = Resource("gpu_a100_active_seconds", "s", "A100")
    [rec] = json.loads(apel.render_accelerator(_doc_with_gpu_usage()))["Records"]
    assert (rec["Model"], rec["AvailableDuration"], rec["ActiveDuration"]) == ("A100", 3600, 900)
    # no GPU resources: no accelerator file
    monkeypatch.setattr(apel, "RESOURCES", {"cpu_seconds": catalog["cpu_seconds"]})
    assert apel.render_accelerator(_doc_with_gpu_usage()) is None


def test_parse_refuses_a_record_without_its_end() -> None:
    with pytest.raises(ValueError, match="%%"):
        apel.parse_summary_message("APEL-summary-job-message: v0.3\nSite: x\n")
