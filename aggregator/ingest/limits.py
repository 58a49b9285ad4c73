"""Cardinality limits of ingest: what one batch may carry and how many nodes and GPUs a
facility may have, so that a producer inventing hosts (or labels) cannot grow the database,
the time-series store and /metrics without bound.

A batch with too many series is refused as a whole with `LimitExceeded` (a `wire.WireError`:
the routes answer 422 naming the limit and its setting, counted as outcome `over_limit`).
A series with too many labels, or one that would add a node or GPU past its facility's limit,
is refused as a record (`wire.Refusal`): quarantined, replayable once the limit is raised,
while the rest of its batch is applied. docs/security.md, docs/accounting.md.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import Connection

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.store.db import placeholder
from afmon.collectors import wire


class LimitExceeded(wire.WireError):
    """A batch over a cardinality limit; `limit` names it (`nodes_per_facility`, ...)."""

    def __init__(self, field: str, message: str, limit: str) -> None:
        super().__init__(field, message)
        self.limit = limit


@dataclass(frozen=True)
class Limits:
    series_per_batch: int
    labels_per_series: int
    nodes_per_facility: int
    gpus_per_facility: int

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> Limits:
        return cls(
            settings.limit_series_per_batch,
            settings.limit_labels_per_series,
            settings.limit_nodes_per_facility,
            settings.limit_gpus_per_facility,
        )


def check_size(batch: wire.Batch, limits: Limits) -> None:
    """The one limit that refuses a batch whole: its number of series."""
    if len(batch.series) > limits.series_per_batch:
        raise LimitExceeded(
            "$.series",
            f"{len(batch.series)} series in one batch, over the limit of "
            f"{limits.series_per_batch} (AFMON_LIMIT_SERIES_PER_BATCH); send smaller batches",
            "series_per_batch",
        )


def label_refusals(batch: wire.Batch, limits: Limits) -> list[wire.Refusal]:
    """The series that carry more labels than allowed."""
    return [
        wire.Refusal(
            "series",
            i,
            f"$.series[{i}].labels",
            "too_many_labels",
            f"series {s.metric} has {len(s.labels)} labels, over the limit of "
            f"{limits.labels_per_series} (AFMON_LIMIT_LABELS_PER_SERIES)",
        )
        for i, s in enumerate(batch.series)
        if len(s.labels) > limits.labels_per_series
    ]


class Cardinality:
    """The nodes and GPUs active per facility, and the admission of new ones.

    Active: a series of it had a sample within `active_seconds` (the silence after which a
    node leaves /metrics), so nodes that come and go (cloud workers, renamed hosts) free their
    place, and the limits bound what is live, not history. The sets are read from the `series`
    table the first time a facility is seen and again (at most once a second) when a batch
    names one that is not in them, so several workers share one truth: the database. `admit`
    runs inside the ingest transaction, before the batch's new series are written."""

    def __init__(
        self,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
        active_seconds: float = float("inf"),
    ) -> None:
        self._limits = limits
        self._clock = clock
        self._now = now
        self._active_seconds = active_seconds
        self._lock = threading.Lock()
        self._nodes: dict[str, set[str]] = {}
        self._gpus: dict[str, set[tuple[str, str]]] = {}
        self._loaded: dict[str, float] = {}

    def admit(
        self, conn: Connection, batch: wire.Batch, new: Iterable[tuple[int, wire.Series]]
    ) -> tuple[list[wire.Refusal], bool]:
        """The new series `(index, series)` of `batch` that would take its facility over a
        node or GPU limit (new nodes and GPUs are admitted in batch order up to the limit,
        the batch's own node first), and whether the batch's own node is admitted (if not,
        its agent is not recorded as a node of the facility either)."""
        facility = batch.facility
        new = list(new)
        wanted_nodes = {batch.node, *(s.labels.get("node", batch.node) for _, s in new)}
        wanted_gpus = {
            (s.labels.get("node", batch.node), s.labels["gpu"]) for _, s in new if "gpu" in s.labels
        }
        refused: list[wire.Refusal] = []
        with self._lock:
            if facility not in self._loaded or (
                (wanted_nodes - self._nodes[facility] or wanted_gpus - self._gpus[facility])
                and self._clock() - self._loaded[facility] >= 1.0
            ):
                self._load(conn, facility)
            nodes, gpus = self._nodes[facility], self._gpus[facility]
            node_room = self._limits.nodes_per_facility - len(nodes)
            gpu_room = self._limits.gpus_per_facility - len(gpus)
            added_nodes: set[str] = set()
            added_gpus: set[tuple[str, str]] = set()
            own_node = batch.node in nodes or node_room > 0
            if batch.node not in nodes and own_node:
                added_nodes.add(batch.node)
            for i, s in new:
                node = s.labels.get("node", batch.node)
                if node not in nodes and node not in added_nodes:
                    if len(added_nodes) >= node_room:
                        refused.append(self._over(i, s, "node", facility, len(nodes), node))
                        continue
                    added_nodes.add(node)
                gpu = s.labels.get("gpu")
                if gpu is not None and (node, gpu) not in gpus and (node, gpu) not in added_gpus:
                    if len(added_gpus) >= gpu_room:
                        refused.append(self._over(i, s, "gpu", facility, len(gpus), gpu))
                        continue
                    added_gpus.add((node, gpu))
            # counted as known now; a rolled-back batch is forgotten at the next load
            nodes.update(added_nodes)
            gpus.update(added_gpus)
        return refused, own_node

    def _over(
        self, i: int, s: wire.Series, what: str, facility: str, known: int, name: str
    ) -> wire.Refusal:
        limit = (
            self._limits.nodes_per_facility if what == "node" else self._limits.gpus_per_facility
        )
        setting = (
            "AFMON_LIMIT_NODES_PER_FACILITY" if what == "node" else "AFMON_LIMIT_GPUS_PER_FACILITY"
        )
        return wire.Refusal(
            "series",
            i,
            f"$.series[{i}].labels.{what}",
            f"over_limit_{what}s",
            f"{what} {name!r} of series {s.metric} is new and facility {facility!r} already "
            f"has {known} {what}s, its limit ({setting}={limit})",
        )

    def _load(self, conn: Connection, facility: str) -> None:
        p = placeholder(conn.engine)
        since = max(0.0, self._now() - self._active_seconds)
        active = f"facility = {p} AND (last_time IS NULL OR last_time >= {p})"
        rows = conn.exec_driver_sql(
            f"SELECT DISTINCT node FROM series WHERE {active}", (facility, since)
        )
        self._nodes[facility] = {r[0] for r in rows}
        rows = conn.exec_driver_sql(
            f"SELECT node, labels FROM series WHERE {active} AND labels LIKE {p}",
            (facility, since, '%"gpu"%'),
        )
        gpus: set[tuple[str, str]] = set()
        for node, labels in rows:
            gpu = json.loads(labels).get("gpu")
            if isinstance(gpu, str):
                gpus.add((node, gpu))
        self._gpus[facility] = gpus
        self._loaded[facility] = self._clock()
