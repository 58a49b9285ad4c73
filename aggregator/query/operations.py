"""The query layer's reads of facility operations: nodes, agents, sessions, latencies,
alerts, XRootD servers, capacity and GPUs; principal-scoped like the ledger reads
(`Query` in aggregator/query/reads.py inherits these)."""

from __future__ import annotations

import json

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
_SESSIONS_IN_RANGE = (
    'e.kind = \'session\' AND e.start < :end AND (e."end" IS NULL OR e."end" >= :start)'
)


class OperationsQueries(QueryBase):
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
        columns [time,] `by`..., le, count, sum_seconds (aggregator/core/latency.py)."""
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
        cond, params = scope_sql(p)
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
        cond, params = scope_sql(p, member="e.member_id", vo="m.vo", facility="e.facility")
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
        cond, params = scope_sql(p, member="NULL")
        names = {f"s{i}": s for i, s in enumerate(statuses)}
        return self._frame(
            "SELECT rule, status, severity, facility, vo, labels, value, active_since, fired_at, "
            f"resolved_at, summary, description FROM alert WHERE {cond} "
            f"AND status IN ({', '.join(':' + k for k in names)}) "
            "ORDER BY COALESCE(resolved_at, fired_at, active_since) DESC, rule, labels",
            {**params, **names},
        )

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
