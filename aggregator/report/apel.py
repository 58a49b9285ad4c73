"""APEL renderings of the report's month-to-date usage (../shared REFERENCE: APEL).

- v0.3 summary (`APEL-summary-job-message: v0.3`) and v0.4 normalised summary
  (`APEL-normalised-summary-message: v0.4`): one record per (site, month, member, VO,
  group), `Key: value` lines ended by `%%`, durations in whole seconds. The APEL server
  replaces a summary with the same key, so every message carries each month the report's
  week touches from its first day to the end of the week (the whole month to date).
- draft accelerator records (JSON) for GPU time, when the resource catalog has GPU
  resources (allocated = AvailableDuration, active = ActiveDuration).

Mapping (docs/report.md): two summaries per member and month, told apart by SubmitHost
(`<facility>/interactive`, `<facility>/batch`): interactive sessions with the CPU the host
probe measured, and batch jobs with the CPU their scheduler reported. NormalisedCpuDuration
is HEPscore23-normalised CPU; NormalisedWallDuration is batch wall x cores x HEPscore23,
and for sessions the wall time x the member's CPU-weighted HEPscore23 per core that month
(the default per core when they used no CPU). Unmapped usage has no VO and is left out of
APEL (the report's completeness section shows it).
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


@dataclass(frozen=True)
class Part:
    """Which resources make one kind of APEL summary (told apart by SubmitHost, a key field)."""

    name: str
    wall: str
    jobs: str
    cpu: str
    cpu_hs23: str
    wall_hs23: str | None = None  # when absent: wall x the CPU-weighted HEPscore23 per core


PARTS = (
    Part("interactive", "session_seconds", "sessions", "cpu_seconds", "cpu_hs23_seconds"),
    Part(
        "batch",
        "batch_job_seconds",
        "batch_jobs",
        "batch_cpu_seconds",
        "batch_cpu_hs23_seconds",
        "batch_wall_core_hs23_seconds",
    ),
)
_MODEL = re.compile(r"^gpu_([a-z0-9]+)_allocated_seconds$")


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


def _summaries(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per month, mapped member and part: the APEL quantities (floats, seconds)."""
    default_hs23 = float(doc["provenance"]["settings"]["default_hepscore23_per_core"])
    out = []
    for month in doc["month_to_date"]:
        for m in month["members"]:
            if m["vo"] == UNMAPPED:
                continue
            u = m["usage"]
            for part in PARTS:
                wall = float(u.get(part.wall, 0))
                jobs = float(u.get(part.jobs, 0))
                cpu = float(u.get(part.cpu, 0))
                cpu_hs23 = float(u.get(part.cpu_hs23, 0))
                if not (wall or jobs or cpu):
                    continue
                if part.wall_hs23 is not None and part.wall_hs23 in u:
                    norm_wall = float(u[part.wall_hs23])
                else:
                    norm_wall = wall * (cpu_hs23 / cpu if cpu else default_hs23)
                out.append(
                    {
                        "Site": m["facility"],
                        "Month": month["month_number"],
                        "Year": month["year"],
                        "GlobalUserName": m["member"],
                        "VO": m["vo"],
                        "VOGroup": m["group"],
                        "SubmitHost": f"{m['facility']}/{part.name}",
                        "Infrastructure": "afmon",
                        "wall": wall,
                        "cpu": cpu,
                        "norm_wall": norm_wall,
                        "norm_cpu": cpu_hs23,
                        "jobs": jobs,
                    }
                )
    return out


def _record(s: dict[str, Any], norm_wall: str, norm_cpu: str) -> str:
    lines = [
        f"{k}: {s[k]}"
        for k in (
            "Site",
            "Month",
            "Year",
            "GlobalUserName",
            "VO",
            "VOGroup",
            "SubmitHost",
            "Infrastructure",
        )
    ]
    lines += [
        f"WallDuration: {_seconds(s['wall'])}",
        f"CpuDuration: {_seconds(s['cpu'])}",
        f"NormalisedWallDuration: {norm_wall}",
        f"NormalisedCpuDuration: {norm_cpu}",
        f"NumberOfJobs: {_seconds(s['jobs'])}",
    ]
    return "\n".join(lines) + "\n%%\n"


def render_v03(doc: dict[str, Any]) -> bytes:
    body = "".join(
        _record(s, str(_seconds(s["norm_wall"])), str(_seconds(s["norm_cpu"])))
        for s in _summaries(doc)
    )
    return (V03_HEADER + "\n" + body).encode()


def benchmarks(doc: dict[str, Any]) -> list[tuple[str, float]]:
    """(benchmark, factor from HEPscore23): HEPscore23, and hepspec when a factor is set."""
    hs06 = doc["provenance"]["settings"].get("report_hs06_per_hs23")
    return ([("hepspec", float(hs06))] if hs06 else []) + [("HEPscore23", 1.0)]


def render_v04(doc: dict[str, Any]) -> bytes:
    marks = benchmarks(doc)

    def bench_map(x: float) -> str:
        return "{" + ", ".join(f"{name}: {_seconds(x * f)}" for name, f in marks) + "}"

    body = "".join(
        _record(s, bench_map(s["norm_wall"]), bench_map(s["norm_cpu"])) for s in _summaries(doc)
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
                        "SiteName": m["facility"],
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
