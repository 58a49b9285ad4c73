"""Lists of single batch jobs from the event table (kind `batch_job`), for the dashboard's
per-job table: the newest jobs that started in a window, at most `limit` of them, read with
the (member_id, start) index and scoped like every read: a member sees their own jobs, a VO
manager the VO's, a facility admin the facility's.

CPU efficiency = CPU seconds / (wall seconds x cores); unknown (None) when the job did not
report CPU time, its wall time or its cores."""

from __future__ import annotations

import json

import pandas as pd
from sqlalchemy import Engine, text

from afmon.aggregator.query.base import Principal, QueryBase, scope_sql
from afmon.aggregator.query.failures import engine_of
from afmon.aggregator.store.db import read_connection

MAX_JOBS = 200
JOB_COLUMNS = ["id", "member_id", "display_name", "facility", "start", "end", "state",
               "exit_code", "wall_seconds", "cores", "cpu_seconds", "cpu_efficiency",
               "gpus"]  # fmt: skip


def _number(value: object) -> float | None:
    try:
        return None if value is None else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def efficiency(cpu: float | None, wall: float | None, cores: float | None) -> float | None:
    """CPU / (wall x cores), or None when any of them is unknown or the product is 0."""
    if cpu is None or wall is None or cores is None or wall * cores <= 0:
        return None
    return cpu / (wall * cores)


def batch_jobs(
    source: Engine | QueryBase, p: Principal, start: float, end: float, limit: int = MAX_JOBS
) -> pd.DataFrame:
    """The newest `limit` batch jobs `p` may see that started in [start, end), newest first:
    `JOB_COLUMNS`. A running job has no end; its wall time is the one it reported, if any."""
    cond, params = scope_sql(p, member="e.member_id", vo="m.vo", facility="e.facility")
    rows = []
    with read_connection(engine_of(source)) as conn:
        result = conn.execute(
            text(
                'SELECT e.id, e.member_id, m.display_name, e.facility, e.start, e."end", '
                "e.attrs FROM event e JOIN member m ON m.id = e.member_id "
                "WHERE e.kind = 'batch_job' AND e.start >= :start AND e.start < :end "
                f"AND {cond} ORDER BY e.start DESC, e.id LIMIT :limit"
            ),
            {"start": start, "end": end, "limit": int(limit), **params},
        )
        for id_, member, name, facility, t0, t1, raw in result:
            attrs = json.loads(raw or "{}")
            wall = _number(attrs.get("wall_seconds"))
            if wall is None and t1 is not None:
                wall = float(t1) - float(t0)
            cores, cpu = _number(attrs.get("cores")), _number(attrs.get("cpu_seconds"))
            code = attrs.get("exit_code")
            rows.append(
                (
                    id_,
                    member,
                    name,
                    facility,
                    float(t0),
                    None if t1 is None else float(t1),
                    str(attrs.get("state") or ("RUNNING" if t1 is None else "")),
                    None if code is None else int(code),
                    wall,
                    cores,
                    cpu,
                    efficiency(cpu, wall, cores),
                    int(attrs.get("gpus") or 0),
                )  # fmt: skip
            )
    return pd.DataFrame(rows, columns=JOB_COLUMNS)
