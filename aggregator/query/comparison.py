"""Facilities side by side: what a VO-level afmon (docs/federation.md) or a multi-facility
server shows to compare them, within what the principal may see.

Per facility over [start, end): active members, CPU hours, interactive sessions, the p95 of
time-to-session and time-to-first-worker with the share of waits within their SLO, the mix of
data read by source (local, cache, remote), batch CPU efficiency (CPU over wall x cores) and
GPU busy share (active over held). All come from the ledger and its latency histograms, so
they are the same at a facility and at an upstream that received its hours.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from afmon.aggregator.query.base import Principal
from afmon.aggregator.query.reads import Query

SOURCES = ("local", "cache", "remote")
COLUMNS = [
    "facility",
    "active_members",
    "cpu_hours",
    "sessions",
    "time_to_session_p95_seconds",
    "time_to_session_within_slo_ratio",
    "time_to_first_worker_p95_seconds",
    "time_to_first_worker_within_slo_ratio",
    *(f"data_read_{s}_share" for s in SOURCES),
    "batch_cpu_efficiency",
    "gpu_busy_ratio",
]
_NEEDED = (
    "cpu_seconds",
    "sessions",
    *(f"data_read_{s}_bytes" for s in SOURCES),
    "batch_cpu_seconds",
    "batch_wall_core_seconds",
    "gpu_allocated_seconds",
    "gpu_active_seconds",
)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def facility_comparison(
    query: Query,
    p: Principal,
    start: float,
    end: float,
    slo_seconds: Mapping[str, float],
) -> pd.DataFrame:
    """One row per facility `p` sees (COLUMNS); a ratio without a denominator is None."""
    totals = query.usage_totals(p, start, end, by=("facility",), resources=_NEEDED)
    amounts: dict[str, dict[str, float]] = {}
    for r in totals.itertuples(index=False):
        amounts.setdefault(r.facility, {})[r.resource] = float(r.amount)
    members = query.usage_totals(p, start, end, by=("facility", "member"))
    active = (
        members[members.amount > 0].groupby("facility")["member"].nunique().to_dict()
        if len(members)
        else {}
    )
    latency: dict[str, dict[str, tuple[float | None, float | None]]] = {}
    for kind in ("time_to_session", "time_to_first_worker"):
        df = query.latency_percentiles(
            p, kind, start, end, by=("facility",), quantiles=(0.95,),
            slo_seconds=slo_seconds.get(kind),
        )  # fmt: skip
        for r in df.to_dict(orient="records"):
            p95, within = r.get("p95_seconds"), r.get("within_slo_ratio")
            latency.setdefault(r["facility"], {})[kind] = (
                None if pd.isna(p95) else float(p95),
                None if within is None or pd.isna(within) else float(within),
            )
    rows = []
    for facility in sorted(set(amounts) | set(active) | set(latency)):
        a = amounts.get(facility, {})
        read = {s: a.get(f"data_read_{s}_bytes", 0.0) for s in SOURCES}
        total_read = sum(read.values())
        waits = latency.get(facility, {})
        tts = waits.get("time_to_session", (None, None))
        ttfw = waits.get("time_to_first_worker", (None, None))
        rows.append(
            [
                facility,
                int(active.get(facility, 0)),
                a.get("cpu_seconds", 0.0) / 3600,
                a.get("sessions", 0.0),
                *tts,
                *ttfw,
                *(_ratio(read[s], total_read) for s in SOURCES),
                _ratio(a.get("batch_cpu_seconds", 0.0), a.get("batch_wall_core_seconds", 0.0)),
                _ratio(a.get("gpu_active_seconds", 0.0), a.get("gpu_allocated_seconds", 0.0)),
            ]
        )
    return pd.DataFrame(rows, columns=COLUMNS)
