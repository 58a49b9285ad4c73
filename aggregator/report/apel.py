"""APEL renderings of the report's month to date (../shared REFERENCE: APEL).

- v0.4 normalised summary (`APEL-normalised-summary-message: v0.4`): normalised durations as
  a map of benchmarks, `{HEPscore23: N}` (and `hepspec` when AFMON_REPORT_HS06_PER_HS23 is
  set); the repository stores the benchmark (ServiceLevelType `hepscore23`) with the record.
- v0.3 normalised summary (`APEL-summary-job-message: v0.3`): plain integers that a
  repository reads as HEPSPEC06. afmon measures HEPscore23, so v0.3 carries records only with
  a HEPSPEC06-per-HEPscore23 factor (AFMON_REPORT_HS06_PER_HS23); without one it is the bare
  header, and the report's `apel.warnings` says why.
- draft accelerator records (JSON) for GPU time, when the resource catalog has GPU
  resources (allocated = AvailableDuration, active = ActiveDuration).

Every summary carries what the APEL server stores NOT NULL or keys on (docs/report.md, APEL
mapping): Site (AFMON_APEL_SITE, else the facility), Month, Year, GlobalUserName, VO,
VOGroup, SubmitHost, Infrastructure, NodeCount, Processors, EarliestEndTime, LatestEndTime,
the four durations in whole seconds and NumberOfJobs. Two kinds, told apart by SubmitHost:
`<facility>/interactive` from the ledger's month to date (NodeCount 1, Processors 0: a
session runs on one node, its cores are not known), and `<facility>/batch` from the batch
jobs that ended in the month, per node count and processors (`apel_inputs`). The server
replaces a summary with the same key, so each message carries every month the report's week
touches from its first day to the end of the week. Unmapped usage has no VO and is left out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from afmon.aggregator.store.schema import RESOURCES, UNMAPPED

V03_HEADER = "APEL-summary-job-message: v0.3"
V04_HEADER = "APEL-normalised-summary-message: v0.4"
ACCELERATOR_TYPE = "APEL-accelerator-message"
INFRASTRUCTURE = "afmon"
# the interactive summary's ledger resources: wall, jobs, CPU and HEPscore23-normalised CPU
INTERACTIVE = ("session_seconds", "sessions", "cpu_seconds", "cpu_hs23_seconds")
_MODEL = re.compile(r"^gpu_([a-z0-9]+)_allocated_seconds$")


@dataclass(frozen=True)
class Summary:
    """One APEL summary: its key and its sums (seconds; HEPscore23-seconds when normalised)."""

    site: str
    month: int
    year: int
    member: str
    vo: str
    group: str
    submit_host: str
    node_count: int
    processors: int
    earliest_end: int
    latest_end: int
    wall: float
    cpu: float
    norm_wall: float
    norm_cpu: float
    jobs: float


def _seconds(x: float) -> int:
    return int(round(x))


def gpu_resources() -> tuple[str | None, str | None]:
    """(allocated, active) GPU time resources of the catalog; None where absent."""
    names = set(RESOURCES)
    allocated = "gpu_allocated_seconds" if "gpu_allocated_seconds" in names else None
    active = "gpu_active_seconds" if "gpu_active_seconds" in names else None
    return allocated, active


def gpu_models() -> list[tuple[str, str, str]]:
    """(model, allocated, active) for each GPU model the catalog accounts separately."""
    out = []
    for name in RESOURCES:
        m = _MODEL.match(name)
        active = f"gpu_{m.group(1)}_active_seconds" if m else ""
        if m and active in RESOURCES:
            out.append((m.group(1).upper(), name, active))
    return out


def site_of(doc: dict[str, Any], facility: str) -> str:
    """The APEL Site: AFMON_APEL_SITE (the GOCDB name), else the facility."""
    return doc.get("apel", {}).get("site") or facility


def _interactive(
    doc: dict[str, Any], month: dict[str, Any], bounds: dict[tuple[str, ...], dict[str, Any]]
) -> list[Summary]:
    """Per mapped member: sessions and the host CPU of the month's hours. Normalised wall =
    wall x the member's CPU-weighted HEPscore23 per core (the default without CPU)."""
    default_hs23 = float(doc["provenance"]["settings"]["default_hepscore23_per_core"])
    window_end = int(month["window"]["end_epoch"])
    out = []
    for m in month["members"]:
        if m["vo"] == UNMAPPED:
            continue
        wall, jobs, cpu, cpu_hs23 = (float(m["usage"].get(r, 0)) for r in INTERACTIVE)
        if not (wall or jobs or cpu):
            continue
        # the ends of its first and last usage hour (apel_inputs); a document without them
        # (made by hand) gets the end of the month's window, the end of what it sums
        b = bounds.get((m["facility"], m["vo"], m["group"], m["member"]), {})
        out.append(
            Summary(
                site=site_of(doc, m["facility"]),
                month=month["month_number"],
                year=month["year"],
                member=m["member"],
                vo=m["vo"],
                group=m["group"],
                submit_host=f"{m['facility']}/interactive",
                node_count=1,
                processors=0,
                earliest_end=int(b.get("earliest_end", window_end)),
                latest_end=int(b.get("latest_end", window_end)),
                wall=wall,
                cpu=cpu,
                norm_wall=wall * (cpu_hs23 / cpu if cpu else default_hs23),
                norm_cpu=cpu_hs23,
                jobs=jobs,
            )
        )
    return out


def _batch(doc: dict[str, Any], month: dict[str, Any], rows: list[dict[str, Any]]) -> list[Summary]:
    """Per mapped member, node count and processors: the batch jobs that ended in the month.
    Normalised wall = wall x HEPscore23 per core (APEL's; x Processors gives core time)."""
    return [
        Summary(
            site=site_of(doc, r["facility"]),
            month=month["month_number"],
            year=month["year"],
            member=r["member"],
            vo=r["vo"],
            group=r["group"],
            submit_host=f"{r['facility']}/batch",
            node_count=int(r["node_count"]),
            processors=int(r["processors"]),
            earliest_end=int(r["earliest_end"]),
            latest_end=int(r["latest_end"]),
            wall=float(r["wall_seconds"]),
            cpu=float(r["cpu_seconds"]),
            norm_wall=float(r["wall_hs23_seconds"]),
            norm_cpu=float(r["cpu_hs23_seconds"]),
            jobs=float(r["jobs"]),
        )
        for r in rows
        if r["vo"] != UNMAPPED
    ]


def summaries(doc: dict[str, Any]) -> list[Summary]:
    """Every APEL summary of the document, month by month: interactive, then batch."""
    apel_months = {a["month"]: a for a in doc.get("apel", {}).get("months", [])}
    out = []
    for month in doc["month_to_date"]:
        extra = apel_months.get(month["month"], {})
        bounds = {
            (b["facility"], b["vo"], b["group"], b["member"]): b
            for b in extra.get("interactive", [])
        }
        out += _interactive(doc, month, bounds)
        out += _batch(doc, month, extra.get("batch", []))
    return out


def _record(s: Summary, norm_wall: str, norm_cpu: str) -> str:
    """One record, its fields in the order of APEL's NormalisedSummaryRecord."""
    fields = (
        ("Site", s.site),
        ("Month", s.month),
        ("Year", s.year),
        ("GlobalUserName", s.member),
        ("VO", s.vo),
        ("VOGroup", s.group),
        ("SubmitHost", s.submit_host),
        ("Infrastructure", INFRASTRUCTURE),
        ("NodeCount", s.node_count),
        ("Processors", s.processors),
        ("EarliestEndTime", s.earliest_end),
        ("LatestEndTime", s.latest_end),
        ("WallDuration", _seconds(s.wall)),
        ("CpuDuration", _seconds(s.cpu)),
        ("NormalisedWallDuration", norm_wall),
        ("NormalisedCpuDuration", norm_cpu),
        ("NumberOfJobs", _seconds(s.jobs)),
    )
    return "".join(f"{k}: {v}\n" for k, v in fields) + "%%\n"


def hs06_per_hs23(doc: dict[str, Any]) -> float | None:
    """HEPSPEC06 per HEPscore23 (AFMON_REPORT_HS06_PER_HS23), or None: afmon has no HS06."""
    factor = doc["provenance"]["settings"].get("report_hs06_per_hs23")
    return float(factor) if factor else None


def render_v03(doc: dict[str, Any]) -> bytes:
    """v0.3 in HEPSPEC06 (HEPscore23 x the factor); without a factor, no records."""
    factor = hs06_per_hs23(doc)
    body = (
        "".join(
            _record(s, str(_seconds(s.norm_wall * factor)), str(_seconds(s.norm_cpu * factor)))
            for s in summaries(doc)
        )
        if factor
        else ""
    )
    return (V03_HEADER + "\n" + body).encode()


def benchmarks(doc: dict[str, Any]) -> list[tuple[str, float]]:
    """(benchmark, factor from HEPscore23): HEPscore23, and hepspec when a factor is set."""
    hs06 = hs06_per_hs23(doc)
    return ([("hepspec", hs06)] if hs06 else []) + [("HEPscore23", 1.0)]


def render_v04(doc: dict[str, Any]) -> bytes:
    marks = benchmarks(doc)

    def bench_map(x: float) -> str:
        return "{" + ", ".join(f"{name}: {_seconds(x * f)}" for name, f in marks) + "}"

    body = "".join(
        _record(s, bench_map(s.norm_wall), bench_map(s.norm_cpu)) for s in summaries(doc)
    )
    return (V04_HEADER + "\n" + body).encode()


def render_accelerator(doc: dict[str, Any]) -> bytes | None:
    """Draft accelerator records (JSON), or None when the catalog has no GPU resources.

    One record per month, mapped member and GPU model where the catalog accounts models
    (Model set), else per month and member from the overall GPU time (Model null)."""
    allocated, active = gpu_resources()
    models = gpu_models()
    pairs = [(m, a, b) for m, a, b in models] or (
        [(None, allocated, active)] if allocated or active else []
    )
    if not pairs:
        return None
    records = []
    for month in doc["month_to_date"]:
        for m in month["members"]:
            if m["vo"] == UNMAPPED:
                continue
            u = m["usage"]
            for model, alloc_r, active_r in pairs:
                avail = float(u.get(alloc_r, 0)) if alloc_r else 0.0
                busy = float(u.get(active_r, 0)) if active_r else 0.0
                if not (avail or busy):
                    continue
                records.append(
                    {
                        "MeasurementMonth": month["month_number"],
                        "MeasurementYear": month["year"],
                        "AssociatedRecordType": "summary",
                        "GlobalUserName": m["member"],
                        "FQAN": m["group"],
                        "SiteName": site_of(doc, m["facility"]),
                        "Count": None,
                        "Cores": None,
                        "ActiveDuration": _seconds(busy),
                        "AvailableDuration": _seconds(avail),
                        "BenchmarkType": None,
                        "Benchmark": None,
                        "Type": "GPU",
                        "Model": model,
                    }
                )
    message = {"MessageType": ACCELERATOR_TYPE, "Version": "draft", "Records": records}
    return (json.dumps(message, sort_keys=True, indent=1) + "\n").encode()


def parse_summary_message(text: str) -> tuple[str, list[dict[str, str]]]:
    """The header and the records of a v0.3/v0.4 message (for checks and tests)."""
    header, _, rest = text.partition("\n")
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in rest.splitlines():
        if line == "%%":
            records.append(current)
            current = {}
        elif line:
            key, sep, value = line.partition(": ")
            if not sep:
                raise ValueError(f"not a 'Key: value' line: {line!r}")
            current[key] = value
    if current:
        raise ValueError("last record is not ended by %%")
    return header, records
