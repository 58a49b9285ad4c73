"""The query layer's reads of facility operations: nodes, agents, sessions, latencies,
alerts, XRootD servers, capacity and GPUs; principal-scoped like the ledger reads
(`Query` in aggregator/query/reads.py inherits these)."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
from sqlalchemy import text

from afmon.aggregator.core import latency
from afmon.aggregator.ledger.base import HOUR, counter_increases
from afmon.aggregator.query.base import (
    GROUP_COLUMNS,
    STEPS,
    Principal,
    QueryBase,
    QueryError,
    scope_sql,
)
from afmon.aggregator.store.db import read_connection

SERVER_METRICS = {  # XRootD server series -> data_servers column
    "xrootd_server_read_bytes": "read_bytes",
    "xrootd_server_written_bytes": "written_bytes",
    "xrootd_server_files_opened": "files_opened",
    "xrootd_server_link_out_bytes": "link_out_bytes",
    "xrootd_server_link_in_bytes": "link_in_bytes",
    "xrootd_server_restarts": "restarts",
}
# Server bytes that no user's record accounts for (protocol overhead, killed transfers), split
# by the series' `direction` label (collectors/probes/xrootd.py, docs/data.md).
UNATTRIBUTED = "xrootd_unattributed_bytes"
SERVER_COLUMNS = (*SERVER_METRICS.values(), "unattributed_out_bytes", "unattributed_in_bytes")
# AfmonAgentSilent's threshold (alerts/rules/afmon.yaml): a node whose agent has delivered
# nothing for longer is stale, its last report no longer what it holds now
NODE_STALE_SECONDS = 600.0
_AGENT_SEEN = "SELECT facility, node, MAX(last_seen) AS seen FROM agent GROUP BY facility, node"
_SESSIONS_IN_RANGE = (
    'e.kind = \'session\' AND e.start < :end AND (e."end" IS NULL OR e."end" >= :start)'
)


def stale_node(last_seen: float | None, now: float) -> bool:
    """Whether a node last heard from at `last_seen` is stale at `now` (never heard: stale)."""
    return last_seen is None or pd.isna(last_seen) or now - float(last_seen) > NODE_STALE_SECONDS


def _latency_keys(by: tuple[str, ...], step: str | None) -> list[str]:
    cols = (*GROUP_COLUMNS, "profile")
    bad = [b for b in by if b not in cols]
    if bad or (step is not None and step not in STEPS):
        raise QueryError(f"group latencies by {', '.join(cols)} and step by {', '.join(STEPS)}")
    return (["step_start"] if step is not None else []) + list(by)


def _with_time(df: pd.DataFrame, step: str | None) -> pd.DataFrame:
    if step is not None:
        df.insert(
            0, "time", pd.to_datetime(df.pop("step_start").astype("int64"), unit="s", utc=True)
        )
    return df


class LatencyWaits:
    """The waits of one latency kind that began in a window, within one principal's scope, of
    one population, as `OperationsQueries.latency_waits` read them once. Each method computes
    in memory what the query method of the same name would read and compute again:
    `percentiles` is `latency_percentiles`, `buckets` `latency_buckets`, `events`
    `latency_events` (of this population), for any grouping and step."""

    def __init__(
        self,
        kind: str,
        population: str,
        records: list[tuple[Any, ...]],
        buckets: list[tuple[Any, ...]],
        events: list[list[Any]],
    ) -> None:
        self.kind = kind
        self.population = population
        # (facility, vo, group, member, profile, start, seconds, ok): waits with a record
        self._records = records
        # (facility, vo, group, member, profile, hour, le, count, sum_seconds): the others
        self._buckets = buckets
        # the rows of `latency_events`, slowest first (every start in the window, this population)
        self._events = events
        # per step (None: the window; "": the exact start of each wait, the hour of a bucket)
        self._frames: dict[str | None, tuple[pd.DataFrame, pd.DataFrame]] = {}

    def frames(self, step: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(records, buckets): both have columns facility, vo, group, member, profile,
        step_start (the start of their `step`, or 0). records: + seconds, ok (the waits with a
        per-wait record, by the exact time they began); buckets: + le, count, sum_seconds (the
        waits known only by their histogram bucket, by the hour)."""
        if step is not None and step not in STEPS:
            raise QueryError(f"step latencies by {', '.join(STEPS)}")
        if step not in self._frames:
            width = STEPS[step] if step is not None else None
            keys = ["facility", "vo", "group", "member", "profile", "step_start"]
            if "" not in self._frames:  # built once, the exact start (hour) in step_start
                self._frames[""] = (
                    pd.DataFrame(self._records, columns=[*keys, "seconds", "ok"]),
                    pd.DataFrame(self._buckets, columns=[*keys, "le", "count", "sum_seconds"]),
                )
            records, buckets = (f.copy() for f in self._frames[""])
            if len(records):
                records["step_start"] = [
                    int(r[5] // width) * width if width else 0 for r in self._records
                ]
            if len(buckets):
                buckets["step_start"] = [
                    (b[5] // width) * width if width else 0 for b in self._buckets
                ]
            self._frames[step] = (records, buckets)
        return self._frames[step]

    def buckets(self, by: tuple[str, ...] = (), step: str | None = None) -> pd.DataFrame:
        """As `OperationsQueries.latency_buckets`: [time,] `by`..., le, count, sum_seconds."""
        keys = _latency_keys(by, step)
        records, buckets = self.frames(step)
        records = records.assign(
            le=[latency.bucket_of(x) for x in records["seconds"]], count=1
        ).rename(columns={"seconds": "sum_seconds"})
        both = pd.concat(
            [f[[*keys, "le", "count", "sum_seconds"]] for f in (records, buckets) if len(f)]
            or [pd.DataFrame(columns=[*keys, "le", "count", "sum_seconds"])]
        )
        df = both.groupby([*keys, "le"], sort=True, as_index=False)[["count", "sum_seconds"]].sum()
        df = df.astype({"le": float, "count": "int64", "sum_seconds": float})
        return _with_time(df, step)

    def percentiles(
        self,
        by: tuple[str, ...] = (),
        step: str | None = None,
        quantiles: tuple[float, ...] = (0.5, 0.9, 0.99),
        slo_seconds: float | None = None,
    ) -> pd.DataFrame:
        """As `OperationsQueries.latency_percentiles`: per group (and step) count,
        mean_seconds, p50_seconds..., within_slo_ratio, min/max_seconds, exact_count,
        failed_count, population."""
        keys = _latency_keys(by, step)
        records, buckets = self.frames(step)
        df = latency.summarize_waits(
            records, buckets, keys, quantiles, slo_seconds, self.population
        )
        return _with_time(df, step)

    def events(self, limit: int = 20) -> pd.DataFrame:
        """As `OperationsQueries.latency_events` with this population: the waits one by one,
        slowest first (facility, id, member_id, display_name, start, end, seconds, profile,
        outcome), at most `limit` of them (and at least one, as there)."""
        cols = ["facility", "id", "member_id", "display_name", "start", "end", "seconds"]
        if self.kind not in latency.EVENTS_OF_KIND:
            raise QueryError(f"latency kind {self.kind!r} has no per-event record")
        rows = self._events[: max(1, int(limit))]
        return pd.DataFrame(rows, columns=[*cols, "profile", "outcome"])


class OperationsQueries(QueryBase):
    def nodes(self, p: Principal, now: float | None = None) -> pd.DataFrame:
        """Node capacity and agent liveness; facility admins only (empty for others).
        last_seen: when the node's agent last delivered a batch (server clock; the node's own
        `updated` where no agent row is left); with `now`, `stale` says whether that is more
        than NODE_STALE_SECONDS ago (`stale_nodes`)."""
        cols = [
            "facility",
            "node",
            "cpu_cores",
            "memory_bytes",
            "hepscore23_per_core",
            "cpu_busy_ratio",
            "updated",
            "last_seen",
        ]
        if p.role != "facility_admin":
            return pd.DataFrame(columns=[*cols, *(["stale"] if now is not None else [])])
        cond, params = ("n.facility = :f", {"f": p.facility}) if p.facility else ("1 = 1", {})
        df = self._frame(
            f"SELECT {', '.join('n.' + c for c in cols[:-1])}, COALESCE(a.seen, n.updated) "
            f"AS last_seen FROM node n LEFT JOIN ({_AGENT_SEEN}) a "
            f"ON a.facility = n.facility AND a.node = n.node WHERE {cond} "
            "ORDER BY n.facility, n.node",
            params,
        )
        if now is not None:
            df["stale"] = [stale_node(seen, now) for seen in df["last_seen"]]
        return df

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
        cond, params = scope_sql(p, member="e.member_id", vo="m.vo", facility="e.facility")
        order = "e.start" if newest is None else f"e.start DESC, e.id LIMIT {int(newest)}"
        return self._frame(
            "SELECT e.facility, e.id, e.member_id, m.display_name, e.local_user, e.node, "
            'e.start, e."end" FROM event e JOIN member m ON m.id = e.member_id '
            f"WHERE {_SESSIONS_IN_RANGE} AND {cond} ORDER BY {order}",
            {"start": start, "end": end, **params},
        )

    def session_count(self, p: Principal, start: float, end: float) -> int:
        """How many sessions `sessions` would return."""
        cond, params = scope_sql(p, member="e.member_id", vo="m.vo", facility="e.facility")
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

    def data_servers(self, p: Principal, start: float, end: float) -> pd.DataFrame:
        """Per XRootD server (node-level series, no user): what its counters rose by in
        [start, end). Facility admins only (empty for others): these totals mix every member."""
        cols = ["facility", "server", "source", *SERVER_COLUMNS]
        if p.role != "facility_admin":
            return pd.DataFrame(columns=cols)
        names = {f"m{i}": m for i, m in enumerate([*SERVER_METRICS, UNATTRIBUTED])}
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
            column = SERVER_METRICS.get(metric) or f"unattributed_{lab.get('direction')}_bytes"
            if column not in SERVER_COLUMNS:
                continue
            key = (fac, lab.get("server", "?"), lab.get("source", "?"))
            rows.setdefault(key, dict.fromkeys(SERVER_COLUMNS, 0.0))
            rows[key][column] += rise
        out = pd.DataFrame(
            [{"facility": f, "server": s, "source": src, **v} for (f, s, src), v in rows.items()],
            columns=cols,
        )
        return out.sort_values(["read_bytes", "server"], ascending=[False, True], ignore_index=True)

    def latency_waits(
        self,
        p: Principal,
        kind: str,
        start: float,
        end: float,
        population: str = latency.POPULATION_OK,
    ) -> LatencyWaits:
        """The waits of `kind` that began in [start, end), within the principal's scope, of
        `population`, read once: `LatencyWaits` gives their percentiles, buckets (overall, per
        group, per step) and slowest waits, each equal to what `latency_percentiles`,
        `latency_buckets` and `latency_events` return for the same arguments, without reading
        the database again (the Interactive page draws all its figures from one read).

        The waits with a per-wait record (an event, `latency.EVENTS_OF_KIND`) are taken by the
        exact time they began; the others come from their histogram bucket: the latency rows
        of every hour that overlaps [start, end) (the hour holding `start` too), less the waits
        the records of those hours account for, so no wait counts twice and none is lost at an
        hour boundary; failed starts are never in the histograms.
        """
        if kind not in latency.KINDS:
            raise QueryError(f"unknown latency kind {kind!r}; known: {', '.join(latency.KINDS)}")
        if population not in latency.POPULATIONS:
            raise QueryError(f"population is one of {', '.join(latency.POPULATIONS)}")
        first = int(start // HOUR) * HOUR  # the hour that holds `start`
        last = int(math.ceil(end / HOUR)) * HOUR  # the end of the hour that holds `end`
        cond, params = scope_sql(p)
        # (facility, member, profile, hour, le) -> [count, sum] of the records' successful waits
        observed: dict[tuple[Any, ...], list[float]] = {}
        with read_connection(self._engine) as conn:
            hist = conn.execute(
                text(
                    "SELECT facility, vo, grp, member_id, profile, hour, le, count, sum_seconds "
                    f"FROM latency WHERE kind = :kind AND hour >= :first AND hour < :last "
                    f"AND {cond} ORDER BY facility, member_id, profile, hour, le, vo, grp"
                ),
                {"kind": kind, "first": first, "last": last, **params},
            ).all()
            if kind in latency.EVENTS_OF_KIND:
                ecnd, eparams = scope_sql(p, member="e.member_id", vo="m.vo", facility="e.facility")
                # slowest first, in `latency_events`' order, so that its rows are a prefix
                rows = conn.execute(
                    text(
                        'SELECT e.facility, m.vo, m.grp, e.member_id, e.start, e."end" - e.start, '
                        'e.attrs, e.id, m.display_name, e."end" FROM event e '
                        "JOIN member m ON m.id = e.member_id "
                        'WHERE e.kind = :ekind AND e."end" IS NOT NULL AND e.start >= :first '
                        f"AND e.start < :last AND {ecnd} "
                        f'ORDER BY e."end" - e.start DESC, e.start, e.id, e.facility'
                    ),
                    {"ekind": latency.EVENTS_OF_KIND[kind], "first": first, "last": last,
                     **eparams},
                ).all()  # fmt: skip
            else:
                rows = []
        everyone = population == latency.POPULATION_ALL
        records: list[tuple[Any, ...]] = []
        events: list[list[Any]] = []
        parsed: dict[str, tuple[str | None, str]] = {}  # attrs text -> (outcome, profile)
        for fac, vo, grp, member, t, seconds, attrs_text, eid, name, t_end in rows:
            if attrs_text not in parsed:
                attrs = latency.attrs_of(attrs_text)
                parsed[attrs_text] = (latency.wait_outcome(kind, attrs), latency.profile_of(attrs))
            outcome, profile = parsed[attrs_text]
            if outcome is None:
                continue
            ok = outcome == "ok"
            inside = start <= t < end and (ok or everyone)
            if inside:
                events.append([fac, eid, member, name, t, t_end, seconds, profile, outcome])
            if not seconds >= 0:
                continue
            if ok:
                key = (fac, member, profile, int(t // HOUR) * HOUR, latency.bucket_of(seconds))
                slot = observed.setdefault(key, [0, 0.0])
                slot[0] += 1
                slot[1] += seconds
            if inside:
                records.append((fac, vo, grp, member, profile, t, float(seconds), ok))
        buckets: list[tuple[Any, ...]] = []
        for fac, vo, grp, member, profile, hour, le, count, total in hist:
            le, count, total = float(le), int(count), float(total)
            slot = observed.get((fac, member, profile, int(hour), le))
            if slot is not None and slot[0] > 0:
                take = min(count, int(slot[0]))
                share = slot[1] * take / slot[0]
                slot[0] -= take
                slot[1] -= share
                count, total = count - take, max(0.0, total - share)
            if count > 0:
                buckets.append((fac, vo, grp, member, profile, int(hour), le, count, total))
        return LatencyWaits(kind, population, records, buckets, events)

    def _latency_waits(
        self, p: Principal, kind: str, start: float, end: float, step: str | None, population: str
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """`latency_waits(...).frames(step)`: the waits as (records, buckets) frames."""
        return self.latency_waits(p, kind, start, end, population).frames(step)

    def latency_buckets(
        self,
        p: Principal,
        kind: str,
        start: float,
        end: float,
        by: tuple[str, ...] = (),
        step: str | None = None,
        population: str = latency.POPULATION_OK,
    ) -> pd.DataFrame:
        """Latency buckets of the waits of `kind` that began in [start, end) (and per `step`):
        columns [time,] `by`..., le, count, sum_seconds (aggregator/core/latency.py). Waits
        with per-wait records are bucketed by their exact value and start, the others come
        from the histograms of the hours that overlap the window (`latency_waits`).
        `population`: "ok" (successful waits only) or "all" (all starts, failed included)."""
        _latency_keys(by, step)
        return self.latency_waits(p, kind, start, end, population).buckets(by, step)

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
        population: str = latency.POPULATION_OK,
    ) -> pd.DataFrame:
        """Per group (and step) of the waits of `kind` that began in [start, end): count,
        mean_seconds, p50_seconds..., within_slo_ratio (with an SLO), min_seconds,
        max_seconds, exact_count (waits with a per-wait record), failed_count, population.

        `population` says which waits a figure covers: "ok", successful waits only (what the
        histograms hold; the default), or "all", every start including the failed ones (their
        wait is the time to the failure). Percentiles are exact (the standard linear sample
        quantile, `latency.quantiles_of`) over the per-wait records; only waits without one
        are placed within their histogram bucket, and no percentile is outside [min, max]."""
        _latency_keys(by, step)
        waits = self.latency_waits(p, kind, start, end, population)
        return waits.percentiles(by, step, quantiles, slo_seconds)

    def latency_events(
        self,
        p: Principal,
        kind: str,
        start: float,
        end: float,
        limit: int = 20,
        population: str = latency.POPULATION_ALL,
    ) -> pd.DataFrame:
        """The waits of `kind` that began in [start, end), one by one, slowest first:
        facility, id, member_id, display_name, start, end, seconds, profile, outcome. By
        default every start, the failed ones too (`outcome` says which); population "ok"
        lists the successful waits only."""
        if kind not in latency.EVENTS_OF_KIND:
            raise QueryError(f"latency kind {kind!r} has no per-event record")
        if population not in latency.POPULATIONS:
            raise QueryError(f"population is one of {', '.join(latency.POPULATIONS)}")
        cond, params = scope_sql(p, member="e.member_id", vo="m.vo", facility="e.facility")
        cols = ["facility", "id", "member_id", "display_name", "start", "end", "seconds"]
        out: list[list[Any]] = []
        with read_connection(self._engine) as conn:
            result = conn.execute(
                text(
                    'SELECT e.facility, e.id, e.member_id, m.display_name, e.start, e."end", '
                    'e."end" - e.start AS seconds, e.attrs FROM event e '
                    "JOIN member m ON m.id = e.member_id WHERE e.kind = :ekind "
                    f'AND e."end" IS NOT NULL AND e.start >= :start AND e.start < :end '
                    f'AND {cond} ORDER BY e."end" - e.start DESC, e.start, e.id, e.facility'
                ),
                {"ekind": latency.EVENTS_OF_KIND[kind], "start": start, "end": end, **params},
            )
            for row in result:
                attrs = latency.attrs_of(row[-1])
                outcome = latency.wait_outcome(kind, attrs)
                if outcome is None or (population == latency.POPULATION_OK and outcome != "ok"):
                    continue
                out.append([*row[:-1], latency.profile_of(attrs), outcome])
                if len(out) >= int(limit):
                    break
        return pd.DataFrame(out, columns=[*cols, "profile", "outcome"])

    def alerts(self, p: Principal, statuses: tuple[str, ...] = ("firing",)) -> pd.DataFrame:
        """Alerts (alerts/) in these statuses, newest first: a facility admin sees their
        facility's, a VO manager those labelled with their VO, a member none."""
        cond, params = scope_sql(p, member="NULL")
        names = {f"s{i}": s for i, s in enumerate(statuses)}
        return self._frame(
            "SELECT rule, status, severity, facility, vo, labels, value, active_since, fired_at, "
            f"resolved_at, summary, description, signal FROM alert WHERE {cond} "
            f"AND status IN ({', '.join(':' + k for k in names)}) "
            "ORDER BY COALESCE(resolved_at, fired_at, active_since) DESC, rule, labels",
            {**params, **names},
        )

    def capacity(self, p: Principal, now: float | None = None) -> pd.DataFrame:
        """What the facilities (the principal's one, for a bound admin) offer, as their agents
        last reported it: facility, nodes, cpu_cores, memory_bytes, gpus, and what the stale
        nodes hold (stale_nodes, stale_cpu_cores, stale_memory_bytes, stale_gpus). With
        `now`, a node whose agent has been silent for more than NODE_STALE_SECONDS (the
        AfmonAgentSilent rule's threshold) is stale: counted in the stale_* columns, not in
        the live ones; without, no node is. Capacity is no one's personal data, so every
        principal sees it."""
        live = ["nodes", "cpu_cores", "memory_bytes", "gpus"]
        cols = ["facility", *live, *(f"stale_{c}" for c in live)]
        cond, params = ("facility = :f", {"f": p.facility}) if p.facility else ("1 = 1", {})
        nodes = self._frame(
            f"SELECT facility, node, cpu_cores, memory_bytes, updated FROM node WHERE {cond}",
            params,
        )
        gpus = self._frame(
            "SELECT facility, node, COUNT(*) AS gpus FROM series "
            f"WHERE metric = 'gpu_info' AND {cond} GROUP BY facility, node",
            params,
        )
        seen = self._frame(f"SELECT * FROM ({_AGENT_SEEN}) a WHERE {cond}", params)
        per_node = nodes.assign(nodes=1).merge(gpus, on=["facility", "node"], how="outer")
        per_node = per_node.merge(seen, on=["facility", "node"], how="left")
        if per_node.empty:
            return pd.DataFrame(columns=cols)
        per_node = per_node.astype({"cpu_cores": float, "memory_bytes": float}).fillna(
            {"nodes": 0, "cpu_cores": 0.0, "memory_bytes": 0.0, "gpus": 0}
        )
        heard = per_node["seen"].fillna(per_node["updated"])  # the node's own, without an agent
        stale = [now is not None and stale_node(s, now) for s in heard]
        for c in live:
            per_node[f"stale_{c}"] = per_node[c].where(stale, 0)
            per_node[c] = per_node[c].where([not x for x in stale], 0)
        out = per_node.groupby("facility", as_index=False)[cols[1:]].sum()
        ints = [c for c in cols if c.endswith(("nodes", "gpus"))]
        return out.astype(dict.fromkeys(ints, "int64")).sort_values("facility", ignore_index=True)

    def last_usage_hour(self, p: Principal, before: float) -> float | None:
        """The start of the latest ledger hour before `before` that holds usage the principal
        may see, or None when there is none (the Reports page opens on that hour's week)."""
        cond, params = scope_sql(p)
        with read_connection(self._engine) as conn:
            hour = conn.execute(
                text(f"SELECT MAX(hour) FROM usage WHERE hour < :before AND {cond}"),
                {"before": int(before), **params},
            ).scalar_one()
        return None if hour is None else float(hour)

    def running_sessions(
        self, p: Principal, start: float, end: float, now: float, by: str = "member"
    ) -> pd.DataFrame:
        """Sessions still running (no end yet) that began before `end`, per `by` (member or
        vo): sessions, seconds (their time so far inside [start, min(now, end))). The ledger
        holds a session's time and count only once it has ended: these are the rest."""
        if by not in ("member", "vo"):
            raise QueryError("running sessions are grouped by member or vo")
        key = "e.member_id" if by == "member" else "m.vo"
        cond, params = scope_sql(p, member="e.member_id", vo="m.vo", facility="e.facility")
        df = self._frame(
            f"SELECT {key} AS {by}, e.start FROM event e JOIN member m ON m.id = e.member_id "
            f"WHERE e.kind = 'session' AND e.\"end\" IS NULL AND e.start < :end AND {cond}",
            {"end": end, **params},
        )
        stop = min(now, end)
        df["seconds"] = [max(0.0, stop - max(float(t), start)) for t in df.pop("start")]
        out = df.groupby(by, as_index=False).agg(
            sessions=("seconds", "size"), seconds=("seconds", "sum")
        )
        return out.astype({"sessions": "int64", "seconds": float})

    def open_events(self, p: Principal, kinds: tuple[str, ...]) -> dict[str, int]:
        """How many events of each kind are open (started, no end yet): running sessions,
        live Dask clusters; within the principal's scope."""
        cond, params = scope_sql(p, member="e.member_id", vo="m.vo", facility="e.facility")
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
        cond, params = scope_sql(p, member="e.member_id", vo="m.vo", facility="e.facility")
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

    # -- the quarantine (docs/accounting.md) ------------------------------------------------

    def quarantine(self, p: Principal, newest: int = 20) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Records refused at ingest and not replayed yet (the `quarantine` table), as
        (counts, records). counts: facility, reason, records, last_received, by facility and
        most records first; records: the `newest` latest ones, newest first: id, received_at,
        facility, agent_id, node, kind, reason, field, message. Facility admins only (their
        facility's when bound to one), empty for others: a record is kept as sent, so it can
        name any member's account."""
        counts = ["facility", "reason", "records", "last_received"]
        records = ["id", "received_at", "facility", "agent_id", "node", "kind", "reason",
                   "field", "message"]  # fmt: skip
        if p.role != "facility_admin":
            return pd.DataFrame(columns=counts), pd.DataFrame(columns=records)
        cond, params = ("facility = :f", {"f": p.facility}) if p.facility else ("1 = 1", {})
        where = f"WHERE replayed_at IS NULL AND {cond}"
        by_reason = self._frame(
            "SELECT facility, reason, COUNT(*) AS records, MAX(received_at) AS last_received "
            f"FROM quarantine {where} GROUP BY facility, reason "
            "ORDER BY facility, COUNT(*) DESC, reason",
            params,
        )
        latest = self._frame(
            f"SELECT {', '.join(records)} FROM quarantine {where} "
            f"ORDER BY received_at DESC, id DESC LIMIT {max(0, int(newest))}",
            params,
        )
        return by_reason.astype({"records": "int64"}), latest
