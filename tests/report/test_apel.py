"""The APEL messages parse back field by field, carry the whole month to date (across a
month boundary), and equal the ground truth."""

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

MANDATORY = (
    "Site",
    "Month",
    "Year",
    "WallDuration",
    "CpuDuration",
    "NormalisedWallDuration",
    "NormalisedCpuDuration",
    "NumberOfJobs",
)
DURATIONS = ("WallDuration", "CpuDuration", "NormalisedWallDuration", "NormalisedCpuDuration")


def messages(world: World, week: Week, **settings: Any) -> tuple[list, list]:
    s = world.settings.model_copy(update=settings)
    doc = build_report(world.query, LOCAL_ADMIN, week, s)
    h3, v03 = apel.parse_summary_message(apel.render_v03(doc).decode())
    h4, v04 = apel.parse_summary_message(apel.render_v04(doc).decode())
    assert h3 == "APEL-summary-job-message: v0.3"
    assert h4 == "APEL-normalised-summary-message: v0.4"
    return v03, v04


def by_member(records: list[dict[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
    return {(r["Month"], r["GlobalUserName"]): r for r in records}


def test_records_are_complete_and_in_whole_seconds(world: World) -> None:
    v03, _ = messages(world, WEEK)
    assert len(v03) == 2 * 6  # February and March to date, six mapped members
    for r in v03:
        for field in MANDATORY:
            assert field in r, field
        for field in DURATIONS + ("NumberOfJobs",):
            assert r[field].isdigit(), (field, r[field])
        assert r["Site"] == FACILITY and r["Year"] == "2026"
        assert r["VO"] != UNMAPPED and r["VOGroup"].startswith(f"/{r['VO']}")
        assert r["SubmitHost"] == f"{FACILITY}/interactive"
    raw = apel.render_v03(build_report(world.query, LOCAL_ADMIN, WEEK, world.settings)).decode()
    assert raw.endswith("%%\n") and raw.count("\n%%\n") == len(v03)


def test_month_to_date_across_the_month_boundary_equals_the_truth(world: World) -> None:
    """W08 lies in February; W09 ends on Sunday 1 March. The W09 send carries all of
    February (W08 included) and March to date; the W10 send carries March only, and its
    March records still hold 1 March, which lies in the week before."""
    w08, _ = messages(world, PREV)
    w09, _ = messages(world, WEEK)
    w10, _ = messages(world, WEEK.shifted(1))
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
        assert int(r["NormalisedCpuDuration"]) == round(before[(member, "cpu_hs23_seconds")])
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


def test_v04_has_the_benchmarks_and_hepspec_only_with_a_factor(world: World) -> None:
    v03, v04 = messages(world, WEEK)
    for a, b in zip(v03, v04, strict=True):
        assert b["NormalisedCpuDuration"] == "{HEPscore23: " + a["NormalisedCpuDuration"] + "}"
        assert b["NormalisedWallDuration"] == "{HEPscore23: " + a["NormalisedWallDuration"] + "}"
        assert {k: v for k, v in a.items() if not k.startswith("Normalised")} == {
            k: v for k, v in b.items() if not k.startswith("Normalised")
        }
    _, with_hs06 = messages(world, WEEK, report_hs06_per_hs23=0.5)
    for a, b in zip(v03, with_hs06, strict=True):
        hs23 = int(a["NormalisedCpuDuration"])
        assert b["NormalisedCpuDuration"] == f"{{hepspec: {round(hs23 * 0.5)}, HEPscore23: {hs23}}}"


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
