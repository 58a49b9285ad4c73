"""Access methods (docs/data.md, "Access methods"): active members per week or month by how
they used the facility. A member counts under every method they used in the period:

    notebook   a JupyterHub session (a `session` event) that ran in the period
    terminal   a session whose attrs.kind is "terminal" (an ssh or terminal login)
    dask       Dask clusters or workers (ledger dask_cluster_seconds, dask_worker_seconds)
    batch      batch jobs (ledger batch_job_seconds)
and, for members with none of those:
    data_only  data read or written via XRootD (ledger data_*)
    other      any other usage (CPU, memory, GPUs seen by the host probe)
`all` counts every active member once. Weeks are ISO weeks (Monday 00:00 UTC), months UTC.
With by="institution" the counts are per home institution too (the identity file's optional
`institution`, docs/identity.md; "" where it names none).
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime

import pandas as pd
from sqlalchemy import Engine, text

from afmon.aggregator.query.base import Principal, QueryBase, QueryError, scope_sql
from afmon.aggregator.query.failures import engine_of
from afmon.aggregator.store.db import read_connection

PERIODS = ("week", "month")
METHODS = ("all", "notebook", "terminal", "dask", "batch", "data_only", "other")
LEDGER_METHODS = {
    "dask_cluster_seconds": "dask",
    "dask_worker_seconds": "dask",
    "batch_job_seconds": "batch",
}
DAY = 86400
COLUMNS = ["period", "method", "members"]
BY = ("institution",)


def period_of(t: float, period: str) -> str:
    """The ISO week ("2026-W47") or month ("2026-11") holding the UTC time `t`."""
    d = datetime.fromtimestamp(t, UTC)
    if period == "week":
        year, week, _ = d.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{d.year}-{d.month:02d}"


def _session_days(start: float, end: float) -> list[float]:
    first = int(start // DAY) * DAY
    return [float(d) for d in range(first, int(end), DAY)] or [float(first)]


def active_by_method(
    source: Engine | QueryBase,
    p: Principal,
    start: float,
    end: float,
    period: str = "week",
    by: str | None = None,
) -> pd.DataFrame:
    """One row per (period, method), or per (period, institution, method) with
    by="institution", with active members in [start, end): members (0 where none)."""
    if period not in PERIODS:
        raise QueryError(f"period is one of {', '.join(PERIODS)}")
    if by is not None and by not in BY:
        raise QueryError(f"count active members by {', '.join(BY)}, or by nothing")
    used: dict[tuple[str, str], set[str]] = defaultdict(set)  # (period, member) -> methods
    cond, params = scope_sql(p)
    e_cond, e_params = scope_sql(p, member="e.member_id", vo="m.vo", facility="e.facility")
    with read_connection(engine_of(source)) as conn:
        ledger = conn.execute(
            text(
                "SELECT member_id, resource, (hour / 86400) * 86400 AS day FROM usage "
                f"WHERE hour >= :start AND hour < :end AND amount > 0 AND {cond} "
                "GROUP BY member_id, resource, (hour / 86400) * 86400"
            ),
            {"start": int(start), "end": int(end), **params},
        ).all()
        sessions = conn.execute(
            text(
                'SELECT e.member_id, e.start, e."end", e.attrs FROM event e '
                "JOIN member m ON m.id = e.member_id WHERE e.kind = 'session' "
                f'AND e.start < :end AND (e."end" IS NULL OR e."end" > :start) AND {e_cond}'
            ),
            {"start": start, "end": end, **e_params},
        ).all()
        home = dict(conn.execute(text("SELECT id, institution FROM member")).all()) if by else {}
    for member, resource, day in ledger:
        key = (period_of(float(day), period), member)
        if resource in LEDGER_METHODS:
            used[key].add(LEDGER_METHODS[resource])
        elif resource.startswith("data_"):
            used[key].add("data")
        elif resource not in ("session_seconds", "sessions"):  # a session's event says how
            used[key].add("other")
    for member, s_start, s_end, attrs in sessions:
        kind = json.loads(attrs or "{}").get("kind")
        method = "terminal" if kind == "terminal" else "notebook"
        lo, hi = max(start, float(s_start)), min(end, float(s_end) if s_end else end)
        for day in _session_days(lo, hi):
            used[(period_of(day, period), member)].add(method)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for (when, member), methods in used.items():
        key = (when, home.get(member, "")) if by else when
        counts[(key, "all")] += 1
        main = methods & {"notebook", "terminal", "dask", "batch"}
        for method in main:
            counts[(key, method)] += 1
        if not main:
            counts[(key, "data_only" if "data" in methods else "other")] += 1
    keys = sorted({k for k, _ in counts})
    rows = [(*(k if by else (k,)), m, counts[(k, m)]) for k in keys for m in METHODS]
    columns = ["period", "institution", "method", "members"] if by else COLUMNS
    return pd.DataFrame(rows, columns=columns)
