"""The public facility card (docs/public-card.md): the parameters an Analysis Facility
publishes so that users can choose between facilities, as one versioned JSON document.

Aggregates only. Per facility, over the last complete ISO week and the last complete month:
capacity, service availability (planned downtime told apart), interactive SLO attainment
(time-to-session, time-to-first-worker), active members in all and by access method, CPU and
GPU hours, the data-source and input-format mix, GPU energy per GPU-hour, and usage per VO and
per accounting group. A VO or group with fewer than `min_members` active members is folded
into "other"; when the fold itself has fewer, it is left out (its usage still counts in the
facility's totals). No member, account or node name is in it.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from afmon.aggregator.query.access import METHODS, active_by_method
from afmon.aggregator.query.availability import availability
from afmon.aggregator.query.base import Principal
from afmon.aggregator.query.comparison import SOURCES, facility_comparison
from afmon.aggregator.query.formats import read_by_format
from afmon.aggregator.query.reads import Query

SCHEMA_ID = "afmon-public-card/1"
OTHER = "other"
ALL = Principal("facility_admin", name="public card")


def windows(now: float) -> dict[str, tuple[str, float, float]]:
    """The last complete ISO week and calendar month before `now`: name -> (label, start,
    end)."""
    today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    monday = today - timedelta(days=today.weekday())
    week_start = monday - timedelta(days=7)
    first = today.replace(day=1)
    month_start = (first - timedelta(days=1)).replace(day=1)
    iso = week_start.isocalendar()
    return {
        "week": (f"{iso[0]}-W{iso[1]:02d}", week_start.timestamp(), monday.timestamp()),
        "month": (f"{month_start:%Y-%m}", month_start.timestamp(), first.timestamp()),
    }


def _num(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), 6)


def _folded(amounts: dict[str, float], members: dict[str, int], k: int) -> list[dict[str, Any]]:
    """Rows of (name, members, cpu_hours), names below `k` members folded into OTHER."""
    rows, other_amount, other_members = [], 0.0, 0
    for name in sorted(set(amounts) | set(members)):
        n = members.get(name, 0)
        if n >= k:
            rows.append({"name": name, "members": n, "cpu_hours": _num(amounts.get(name, 0.0))})
        else:
            other_amount += amounts.get(name, 0.0)
            other_members += n
    if other_members >= k:
        rows.append({"name": OTHER, "members": other_members, "cpu_hours": _num(other_amount)})
    return rows


def _breakdown(query: Query, facility: str, start: float, end: float, key: str, k: int) -> list:
    p = Principal("facility_admin", facility=facility)
    df = query.usage_totals(p, start, end, by=(key, "member"))
    cpu: dict[str, float] = defaultdict(float)
    members: dict[str, set[str]] = defaultdict(set)
    for r in df.itertuples(index=False):
        name = getattr(r, key)
        if r.amount > 0:
            members[name].add(r.member)
        if r.resource == "cpu_seconds":
            cpu[name] += float(r.amount) / 3600
    return _folded(cpu, {n: len(m) for n, m in members.items()}, k)


def _format_shares(query: Query, p: Principal, start: float, end: float) -> dict[str, float]:
    """Shares of the bytes read per input format (docs/data.md); {} without format data."""
    df = read_by_format(query, p, start, end, by="facility")
    total = float(df["read_bytes"].sum()) if len(df) else 0.0
    if total <= 0:
        return {}
    per = df.groupby("format")["read_bytes"].sum()
    return {str(f): round(float(v) / total, 6) for f, v in sorted(per.items())}


def _window(
    query: Query,
    facility: str,
    start: float,
    end: float,
    slo: dict[str, float],
    k: int,
    max_gap: float,
) -> dict[str, Any]:
    p = Principal("facility_admin", facility=facility)
    row = facility_comparison(query, p, start, end, slo)
    c = row.iloc[0].to_dict() if len(row) else {}
    totals = query.usage_totals(
        p, start, end, by=("facility",),
        resources=("cpu_seconds", "gpu_allocated_seconds", "gpu_energy_joules"),
    )  # fmt: skip
    t = {r.resource: float(r.amount) for r in totals.itertuples(index=False)}
    gpu_hours = t.get("gpu_allocated_seconds", 0.0) / 3600
    access = active_by_method(query, p, start, end, "week" if end - start <= 7 * 86400 else "month")
    by_method = {m: int(access[access.method == m].members.sum()) for m in METHODS}
    latency = {}
    for kind in ("time_to_session", "time_to_first_worker"):
        ps = query.latency_percentiles(p, kind, start, end, quantiles=(0.5, 0.95),
                                       slo_seconds=slo.get(kind))  # fmt: skip
        r = ps.iloc[0].to_dict() if len(ps) and ps.iloc[0]["count"] else {}
        latency[kind] = {
            "slo_seconds": slo.get(kind),
            "waits": int(r.get("count", 0) or 0),
            "p50_seconds": _num(r.get("p50_seconds")),
            "p95_seconds": _num(r.get("p95_seconds")),
            "within_slo_ratio": _num(r.get("within_slo_ratio")),
        }
    services, _downtimes = availability(query, p, start, end, max_gap, end)
    return {
        "availability": {
            r.service: {
                "availability": _num(r.availability),
                "unplanned_availability": _num(r.unplanned_availability),
            }
            for r in services.itertuples(index=False)
        },  # fmt: skip
        "active_members": by_method.pop("all"),
        "active_members_by_access_method": by_method,
        "cpu_hours": _num(t.get("cpu_seconds", 0.0) / 3600),
        "gpu_hours": _num(gpu_hours),
        "gpu_energy_kwh_per_gpu_hour": _num(
            t.get("gpu_energy_joules", 0.0) / 3.6e6 / gpu_hours if gpu_hours else None
        ),
        "interactive": latency,
        "data_read_by_source": {s: _num(c.get(f"data_read_{s}_share")) for s in SOURCES},
        "data_read_by_format": _format_shares(query, p, start, end),
        "batch_cpu_efficiency": _num(c.get("batch_cpu_efficiency")),
        "gpu_busy_ratio": _num(c.get("gpu_busy_ratio")),
        "vos": _breakdown(query, facility, start, end, "vo", k),
        "groups": _breakdown(query, facility, start, end, "group", k),
    }


def public_card(
    query: Query, now: float, slo: dict[str, float], min_members: int, max_gap: float = 600.0
) -> dict[str, Any]:
    """The card of every facility this server accounts (or receives), as of `now`."""
    spans = windows(now)
    capacity = query.capacity(ALL)
    facilities = sorted(set(query.facilities(ALL)) | set(capacity["facility"]))
    cards = []
    for facility in facilities:
        cap = capacity[capacity.facility == facility]
        c = cap.iloc[0].to_dict() if len(cap) else {}
        cards.append(
            {
                "facility": facility,
                "capacity": {
                    "nodes": int(c.get("nodes", 0) or 0),
                    "cpu_cores": _num(c.get("cpu_cores", 0.0)),
                    "memory_bytes": _num(c.get("memory_bytes", 0.0)),
                    "gpus": int(c.get("gpus", 0) or 0),
                },
                **{
                    name: {
                        "period": label,
                        "start": start,
                        "end": end,
                        **_window(query, facility, start, end, slo, min_members, max_gap),
                    }
                    for name, (label, start, end) in spans.items()
                },  # fmt: skip
            }
        )
    return {"schema": SCHEMA_ID, "min_members": min_members, "facilities": cards}
