"""The one query layer: every reader (dashboard, API, reports, alerts) asks here.

Each call takes a `Principal` and sees only what that principal may see: a
member only their own usage, a VO manager their VO, a facility admin their
facility (or every facility when the admin is not bound to one). Readers get
rollups from the ledger; raw samples are never read to answer a question.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from sqlalchemy import text

from afmon.aggregator.query.base import (
    GROUP_COLUMNS,
    LOCAL_ADMIN,
    STEPS,
    Principal,
    QueryError,
    Role,
    scope_sql,
)
from afmon.aggregator.query.batch import batch_by_sql, checked_by, widen
from afmon.aggregator.query.operations import SERVER_METRICS, OperationsQueries
from afmon.aggregator.store.db import read_connection
from afmon.aggregator.store.rollup import DAY
from afmon.aggregator.store.schema import RESOURCES

__all__ = [
    "BATCH_RESOURCES", "DATA_RESOURCES", "LOCAL_ADMIN", "OTHERS", "SERVER_METRICS",
    "Principal", "Query", "QueryError", "Role",
]  # fmt: skip

# data access (docs/data.md): resource -> (direction, source, via); host IO is local
DATA_RESOURCES = {
    "io_read_bytes": ("read", "local", "posix"),
    "io_write_bytes": ("written", "local", "posix"),
    **{f"data_read_{s}_bytes": ("read", s, "xrootd") for s in ("local", "cache", "remote")},
    **{f"data_written_{s}_bytes": ("written", s, "xrootd") for s in ("local", "cache", "remote")},
}
OTHERS = "__others__"  # the key of everything a folded query did not keep one by one
BATCH_RESOURCES = (
    "batch_jobs", "batch_job_seconds", "batch_wall_core_seconds", "batch_cpu_seconds",
    "batch_gpu_seconds", "batch_cpu_hs23_seconds", "batch_wall_core_hs23_seconds",
)  # fmt: skip


def _ledger_sums(
    keys: Sequence[str], start: float, end: float, daily: bool, where: str = ""
) -> tuple[str, dict[str, Any]]:
    """SQL of SUM(amount) of the ledger's rows in [start, end) per `keys`, ordered
    by them. `keys` are SQL expressions over the ledger's columns, `{t}` standing for the time
    column; they come out as `k0, k1, ...`. With `daily`, the whole UTC days inside are read from
    the daily rollup (24 times fewer rows) and only the edges from the hours, so a `{t}` key
    must not split a day. `where` (" AND ...") applies to every part. Each part is summed on its
    own, on its index, and the parts' sums are added: summing a UNION of raw rows would make
    SQLite materialise every row first (several times slower on a month of members). The
    unit is not read (it is the resource's, in RESOURCES): reading it would leave the covering
    indexes for the table, four times slower."""
    s, e = int(start), int(end)
    aliases = [f"k{i}" for i in range(len(keys))]
    listed = ", ".join(aliases)
    group = f" GROUP BY {listed}" if keys else ""
    order = f" ORDER BY {listed}" if keys else ""

    def part(table: str, t: str, lo: str, hi: str) -> str:
        cols = "".join(f"{k.format(t=t)} AS {a}, " for k, a in zip(keys, aliases, strict=True))
        return (
            f"SELECT {cols}SUM(amount) AS amount FROM {table} "
            f"WHERE {t} >= :{lo} AND {t} < :{hi}{where}{group}"
        )

    d1, d2 = -(-s // DAY) * DAY, e // DAY * DAY
    if not daily or d1 >= d2:
        return part("usage", "hour", "l_s", "l_e") + order, {"l_s": s, "l_e": e}
    # an edge of no hours (a window from midnight to midnight: weeks, months) is left out:
    # SQLite would read its empty range of the hourly table by skip-scanning the primary key
    parts = [("usage", "hour", "l_s", "l_d1")] if s < d1 else []
    parts.append(("usage_day", "day", "l_d1", "l_d2"))
    parts += [("usage", "hour", "l_d2", "l_e")] if d2 < e else []
    bounds = {"l_s": s, "l_d1": d1, "l_d2": d2, "l_e": e}
    span = {name: bounds[name] for *_, lo, hi in parts for name in (lo, hi)}
    if len(parts) == 1:
        return part(*parts[0]) + order, span
    cols = "".join(f"{a}, " for a in aliases)
    union = " UNION ALL ".join(part(*p) for p in parts)
    return f"SELECT {cols}SUM(amount) AS amount FROM ({union}) AS u{group}{order}", span


def _fold(column: str, keep: tuple[str, ...] | None) -> tuple[str, dict[str, Any]]:
    """A key expression: `column`, or with `keep` the kept values and OTHERS for the rest."""
    if keep is None:
        return column, {}
    names = {f"keep{i}": k for i, k in enumerate(keep)} or {"keep0": ""}
    marks = ", ".join(":" + k for k in names)
    return f"CASE WHEN {column} IN ({marks}) THEN {column} ELSE '{OTHERS}' END", names


class Query(OperationsQueries):
    """Every read: the ledger's here, facility operations' in `OperationsQueries`."""

    def usage_over_time(
        self,
        p: Principal,
        resource: str,
        start: float,
        end: float,
        by: str = "vo",
        step: str = "hour",
        keep: tuple[str, ...] | None = None,
    ) -> pd.DataFrame:
        """Columns: time (UTC), `by`, amount, unit; one row per step and key. With `keep`,
        keys not in it are summed per step as one key, OTHERS (a stack still sums to all)."""
        self._check(resource, (by,))
        if step not in STEPS:
            raise QueryError(f"step must be one of {', '.join(STEPS)}")
        cond, params = scope_sql(p)
        key, more = _fold(GROUP_COLUMNS[by], keep)
        return self._over_time(
            resource, start, end, step, by, key, f" AND resource = :resource AND {cond}",
            {"resource": resource, **params, **more},
        )  # fmt: skip

    def _over_time(
        self, resource: str, start: float, end: float, step: str, by: str, key: str,
        where: str, params: dict[str, Any],
    ) -> pd.DataFrame:  # fmt: skip
        width = STEPS[step]
        sql, span = _ledger_sums([f"({{t}} / {width}) * {width}", key], start, end,
                                 width % DAY == 0, where)  # fmt: skip
        df = self._frame(sql, {**span, **params})
        df.insert(0, "time", pd.to_datetime(df.pop("k0").astype("int64"), unit="s", utc=True))
        df = df.rename(columns={"k1": by})
        df["unit"] = RESOURCES[resource].unit
        return df

    def usage_totals(
        self,
        p: Principal,
        start: float,
        end: float,
        by: tuple[str, ...] = ("facility", "vo", "group", "member"),
        resources: tuple[str, ...] | None = None,
    ) -> pd.DataFrame:
        """Columns: `by`..., resource, amount, unit."""
        self._check(None, by)
        for r in resources or ():
            self._check(r)
        cond, params = scope_sql(p)
        res_cond = ""
        if resources:
            names = {f"r{i}": r for i, r in enumerate(resources)}
            res_cond = f" AND resource IN ({', '.join(':' + k for k in names)})"
            params.update(names)
        return self._totals(by, start, end, f"{res_cond} AND {cond}", params)

    def _totals(
        self, by: tuple[str, ...], start: float, end: float, where: str, params: dict[str, Any]
    ) -> pd.DataFrame:
        keys = [*(GROUP_COLUMNS[b] for b in by), "resource"]
        sql, span = _ledger_sums(keys, start, end, True, where)
        df = self._frame(sql, {**span, **params})
        df = df.rename(columns={f"k{i}": name for i, name in enumerate([*by, "resource"])})
        df["unit"] = [RESOURCES[r].unit for r in df["resource"]]
        return df

    def members(self, p: Principal) -> pd.DataFrame:
        """Members visible to `p`: member_id, display_name, vo, group."""
        # members are not bound to a facility: a facility sees those with accounts there
        cond, params = scope_sql(p, member="m.id", vo="m.vo", facility="a.facility")
        return self._frame(
            'SELECT DISTINCT m.id AS member_id, m.display_name, m.vo, m.grp AS "group" '
            "FROM member m LEFT JOIN account a ON a.member_id = m.id "
            f"WHERE {cond} ORDER BY m.vo, m.display_name",
            params,
        )

    def active_members(self, p: Principal, start: float, end: float) -> int:
        """Members with any usage in [start, end) (ledger amounts are never negative)."""
        cond, params = scope_sql(p)
        names = {f"r{i}": r for i, r in enumerate(RESOURCES)}  # lets each part use its index
        res_cond = f" AND resource IN ({', '.join(':' + k for k in names)})"
        sql, span = _ledger_sums(["member_id"], start, end, True, f"{res_cond} AND {cond}")
        with read_connection(self._engine) as conn:
            return int(
                conn.execute(
                    text(f"SELECT COUNT(*) FROM ({sql}) AS m WHERE amount > 0"),
                    {**span, **params, **names},
                ).scalar_one()
            )

    def facilities(self, p: Principal) -> list[str]:
        cond, params = scope_sql(p)
        df = self._frame(
            f"SELECT DISTINCT facility FROM usage WHERE {cond} ORDER BY facility", params
        )
        return df["facility"].tolist()

    def data_usage(
        self, p: Principal, start: float, end: float, by: str = "member", step: str | None = None
    ) -> pd.DataFrame:
        """Bytes moved in [start, end) by source (docs/data.md): columns [time], `by`, source
        (local/cache/remote), via (posix: the host probe's IO; xrootd), direction, amount (B).
        Host IO is source "local"; each byte is in exactly one ledger resource."""
        self._check(None, (by,))
        cond, params = scope_sql(p)
        names = {f"r{i}": r for i, r in enumerate(DATA_RESOURCES)}
        where = f" AND resource IN ({', '.join(':' + k for k in names)}) AND {cond}"
        keys, daily = [GROUP_COLUMNS[by], "resource"], True
        if step:
            if step not in STEPS:
                raise QueryError(f"step must be one of {', '.join(STEPS)}")
            width = STEPS[step]
            keys.insert(0, f"({{t}} / {width}) * {width}")
            daily = width % DAY == 0
        sql, span = _ledger_sums(keys, start, end, daily, where)
        df = self._frame(sql, {**span, **params, **names})
        df.columns = [*(["time"] if step else []), by, "resource", "amount"]
        if step:
            df["time"] = pd.to_datetime(df["time"].astype("int64"), unit="s", utc=True)
        where_from = [DATA_RESOURCES[r] for r in df["resource"]]
        df["direction"] = [d for d, _s, _v in where_from]
        df["source"] = [s for _d, s, _v in where_from]
        df["via"] = [v for _d, _s, v in where_from]
        cols = [*(["time"] if step else []), by, "source", "via", "direction", "amount"]
        return df[cols]

    def batch_usage(
        self, p: Principal, start: float, end: float, by: str = "member"
    ) -> pd.DataFrame:
        """Batch jobs per `by` key in [start, end): `by`, then one column per BATCH_RESOURCES
        entry (base units) and cpu_efficiency = CPU / (wall x cores), NaN without wall time."""
        df = self.usage_totals(p, start, end, by=(by,), resources=BATCH_RESOURCES)
        wide = df.pivot_table(index=by, columns="resource", values="amount", aggfunc="sum")
        wide = wide.reindex(columns=list(BATCH_RESOURCES)).fillna(0.0)
        wall_core = wide["batch_wall_core_seconds"]
        wide["cpu_efficiency"] = wide["batch_cpu_seconds"] / wall_core.where(wall_core > 0)
        return wide.rename_axis(index=by, columns=None).reset_index()

    def batch_by(
        self, p: Principal, start: float, end: float, by: str | Sequence[str] = ("account",)
    ) -> pd.DataFrame:
        """Batch jobs per account, QoS and/or partition in [start, end) (`by`: one or more of
        them, optionally with facility, vo, group, member; "" where jobs had none): `by`...,
        one column per BATCH_RESOURCES entry and cpu_efficiency, as `batch_usage` has them.
        Summed over the dimensions they equal `batch_usage`'s (query/batch.py)."""
        keys = checked_by(by)
        sql, params = batch_by_sql(p, start, end, keys)
        return widen(self._frame(sql, params), keys, BATCH_RESOURCES)

    # -- one VO, and the live facility overview (dashboard VO and Facility pages) -----------

    def vo_usage_over_time(
        self, p: Principal, vo: str, resource: str, start: float, end: float,
        by: str = "group", step: str = "hour", group: str | None = None,
        members: tuple[str, ...] | None = None,
    ) -> pd.DataFrame:  # fmt: skip
        """`usage_over_time` of one VO (optionally one group, or only `members`): time, `by`,
        amount, unit; the principal's scope still applies, so a filter only ever narrows."""
        self._check(resource, (by,))
        if step not in STEPS:
            raise QueryError(f"step must be one of {', '.join(STEPS)}")
        cond, params = scope_sql(p)
        extra, more = self._vo_filter(vo, group, members)
        return self._over_time(
            resource, start, end, step, by, GROUP_COLUMNS[by],
            f" AND resource = :resource AND {cond}{extra}",
            {"resource": resource, **params, **more},
        )  # fmt: skip

    def vo_totals(
        self, p: Principal, vo: str, start: float, end: float,
        by: tuple[str, ...] = ("facility", "group", "member"),
        resources: tuple[str, ...] = (), group: str | None = None,
    ) -> pd.DataFrame:  # fmt: skip
        """`usage_totals` of one VO (optionally one group): `by`..., resource, amount, unit."""
        self._check(None, by)
        for r in resources:
            self._check(r)
        cond, params = scope_sql(p)
        extra, more = self._vo_filter(vo, group, None)
        names = {f"r{i}": r for i, r in enumerate(resources)}
        res_cond = f" AND resource IN ({', '.join(':' + k for k in names)})" if names else ""
        return self._totals(by, start, end, f"{res_cond} AND {cond}{extra}",
                            {**params, **more, **names})  # fmt: skip

    @staticmethod
    def _vo_filter(
        vo: str, group: str | None, members: tuple[str, ...] | None
    ) -> tuple[str, dict[str, Any]]:
        extra, params = " AND vo = :f_vo", {"f_vo": vo}
        if group:
            extra += " AND grp = :f_grp"
            params["f_grp"] = group
        if members is not None:
            ids = {f"f_m{i}": m for i, m in enumerate(members)} or {"f_m0": ""}
            extra += f" AND member_id IN ({', '.join(':' + k for k in ids)})"
            params.update(ids)
        return extra, params

    def has_usage(self, p: Principal) -> bool:
        """Whether the ledger holds any usage the principal may see, at any time (cheap: one
        row), so an empty view can say "no data yet" rather than "nothing in this range"."""
        cond, params = scope_sql(p)
        return not self._frame(f"SELECT 1 AS x FROM usage WHERE {cond} LIMIT 1", params).empty
