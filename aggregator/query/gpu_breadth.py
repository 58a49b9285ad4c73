"""GPU access breadth (docs/gpu.md, "Access breadth"): the talk's rule that two users with one
GPU each are worth more than one user with two, as figures per facility over [start, end):

    gpus                  GPUs the facility's agents report now (live)
    gpu_hours             GPU time held (the ledger's gpu_allocated_seconds)
    members_served        distinct members who held a GPU
    member_gpu_days       sum over the days of the members who held a GPU that day
    members_per_gpu_day   member_gpu_days / (gpus x days): how widely the GPUs were shared
    members_several_gpus  members who held two GPUs or more at once (from the GPU probe's
                          gpu_held samples in the same minute; kept for AFMON_RETENTION_DAYS)
    gpu_session_waits, gpu_session_wait_p95_seconds
                          time-to-session of the profiles AFMON_GPU_PROFILE_PATTERN matches
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import pandas as pd
from sqlalchemy import text

from afmon.aggregator.core import latency
from afmon.aggregator.identity.accounts import IdentityMap
from afmon.aggregator.query.base import Principal, scope_sql, visible
from afmon.aggregator.query.reads import Query
from afmon.aggregator.store.db import read_connection

DAY = 86400
COLUMNS = [
    "facility", "gpus", "gpu_hours", "members_served", "member_gpu_days", "members_per_gpu_day",
    "members_several_gpus", "gpu_session_waits", "gpu_session_wait_p95_seconds",
]  # fmt: skip


def _several(query: Query, p: Principal, start: float, end: float) -> dict[str, set[str]]:
    """facility -> members who held two GPUs or more in one minute."""
    with read_connection(query._engine) as conn:
        rows = conn.execute(
            text(
                "SELECT s.facility, s.local_user, CAST(x.time / 60 AS INTEGER), "
                "COUNT(DISTINCT s.id), MIN(x.time) FROM series s "
                "JOIN sample x ON x.series_id = s.id WHERE s.metric = 'gpu_held' "
                "AND x.value >= 1 AND x.time >= :start AND x.time < :end "
                "AND s.local_user IS NOT NULL "
                "GROUP BY s.facility, s.local_user, CAST(x.time / 60 AS INTEGER) "
                "HAVING COUNT(DISTINCT s.id) >= 2"
            ),
            {"start": start, "end": end},
        ).all()
    identity = IdentityMap(query._engine)
    out: dict[str, set[str]] = defaultdict(set)
    for facility, user, _minute, _n, t in rows:
        ref = identity.resolve(facility, user, float(t))
        if visible(p, facility, ref.vo, ref.id):
            out[facility].add(ref.id)
    return out


def gpu_breadth(
    query: Query,
    p: Principal,
    start: float,
    end: float,
    gpu_profile_pattern: str,
    quantile: float = 0.95,
) -> pd.DataFrame:
    """One row per facility `p` sees with GPU use or GPUs (COLUMNS); None without data."""
    cond, params = scope_sql(p)
    first, last = int(start // DAY * DAY), int(math.ceil(end / DAY) * DAY)
    with read_connection(query._engine) as conn:
        held = conn.execute(
            text(
                "SELECT facility, member_id, day, SUM(amount) FROM usage_day "
                "WHERE resource = 'gpu_allocated_seconds' AND amount > 0 "
                f"AND day >= :first AND day < :last AND {cond} "
                "GROUP BY facility, member_id, day"
            ),
            {"first": first, "last": last, **params},
        ).all()
    days = max(1, (last - first) // DAY)
    hours: dict[str, float] = defaultdict(float)
    served: dict[str, set[str]] = defaultdict(set)
    member_days: dict[str, int] = defaultdict(int)
    for facility, member, _day, seconds in held:
        hours[facility] += float(seconds) / 3600
        served[facility].add(member)
        member_days[facility] += 1
    capacity = query.capacity(p)
    gpus = {r.facility: int(r.gpus or 0) for r in capacity.itertuples(index=False)}
    several = _several(query, p, start, end)
    waits = _gpu_waits(query, p, start, end, gpu_profile_pattern, quantile)
    rows = []
    for f in sorted(set(hours) | {f for f, n in gpus.items() if n} | set(several)):
        n = gpus.get(f, 0)
        count, p95 = waits.get(f, (0, None))
        rows.append([
            f, n, hours.get(f, 0.0), len(served.get(f, ())), member_days.get(f, 0),
            member_days.get(f, 0) / (n * days) if n else None, len(several.get(f, ())),
            count, p95,
        ])  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def _gpu_waits(
    query: Query, p: Principal, start: float, end: float, pattern: str, quantile: float
) -> dict[str, tuple[int, float | None]]:
    """facility -> (waits, quantile) of time-to-session over the GPU profiles, exact over the
    per-wait records (as every latency figure of afmon, aggregator/core/latency.py)."""
    gpu = re.compile(pattern)
    waits = query.latency_waits(p, "time_to_session", start, end)
    records, buckets = waits.frames()
    records = records[[bool(gpu.search(str(x))) for x in records["profile"]]]
    buckets = buckets[[bool(gpu.search(str(x))) for x in buckets["profile"]]]
    if records.empty and buckets.empty:
        return {}
    df = latency.summarize_waits(records, buckets, ["facility"], (quantile,), None,
                                 waits.population)  # fmt: skip
    col = latency.quantile_column(quantile)
    return {
        str(r["facility"]): (int(r["count"]), None if pd.isna(r[col]) else float(r[col]))
        for r in df.to_dict(orient="records")
    }
