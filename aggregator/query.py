"""The one query layer: every reader (dashboard, API, reports, alerts) asks here.

Each call takes a `Principal` and sees only what that principal may see: a
member only their own usage, a VO manager their VO, a facility admin their
facility (or every facility when the admin is not bound to one). Readers get
rollups from the ledger; raw samples are never read to answer a question.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
from sqlalchemy import Engine, text

from aggregator import latency
from aggregator.db import read_connection
from aggregator.ledger import HOUR, counter_increases
from aggregator.rollup import DAY
from aggregator.schema import RESOURCES

Role = Literal["member", "vo_manager", "facility_admin"]
GROUP_COLUMNS = {"facility": "facility", "vo": "vo", "group": "grp", "member": "member_id"}
STEPS = {"hour": HOUR, "day": 24 * HOUR}
# data access (docs/data.md): resource -> (direction, source, via); host IO is local
DATA_RESOURCES = {
    "io_read_bytes": ("read", "local", "posix"),
    "io_write_bytes": ("written", "local", "posix"),
    **{f"data_read_{s}_bytes": ("read", s, "xrootd") for s in ("local", "cache", "remote")},
    **{f"data_written_{s}_bytes": ("written", s, "xrootd") for s in ("local", "cache", "remote")},
}
SERVER_METRICS = {  # XRootD server series -> data_servers column
    "xrootd_server_read_bytes": "read_bytes",
    "xrootd_server_written_bytes": "written_bytes",
    "xrootd_server_files_opened": "files_opened",
    "xrootd_server_link_out_bytes": "link_out_bytes",
    "xrootd_server_link_in_bytes": "link_in_bytes",
    "xrootd_server_restarts": "restarts",
}
OTHERS = "__others__"  # the key of everything a folded query did not keep one by one
BATCH_RESOURCES = (
    "batch_jobs", "batch_job_seconds", "batch_wall_core_seconds", "batch_cpu_seconds",
    "batch_gpu_seconds", "batch_cpu_hs23_seconds", "batch_wall_core_hs23_seconds",
)  # fmt: skip


_SESSIONS_IN_RANGE = (
    'e.kind = \'session\' AND e.start < :end AND (e."end" IS NULL OR e."end" >= :start)'
)


class QueryError(ValueError):
    pass


@dataclass(frozen=True)
class Principal:
    """Who is asking. `facility=None` on an admin means every facility."""

    role: Role
    member_id: str | None = None
    vo: str | None = None
    facility: str | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.role == "member" and not self.member_id:
            raise QueryError("a member principal needs a member_id")
        if self.role == "vo_manager" and not self.vo:
            raise QueryError("a VO manager principal needs a vo")


LOCAL_ADMIN = Principal("facility_admin", name="local admin (demo mode)")


def _scope(
    p: Principal, member: str = "member_id", vo: str = "vo", facility: str = "facility"
) -> tuple[str, dict[str, Any]]:
    """SQL condition and parameters restricting rows to what `p` may see; the
    arguments name the columns that hold the member, the VO and the facility."""
    conds: list[str] = []
    params: dict[str, Any] = {}
    if p.role == "member":
        conds.append(f"{member} = :p_member")
        params["p_member"] = p.member_id
    elif p.role == "vo_manager":
        conds.append(f"{vo} = :p_vo")
        params["p_vo"] = p.vo
    if p.facility is not None:
        conds.append(f"{facility} = :p_facility")
        params["p_facility"] = p.facility
    return (" AND ".join(conds) or "1 = 1"), params


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
    parts = " UNION ALL ".join(
        [
            part("usage", "hour", "l_s", "l_d1"),
            part("usage_day", "day", "l_d1", "l_d2"),
            part("usage", "hour", "l_d2", "l_e"),
        ]
    )
    cols = "".join(f"{a}, " for a in aliases)
    sql = f"SELECT {cols}SUM(amount) AS amount FROM ({parts}) AS u{group}{order}"
    return sql, {"l_s": s, "l_d1": d1, "l_d2": d2, "l_e": e}


def _fold(column: str, keep: tuple[str, ...] | None) -> tuple[str, dict[str, Any]]:
    """A key expression: `column`, or with `keep` the kept values and OTHERS for the rest."""
    if keep is None:
        return column, {}
    names = {f"keep{i}": k for i, k in enumerate(keep)} or {"keep0": ""}
    marks = ", ".join(":" + k for k in names)
    return f"CASE WHEN {column} IN ({marks}) THEN {column} ELSE '{OTHERS}' END", names


class Query:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _frame(self, sql: str, params: dict[str, Any]) -> pd.DataFrame:
        with read_connection(self._engine) as conn:
            result = conn.execute(text(sql), params)
            # plain tuples: pandas probes each SQLAlchemy Row for attributes, ~6x slower
            return pd.DataFrame(list(map(tuple, result)), columns=list(result.keys()))

    @staticmethod
    def _check(resource: str | None, by: tuple[str, ...] = ()) -> None:
        if resource is not None and resource not in RESOURCES:
            raise QueryError(f"unknown resource {resource!r}; known: {', '.join(RESOURCES)}")
        for b in by:
            if b not in GROUP_COLUMNS:
                raise QueryError(f"cannot group by {b!r}; use one of {', '.join(GROUP_COLUMNS)}")

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
        cond, params = _scope(p)
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
        cond, params = _scope(p)
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
        cond, params = _scope(p, member="m.id", vo="m.vo", facility="a.facility")
        return self._frame(
            'SELECT DISTINCT m.id AS member_id, m.display_name, m.vo, m.grp AS "group" '
            "FROM member m LEFT JOIN account a ON a.member_id = m.id "
            f"WHERE {cond} ORDER BY m.vo, m.display_name",
            params,
        )

    def active_members(self, p: Principal, start: float, end: float) -> int:
        """Members with any usage in [start, end) (ledger amounts are never negative)."""
        cond, params = _scope(p)
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
        cond, params = _scope(p)
        df = self._frame(
            f"SELECT DISTINCT facility FROM usage WHERE {cond} ORDER BY facility", params
        )
        return df["facility"].tolist()

    def nodes(self, p: Principal) -> pd.DataFrame:
        """Node capacity and agent liveness; facility admins only (empty for others)."""
        cols = [
            "facility",
            "node",
            "cpu_cores",
            "memory_bytes",
            "hepscore23_per_core",
            "cpu_busy_ratio",
            "updated",
        ]
        if p.role != "facility_admin":
            return pd.DataFrame(columns=cols)
        cond, params = ("facility = :f", {"f": p.facility}) if p.facility else ("1 = 1", {})
        return self._frame(
            f"SELECT {', '.join(cols)} FROM node WHERE {cond} ORDER BY facility, node", params
        )

    def agents(self, p: Principal) -> pd.DataFrame:
        cols = ["agent_id", "facility", "node", "last_seen", "last_seq", "batches", "samples"]
        if p.role != "facility_admin":
            return pd.DataFrame(columns=cols)
        cond, params = ("facility = :f", {"f": p.facility}) if p.facility else ("1 = 1", {})
        return self._frame(
            f"SELECT {', '.join(cols)} FROM agent WHERE {cond} ORDER BY node", params
        )

    def agent_receipts(self, p: Principal, start: float, end: float) -> pd.DataFrame:
        """When each node's applied batches arrived (server clock) in [start, end), plus each
        node's last arrival before `start`; facility admins only (empty for others)."""
        cols = ["facility", "node", "received_at"]
        if p.role != "facility_admin":
            return pd.DataFrame(columns=cols)
        cond, params = ("a.facility = :f", {"f": p.facility}) if p.facility else ("1 = 1", {})
        join = f"FROM applied_batch b JOIN agent a ON a.agent_id = b.agent_id WHERE {cond}"
        return self._frame(
            f"SELECT a.facility, a.node, b.received_at {join} "
            "AND b.received_at >= :start AND b.received_at < :end "
            f"UNION ALL SELECT a.facility, a.node, MAX(b.received_at) {join} "
            "AND b.received_at < :start GROUP BY a.facility, a.node "
            "ORDER BY 1, 2, 3",
            {"start": start, "end": end, **params},
        )

    def sessions(
        self, p: Principal, start: float, end: float, newest: int | None = None
    ) -> pd.DataFrame:
        """Interactive sessions that overlap [start, end): member, times, attributes; oldest
        first, or with `newest` only that many, newest first."""
        cond, params = _scope(p, member="e.member_id", vo="m.vo", facility="e.facility")
        order = "e.start" if newest is None else f"e.start DESC, e.id LIMIT {int(newest)}"
        return self._frame(
            "SELECT e.facility, e.id, e.member_id, m.display_name, e.local_user, e.node, "
            'e.start, e."end" FROM event e JOIN member m ON m.id = e.member_id '
            f"WHERE {_SESSIONS_IN_RANGE} AND {cond} ORDER BY {order}",
            {"start": start, "end": end, **params},
        )

    def session_count(self, p: Principal, start: float, end: float) -> int:
        """How many sessions `sessions` would return."""
        cond, params = _scope(p, member="e.member_id", vo="m.vo", facility="e.facility")
        with read_connection(self._engine) as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT COUNT(*) FROM event e JOIN member m ON m.id = e.member_id "
                        f"WHERE {_SESSIONS_IN_RANGE} AND {cond}"
                    ),
                    {"start": start, "end": end, **params},
                ).scalar_one()
            )

    def data_usage(
        self, p: Principal, start: float, end: float, by: str = "member", step: str | None = None
    ) -> pd.DataFrame:
        """Bytes moved in [start, end) by source (docs/data.md): columns [time], `by`, source
        (local/cache/remote), via (posix: the host probe's IO; xrootd), direction, amount (B).
        Host IO is source "local"; each byte is in exactly one ledger resource."""
        self._check(None, (by,))
        cond, params = _scope(p)
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

    def data_servers(self, p: Principal, start: float, end: float) -> pd.DataFrame:
        """Per XRootD server (node-level series, no user): what its counters rose by in
        [start, end). Facility admins only (empty for others): these totals mix every member."""
        cols = ["facility", "server", "source", *SERVER_METRICS.values()]
        if p.role != "facility_admin":
            return pd.DataFrame(columns=cols)
        names = {f"m{i}": m for i, m in enumerate(SERVER_METRICS)}
        cond = "s.facility = :f AND " if p.facility else ""
        sel = (
            f"SELECT s.id, s.facility, s.metric, s.labels, x.time, x.value FROM series s "
            f"JOIN sample x ON x.series_id = s.id WHERE {cond}s.metric IN "
            f"({', '.join(':' + k for k in names)}) AND "
        )
        raw = self._frame(  # each series' samples in the window, after its last one before
            f"{sel}x.time >= :start AND x.time < :end UNION ALL {sel}x.time = (SELECT MAX(time) "
            "FROM sample WHERE series_id = s.id AND time < :start) ORDER BY 1, 5",
            {"start": start, "end": end, "f": p.facility, **names},
        )
        rows: dict[tuple[str, str, str], dict[str, float]] = {}
        for (_sid, fac, metric, labels), g in raw.groupby(["id", "facility", "metric", "labels"]):
            lab = json.loads(labels)
            before = g[g["time"] < start]["value"]
            inside = g[g["time"] >= start]
            prev = float(before.iloc[-1]) if len(before) else 0.0  # counters start at zero
            rise = sum(
                inc
                for _t, inc in counter_increases(
                    inside["time"].tolist(), inside["value"].tolist(), start - 1, prev, None
                )
            )
            key = (fac, lab.get("server", "?"), lab.get("source", "?"))
            rows.setdefault(key, dict.fromkeys(SERVER_METRICS.values(), 0.0))
            rows[key][SERVER_METRICS[metric]] += rise
        out = pd.DataFrame(
            [{"facility": f, "server": s, "source": src, **v} for (f, s, src), v in rows.items()],
            columns=cols,
        )
        return out.sort_values(["read_bytes", "server"], ascending=[False, True], ignore_index=True)

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

    def latency_buckets(
        self,
        p: Principal,
        kind: str,
        start: float,
        end: float,
        by: tuple[str, ...] = (),
        step: str | None = None,
    ) -> pd.DataFrame:
        """Latency buckets of `kind` summed over the hours in [start, end) (and per `step`):
        columns [time,] `by`..., le, count, sum_seconds (aggregator/latency.py)."""
        if kind not in latency.KINDS:
            raise QueryError(f"unknown latency kind {kind!r}; known: {', '.join(latency.KINDS)}")
        cols = {**GROUP_COLUMNS, "profile": "profile"}
        bad = [b for b in by if b not in cols]
        if bad or (step is not None and step not in STEPS):
            raise QueryError(f"group latencies by {', '.join(cols)} and step by {', '.join(STEPS)}")
        keys = [f'{cols[b]} AS "{b}"' for b in by]
        if step is not None:
            keys.insert(0, f"(hour / {STEPS[step]}) * {STEPS[step]} AS step_start")
        group = "".join(n + ", " for n in (["step_start"] if step else []) + [f'"{b}"' for b in by])
        cond, params = _scope(p)
        df = self._frame(
            f"SELECT {''.join(k + ', ' for k in keys)}le, SUM(count) AS count, "
            "SUM(sum_seconds) AS sum_seconds FROM latency WHERE kind = :kind "
            f"AND hour >= :start AND hour < :end AND {cond} "
            f"GROUP BY {group}le ORDER BY {group}le",
            {"kind": kind, "start": int(start), "end": int(end), **params},
        )
        if step is not None:
            df.insert(
                0, "time", pd.to_datetime(df.pop("step_start").astype("int64"), unit="s", utc=True)
            )
        return df.astype({"le": float, "count": "int64", "sum_seconds": float})

    def latency_percentiles(
        self,
        p: Principal,
        kind: str,
        start: float,
        end: float,
        by: tuple[str, ...] = (),
        step: str | None = None,
        quantiles: tuple[float, ...] = (0.5, 0.9, 0.99),
        slo_seconds: float | None = None,
    ) -> pd.DataFrame:
        """Per group (and step): count, mean_seconds, p50_seconds..., within_slo_ratio."""
        df = self.latency_buckets(p, kind, start, end, by, step)
        return latency.summarize(df, (("time",) if step else ()) + by, quantiles, slo_seconds)

    def latency_events(
        self, p: Principal, kind: str, start: float, end: float, limit: int = 20
    ) -> pd.DataFrame:
        """The waits of `kind` that began in [start, end), one by one, slowest first:
        facility, id, member_id, display_name, start, end, seconds, profile, outcome."""
        if kind not in latency.EVENTS_OF_KIND:
            raise QueryError(f"latency kind {kind!r} has no per-event record")
        event_kind, like = latency.EVENTS_OF_KIND[kind]
        cond, params = _scope(p, member="e.member_id", vo="m.vo", facility="e.facility")
        if like is not None:
            cond += " AND e.id LIKE :like"
            params["like"] = like
        df = self._frame(
            'SELECT e.facility, e.id, e.member_id, m.display_name, e.start, e."end", '
            'e."end" - e.start AS seconds, e.attrs FROM event e '
            "JOIN member m ON m.id = e.member_id WHERE e.kind = :ekind "
            f'AND e."end" IS NOT NULL AND e.start >= :start AND e.start < :end AND {cond} '
            'ORDER BY e."end" - e.start DESC, e.start LIMIT :limit',
            {"ekind": event_kind, "start": start, "end": end, "limit": int(limit), **params},
        )
        attrs = [latency.attrs_of(a) for a in df.pop("attrs")]
        df["profile"] = [a.get("profile", latency.DEFAULT_PROFILE) for a in attrs]
        df["outcome"] = [a.get("outcome", "ok") for a in attrs]
        return df

    def alerts(self, p: Principal, statuses: tuple[str, ...] = ("firing",)) -> pd.DataFrame:
        """Alerts (alerts/) in these statuses, newest first: a facility admin sees their
        facility's, a VO manager those labelled with their VO, a member none."""
        cond, params = _scope(p, member="NULL")
        names = {f"s{i}": s for i, s in enumerate(statuses)}
        return self._frame(
            "SELECT rule, status, severity, facility, vo, labels, value, active_since, fired_at, "
            f"resolved_at, summary, description FROM alert WHERE {cond} "
            f"AND status IN ({', '.join(':' + k for k in names)}) "
            "ORDER BY COALESCE(resolved_at, fired_at, active_since) DESC, rule, labels",
            {**params, **names},
        )

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
        cond, params = _scope(p)
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
        cond, params = _scope(p)
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
        cond, params = _scope(p)
        return not self._frame(f"SELECT 1 AS x FROM usage WHERE {cond} LIMIT 1", params).empty

    def capacity(self, p: Principal) -> pd.DataFrame:
        """What the facilities (the principal's one, for a bound admin) offer, as their agents
        last reported it: facility, nodes, cpu_cores, memory_bytes, gpus. Capacity is no one's
        personal data, so every principal sees it."""
        cond, params = ("facility = :f", {"f": p.facility}) if p.facility else ("1 = 1", {})
        nodes = self._frame(
            "SELECT facility, COUNT(*) AS nodes, SUM(cpu_cores) AS cpu_cores, "
            f"SUM(memory_bytes) AS memory_bytes FROM node WHERE {cond} GROUP BY facility",
            params,
        )
        gpus = self._frame(
            "SELECT facility, COUNT(*) AS gpus FROM series "
            f"WHERE metric = 'gpu_info' AND {cond} GROUP BY facility",
            params,
        )
        out = nodes.merge(gpus, on="facility", how="outer")
        out = out.astype({"cpu_cores": float, "memory_bytes": float}).fillna(
            {"nodes": 0, "gpus": 0, "cpu_cores": 0.0, "memory_bytes": 0.0}
        )
        return out.sort_values("facility", ignore_index=True)

    def open_events(self, p: Principal, kinds: tuple[str, ...]) -> dict[str, int]:
        """How many events of each kind are open (started, no end yet): running sessions,
        live Dask clusters; within the principal's scope."""
        cond, params = _scope(p, member="e.member_id", vo="m.vo", facility="e.facility")
        names = {f"k{i}": k for i, k in enumerate(kinds)}
        df = self._frame(
            "SELECT e.kind, COUNT(*) AS n FROM event e JOIN member m ON m.id = e.member_id "
            f'WHERE e."end" IS NULL AND e.kind IN ({", ".join(":" + k for k in names)}) '
            f"AND {cond} GROUP BY e.kind",
            {**params, **names},
        )
        counts = dict(zip(df["kind"], df["n"], strict=True))
        return {k: int(counts.get(k, 0)) for k in kinds}

    # -- GPUs (docs/gpu.md) ---------------------------------------------------------------

    def gpu_utilisation(
        self, p: Principal, start: float, end: float, step: float = HOUR
    ) -> pd.DataFrame:
        """Mean `gpu_utilization_ratio` per device and step: time, facility, node, gpu,
        busy_ratio. Device data: facility admins only (empty for others). The one reader of
        raw samples (the embedded store, within retention): there is no device rollup."""
        cols = ["time", "facility", "node", "gpu", "busy_ratio"]
        if p.role != "facility_admin":
            return pd.DataFrame(columns=cols)
        cond, params = ("s.facility = :f", {"f": p.facility}) if p.facility else ("1 = 1", {})
        w = max(1, int(step))
        df = self._frame(
            f"SELECT (CAST(x.time AS BIGINT) / {w}) * {w} AS bucket, s.facility, s.node, "
            "s.labels, AVG(x.value) AS busy_ratio "
            "FROM sample x JOIN series s ON s.id = x.series_id "
            "WHERE s.metric = 'gpu_utilization_ratio' AND x.time >= :start AND x.time < :end "
            f"AND {cond} GROUP BY bucket, s.facility, s.node, s.labels ORDER BY bucket",
            {"start": start, "end": end, **params},
        )
        df.insert(0, "time", pd.to_datetime(df.pop("bucket").astype("int64"), unit="s", utc=True))
        df.insert(3, "gpu", [json.loads(lab).get("gpu", "") for lab in df.pop("labels")])
        return df[cols]

    def gpu_layout(self, p: Principal) -> pd.DataFrame:
        """GPUs and MIG instances as their agents last reported them (admins only): facility,
        node, gpu, parent, kind, name, model, slices, busy_source, fraction, last_seen."""
        cols = ["facility", "node", "gpu", "parent", "kind", "name", "model", "slices",
                "busy_source", "fraction", "last_seen"]  # fmt: skip
        if p.role != "facility_admin":
            return pd.DataFrame(columns=cols)
        cond, params = ("facility = :f", {"f": p.facility}) if p.facility else ("1 = 1", {})
        rows = self._frame(
            "SELECT facility, node, metric, labels, last_value, last_time FROM series "
            f"WHERE metric IN ('gpu_info', 'gpu_mig_info') AND {cond} ORDER BY node, labels",
            params,
        )
        out = []
        for r in rows.itertuples():
            lab = json.loads(r.labels)
            mig = r.metric == "gpu_mig_info"
            out.append([r.facility, r.node, lab.get("gpu", ""), lab.get("parent", ""),
                        "MIG instance" if mig else "GPU", lab.get("name", ""),
                        lab.get("model", ""), lab.get("slices", ""), lab.get("busy", ""),
                        r.last_value if mig else 1.0, r.last_time])  # fmt: skip
        return pd.DataFrame(out, columns=cols)

    def gpu_idle(self, p: Principal, start: float, end: float) -> pd.DataFrame:
        """Idle-but-held GPU intervals overlapping [start, end), open ones first: member_id,
        display_name, node, gpu, model, start, end (None while it lasts), seconds so far."""
        cond, params = _scope(p, member="e.member_id", vo="m.vo", facility="e.facility")
        df = self._frame(
            "SELECT e.facility, e.member_id, m.display_name, e.local_user, e.node, e.start, "
            'e."end", e.attrs FROM event e JOIN member m ON m.id = e.member_id '
            "WHERE e.kind = 'gpu_idle' AND e.start < :end "
            f'AND (e."end" IS NULL OR e."end" >= :start) AND {cond} '
            'ORDER BY e."end" IS NOT NULL, e.start',
            {"start": start, "end": end, **params},
        )
        attrs = [json.loads(a) for a in df.pop("attrs")]
        df["gpu"] = [a.get("gpu", "") for a in attrs]
        df["model"] = [a.get("model", "") for a in attrs]
        return df
