"""Failure rates (docs/data.md, "Failure rates"): per member, group, VO or facility, the
starts of three activities that began in a window and how many of them failed, from the
per-start records the ingest keeps (table `event`):

    batch             `batch_job` events, one per job (a run ended by a requeue,
                      attrs.requeued, is no job). Failed: every end but COMPLETED with exit
                      code 0, except a cancellation (Slurm CANCELLED, HTCondor REMOVED), which
                      is counted as cancelled and is no failure. Timed out: state TIMEOUT.
    session_start     `spawn` events (JupyterHub server starts). Failed: outcome failed or
                      timeout; timed out: timeout; cancelled: stopped (the user stopped it).
    dask_computation  `dask_computation` events. Failed: outcome erred; cancelled: cancelled.

failure_rate = failed / starts. Failed batch jobs are also broken down by state and exit code.
Scoped like every read: a member sees their own, a VO manager their VO, an admin the facility.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from sqlalchemy import Engine, text

from afmon.aggregator.query.base import (
    GROUP_COLUMNS,
    Principal,
    QueryBase,
    QueryError,
    scope_sql,
)
from afmon.aggregator.store.db import read_connection

ACTIVITIES = {
    "batch_job": "batch",
    "spawn": "session_start",
    "dask_computation": "dask_computation",
}
OUTCOMES = ("ok", "failed", "timed_out", "cancelled")
CANCELLED_STATES = frozenset({"CANCELLED", "REMOVED"})
TIMEOUT_STATES = frozenset({"TIMEOUT"})
RATE_COLUMNS = ["activity", "starts", "failed", "timed_out", "cancelled", "failure_rate"]
BATCH_COLUMNS = ["state", "exit_code", "outcome", "jobs"]
# what `by` may name: the member table's and the event's columns (`GROUP_COLUMNS`' keys)
_BY_SQL = {"facility": "e.facility", "vo": "m.vo", "group": "m.grp", "member": "e.member_id"}


def engine_of(source: Engine | QueryBase) -> Engine:
    """The engine of a query object (the dashboard holds one) or the engine itself."""
    return source if isinstance(source, Engine) else source._engine


def outcome(kind: str, attrs: dict[str, Any]) -> str | None:
    """One start's outcome (one of `OUTCOMES`), or None when it is no start (a requeued run)."""
    if kind == "batch_job":
        if attrs.get("requeued") is True:
            return None
        state = str(attrs.get("state", "COMPLETED")).upper()
        if state in CANCELLED_STATES:
            return "cancelled"
        if state in TIMEOUT_STATES:
            return "timed_out"
        code = attrs.get("exit_code", 0)
        return "ok" if state == "COMPLETED" and code in (0, None) else "failed"
    value = attrs.get("outcome", "ok")
    if kind == "spawn":
        return {"ok": "ok", "failed": "failed", "timeout": "timed_out"}.get(value, "cancelled")
    return {"ok": "ok", "erred": "failed"}.get(value, "cancelled")


def _by(by: str) -> str:
    if by not in GROUP_COLUMNS:
        raise QueryError(f"cannot group failures by {by!r}; use one of {', '.join(GROUP_COLUMNS)}")
    return _BY_SQL[by]


def _starts(
    source: Engine | QueryBase, p: Principal, start: float, end: float, by: str
) -> pd.DataFrame:
    """Every start of the three kinds that began in [start, end): key, kind, outcome, state,
    exit_code (the last two for batch jobs only)."""
    column = _by(by)
    cond, params = scope_sql(p, member="e.member_id", vo="m.vo", facility="e.facility")
    rows: list[tuple[Any, ...]] = []
    with read_connection(engine_of(source)) as conn:
        result = conn.execute(
            text(
                f"SELECT {column}, e.kind, e.attrs FROM event e "
                "JOIN member m ON m.id = e.member_id "
                "WHERE e.kind IN ('batch_job', 'spawn', 'dask_computation') "
                f'AND e."end" IS NOT NULL AND e.start >= :start AND e.start < :end AND {cond}'
            ),
            {"start": start, "end": end, **params},
        )
        for key, kind, raw in result:
            attrs = json.loads(raw or "{}")
            got = outcome(kind, attrs)
            if got is None:
                continue
            batch = kind == "batch_job"
            state = str(attrs.get("state", "COMPLETED")).upper() if batch else ""
            code = int(attrs.get("exit_code") or 0) if batch else 0
            rows.append((key, ACTIVITIES[kind], got, state, code))
    return pd.DataFrame(rows, columns=[by, "activity", "outcome", "state", "exit_code"])


def failure_rates(
    source: Engine | QueryBase, p: Principal, start: float, end: float, by: str = "member"
) -> pd.DataFrame:
    """One row per (`by` key, activity) with starts in [start, end): starts, failed (timed out
    included), timed_out, cancelled, failure_rate = failed / starts; sorted by key, activity."""
    df = _starts(source, p, start, end, by)
    if df.empty:
        return pd.DataFrame(columns=[by, *RATE_COLUMNS])
    counts = pd.crosstab([df[by], df["activity"]], df["outcome"])
    counts = counts.reindex(columns=list(OUTCOMES), fill_value=0)
    out = counts.rename_axis(columns=None).reset_index()
    out["starts"] = counts.sum(axis=1).to_numpy()
    out["failed"] = out["failed"] + out["timed_out"]
    out["failure_rate"] = out["failed"] / out["starts"]
    for c in ("starts", "failed", "timed_out", "cancelled"):
        out[c] = out[c].astype(int)
    return out[[by, *RATE_COLUMNS]].sort_values([by, "activity"], ignore_index=True)


def batch_failures(
    source: Engine | QueryBase, p: Principal, start: float, end: float, by: str = "member"
) -> pd.DataFrame:
    """Batch jobs that began in [start, end) and did not succeed, per (`by` key, state, exit
    code): outcome (failed, timed_out, cancelled) and jobs; most jobs first."""
    df = _starts(source, p, start, end, by)
    df = df[(df["activity"] == "batch") & (df["outcome"] != "ok")]
    if df.empty:
        return pd.DataFrame(columns=[by, *BATCH_COLUMNS])
    out = df.groupby([by, "state", "exit_code", "outcome"]).size().reset_index(name="jobs")
    out["exit_code"] = out["exit_code"].astype(int)
    out["jobs"] = out["jobs"].astype(int)
    return out.sort_values(
        ["jobs", by, "state", "exit_code"], ascending=[False, True, True, True], ignore_index=True
    )[[by, *BATCH_COLUMNS]]
