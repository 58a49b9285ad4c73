"""Service availability and downtime (docs/availability.md), from the agents' service checks.

A check's sample `service_up` (1 or 0) at time t speaks for [t, next sample) when the next one
follows within `max_gap` seconds, else for one usual step of that checker (the median gap of
its samples, at most `max_gap`): beyond that nothing is known. Several checkers of one service
(agents on different nodes) are combined: the service is up where any checker saw it up, down
where one saw it down and none up, unknown elsewhere. Availability is up over up + down
(unknown left out); the *unplanned* one leaves out the down time inside the planned downtimes
an admin declared (`afmon downtime`). Service availability is no one's personal data: every
principal sees it, a facility-bound admin their facility's.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
from sqlalchemy import Engine, text

from afmon.aggregator.query.base import Principal, QueryBase
from afmon.aggregator.query.failures import engine_of
from afmon.aggregator.store.db import read_connection

Interval = tuple[float, float]
DAY = 86400.0
SUMMARY = [
    "facility", "service", "start", "end", "up_seconds", "down_seconds",
    "planned_down_seconds", "unknown_seconds", "availability", "unplanned_availability",
]  # fmt: skip
DOWNTIMES = ["facility", "service", "start", "end", "seconds", "planned_seconds"]


def union(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[list[float]] = []
    for a, b in sorted(i for i in intervals if i[1] > i[0]):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def subtract(these: list[Interval], those: list[Interval]) -> list[Interval]:
    """`these` less `those` (both merged and sorted)."""
    out: list[Interval] = []
    for a, b in these:
        cur = a
        for c, d in those:
            if d <= cur or c >= b:
                continue
            if c > cur:
                out.append((cur, c))
            cur = max(cur, d)
        if cur < b:
            out.append((cur, b))
    return out


def intersect(these: list[Interval], those: list[Interval]) -> list[Interval]:
    out = [(max(a, c), min(b, d)) for a, b in these for c, d in those]
    return [(a, b) for a, b in out if b > a]


def length(intervals: Iterable[Interval]) -> float:
    return sum(b - a for a, b in intervals)


def coverage(samples: list[tuple[float, float]], max_gap: float) -> tuple[list, list]:
    """(up, down) intervals one checker's time-ordered samples speak for."""
    gaps = [b[0] - a[0] for a, b in zip(samples, samples[1:], strict=False)]
    step = min(statistics.median(gaps), max_gap) if gaps else 0.0
    up, down = [], []
    for i, (t, v) in enumerate(samples):
        nxt = samples[i + 1][0] if i + 1 < len(samples) else None
        end = nxt if nxt is not None and nxt - t <= max_gap else t + step
        (up if v >= 1 else down).append((t, end))
    return up, down


@dataclass(frozen=True)
class ServiceState:
    up: list[Interval]
    down: list[Interval]


def _states(
    engine: Engine, p: Principal, start: float, end: float, max_gap: float
) -> dict[tuple[str, str], ServiceState]:
    cond, params = ("s.facility = :f", {"f": p.facility}) if p.facility else ("1 = 1", {})
    with read_connection(engine) as conn:
        rows = conn.execute(
            text(
                "SELECT s.id, s.facility, s.labels, x.time, x.value FROM series s "
                "JOIN sample x ON x.series_id = s.id WHERE s.metric = 'service_up' "
                f"AND x.time >= :lo AND x.time < :end AND {cond} ORDER BY s.id, x.time"
            ),
            {"lo": start - max_gap, "end": end, **params},
        ).all()
    per_series: dict[int, list[tuple[float, float]]] = defaultdict(list)
    key_of: dict[int, tuple[str, str]] = {}
    for sid, facility, labels, t, v in rows:
        per_series[sid].append((float(t), float(v)))
        key_of[sid] = (facility, json.loads(labels).get("service", ""))
    ups: dict[tuple[str, str], list[Interval]] = defaultdict(list)
    downs: dict[tuple[str, str], list[Interval]] = defaultdict(list)
    window = [(start, end)]
    for sid, samples in per_series.items():
        up, down = coverage(samples, max_gap)
        ups[key_of[sid]] += intersect(union(up), window)
        downs[key_of[sid]] += intersect(union(down), window)
    out = {}
    for key in set(ups) | set(downs):
        up = union(ups[key])
        out[key] = ServiceState(up, subtract(union(downs[key]), up))
    return out


def planned(engine: Engine, p: Principal, start: float, end: float) -> dict[tuple[str, str], list]:
    """The declared downtimes overlapping [start, end), per (facility, service)."""
    cond, params = ("facility = :f", {"f": p.facility}) if p.facility else ("1 = 1", {})
    with read_connection(engine) as conn:
        rows = conn.execute(
            text(
                'SELECT facility, service, start, "end" FROM planned_downtime '
                f'WHERE start < :end AND "end" > :start AND {cond}'
            ),
            {"start": start, "end": end, **params},
        ).all()
    out: dict[tuple[str, str], list[Interval]] = defaultdict(list)
    for facility, service, a, b in rows:
        out[(facility, service)].append((max(float(a), start), min(float(b), end)))
    return {k: union(v) for k, v in out.items()}


def availability(
    source: Engine | QueryBase,
    p: Principal,
    start: float,
    end: float,
    max_gap: float,
    now: float,
    per_day: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, downtimes) over [start, min(end, now)), per UTC day with `per_day`: the
    SUMMARY columns per (facility, service[, day]) and each down interval (DOWNTIMES)."""
    engine = engine_of(source)
    end = min(end, now)
    spans = [(start, end)]
    if per_day:
        first = start // DAY * DAY
        spans = [(max(d, start), min(d + DAY, end))
                 for d in _days(first, end) if min(d + DAY, end) > max(d, start)]  # fmt: skip
    summary, downtimes = [], []
    for lo, hi in spans:
        states = _states(engine, p, lo, hi, max_gap)
        declared = planned(engine, p, lo, hi)
        for (facility, service), st in sorted(states.items()):
            plan = declared.get((facility, service), [])
            up, down = length(st.up), length(st.down)
            planned_down = length(intersect(st.down, plan))
            unknown = (hi - lo) - up - down
            summary.append([
                facility, service, lo, hi, up, down, planned_down, unknown,
                up / (up + down) if up + down > 0 else None,
                up / (up + down - planned_down) if up + down - planned_down > 0 else None,
            ])  # fmt: skip
            for a, b in st.down:
                downtimes.append([facility, service, a, b, b - a,
                                  length(intersect([(a, b)], plan))])  # fmt: skip
    return pd.DataFrame(summary, columns=SUMMARY), pd.DataFrame(downtimes, columns=DOWNTIMES)


def _days(first: float, end: float) -> list[float]:
    out, d = [], first
    while d < end:
        out.append(d)
        d += DAY
    return out
