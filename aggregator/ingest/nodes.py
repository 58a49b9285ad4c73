"""Node capacity as the ingest sees it: what the facility's nodes reported (the `node`
table) and what a batch's `node_*` series add. Capacity bounds what a user's samples may
claim (ingest/capacity.py) and gives the HEPscore23 per core that normalises CPU time."""

from __future__ import annotations

from sqlalchemy import Connection

from afmon.aggregator.ingest.late import SeriesState
from afmon.collectors import wire

NODE_METRICS = {
    "node_cpu_cores": "cpu_cores",
    "node_memory_bytes": "memory_bytes",
    "node_hepscore23_per_core": "hepscore23_per_core",
    "node_cpu_busy_ratio": "cpu_busy_ratio",
}
NODE_COLUMNS = ("cpu_cores", "memory_bytes", "hepscore23_per_core")

Capacity = dict[str, dict[str, float]]
"""node -> {column: value} (columns of the `node` table)."""


def node_capacity(
    conn: Connection,
    p: str,
    batch: wire.Batch,
    ids: list[int | None],
    state: dict[int, SeriesState],
) -> tuple[Capacity, Capacity]:
    """The nodes the batch names (`named_nodes`) with their known capacity as it leaves them,
    and what the batch reported: its node_* series' newest samples, only when newer than the
    stored (a late batch leaves a node as it is). `ids[i]` is record i's series id (None:
    refused), `state` the series' stored (last_time, last_value, first_time)."""
    nodes: Capacity = {}
    reported: Capacity = {}
    wanted = sorted(named_nodes(batch))
    for i in range(0, len(wanted), 500):
        chunk = wanted[i : i + 500]
        for r in conn.exec_driver_sql(
            "SELECT node, cpu_cores, memory_bytes, hepscore23_per_core FROM node "
            f"WHERE facility = {p} AND node IN ({', '.join([p] * len(chunk))})",
            (batch.facility, *chunk),
        ).fetchall():
            nodes[r[0]] = {c: v for c, v in zip(NODE_COLUMNS, r[1:], strict=True) if v is not None}
    for s, sid in zip(batch.series, ids, strict=True):
        column = NODE_METRICS.get(s.metric)
        if not column or not s.values or sid is None:
            continue
        last = state[sid][0]
        if last is None or s.times[-1] > last:
            name = s.labels.get("node", batch.node)
            nodes.setdefault(name, {})[column] = s.values[-1]
            reported.setdefault(name, {})[column] = s.values[-1]
    return nodes, reported


def named_nodes(batch: wire.Batch) -> set[str]:
    """The nodes whose capacity the ingest of `batch` reads: its own, its series' (`node`
    label) and its events' (`attrs.node`, as events.py looks them up). Only these are read,
    not every node of the facility: a batch's cost must not grow with the fleet."""
    out = {batch.node}
    out.update([s.labels.get("node", batch.node) for s in batch.series])
    out.update([str(e.attrs.get("node") or batch.node) for e in batch.events])
    return out


def write_node_capacity(
    conn: Connection, p: str, facility: str, reported: Capacity, now: float
) -> None:
    """Store the node capacity a batch reported."""
    for node, values in reported.items():
        cols = ", ".join(values)
        sets = ", ".join(f"{c} = excluded.{c}" for c in values)
        conn.exec_driver_sql(
            f"INSERT INTO node (facility, node, updated, {cols}) "
            f"VALUES ({', '.join([p] * (3 + len(values)))}) "
            f"ON CONFLICT (facility, node) DO UPDATE SET updated = excluded.updated, {sets}",
            (facility, node, now, *values.values()),
        )
