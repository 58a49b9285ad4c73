"""Cardinality limits of ingest: what one batch may carry and how many nodes and GPUs a
facility may have, so that a producer inventing hosts (or labels) cannot grow the database,
the time-series store and /metrics without bound.

A batch over a limit is refused as a whole with `LimitExceeded` (a `wire.WireError`: the
routes answer 4xx naming the field, the limit and its setting) before anything of it is
written; the refusal is counted under the outcome `over_limit`. docs/security.md.
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


def check_shape(batch: wire.Batch, limits: Limits) -> None:
    """Limits one batch can be checked against alone: series per batch, labels per series."""
    if len(batch.series) > limits.series_per_batch:
        raise LimitExceeded(
            "$.series",
            f"{len(batch.series)} series in one batch, over the limit of "
            f"{limits.series_per_batch} (AFMON_LIMIT_SERIES_PER_BATCH); send smaller batches",
            "series_per_batch",
        )
    for i, s in enumerate(batch.series):
        if len(s.labels) > limits.labels_per_series:
            raise LimitExceeded(
                f"$.series[{i}].labels",
                f"series {s.metric} has {len(s.labels)} labels, over the limit of "
                f"{limits.labels_per_series} (AFMON_LIMIT_LABELS_PER_SERIES)",
                "labels_per_series",
            )


class Cardinality:
    """The nodes and GPUs known per facility, and the admission of new ones.

    Known sets are read from the `series` table the first time a facility is seen and again
    (at most once a second) when a batch names one that is not known, so several workers
    share one truth: the database. `admit` runs inside the ingest transaction, before the
    batch's new series are written."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._nodes: dict[str, set[str]] = {}
        self._gpus: dict[str, set[tuple[str, str]]] = {}
        self._loaded: dict[str, float] = {}

    def admit(
        self, conn: Connection, batch: wire.Batch, new: Iterable[tuple[int, wire.Series]]
    ) -> None:
        """Raise LimitExceeded when the new series `(index, series)` of `batch` would take
        its facility over a node or GPU limit."""
        facility = batch.facility
        nodes: dict[str, int] = {}
        gpus: dict[tuple[str, str], int] = {}
        for i, s in new:
            node = s.labels.get("node", batch.node)
            nodes.setdefault(node, i)
            if "gpu" in s.labels:
                gpus.setdefault((node, s.labels["gpu"]), i)
        with self._lock:
            if facility not in self._loaded or (
                (set(nodes) - self._nodes[facility] or set(gpus) - self._gpus[facility])
                and self._clock() - self._loaded[facility] >= 1.0
            ):
                self._load(conn, facility)
            known_nodes, known_gpus = self._nodes[facility], self._gpus[facility]
            unknown_nodes = [n for n in nodes if n not in known_nodes]
            unknown_gpus = [g for g in gpus if g not in known_gpus]
            limit = self._limits.nodes_per_facility
            if len(known_nodes) + len(unknown_nodes) > limit:
                first = unknown_nodes[0]
                raise LimitExceeded(
                    f"$.series[{nodes[first]}].labels.node",
                    f"facility {facility!r} has {len(known_nodes)} nodes and this batch adds "
                    f"{len(unknown_nodes)} ({first!r}, ...), over the limit of {limit} "
                    "(AFMON_LIMIT_NODES_PER_FACILITY)",
                    "nodes_per_facility",
                )
            limit = self._limits.gpus_per_facility
            if len(known_gpus) + len(unknown_gpus) > limit:
                node, gpu = unknown_gpus[0]
                raise LimitExceeded(
                    f"$.series[{gpus[unknown_gpus[0]]}].labels.gpu",
                    f"facility {facility!r} has {len(known_gpus)} GPUs and this batch adds "
                    f"{len(unknown_gpus)} ({gpu!r} on {node!r}, ...), over the limit of "
                    f"{limit} (AFMON_LIMIT_GPUS_PER_FACILITY)",
                    "gpus_per_facility",
                )
            # counted as known now; a rolled-back batch is forgotten at the next load
            known_nodes.update(unknown_nodes)
            known_gpus.update(unknown_gpus)

    def _load(self, conn: Connection, facility: str) -> None:
        p = placeholder(conn.engine)
        rows = conn.exec_driver_sql(
            f"SELECT DISTINCT node FROM series WHERE facility = {p}", (facility,)
        )
        self._nodes[facility] = {r[0] for r in rows}
        rows = conn.exec_driver_sql(
            f"SELECT node, labels FROM series WHERE facility = {p} AND labels LIKE {p}",
            (facility, '%"gpu"%'),
        )
        gpus: set[tuple[str, str]] = set()
        for node, labels in rows:
            gpu = json.loads(labels).get("gpu")
            if isinstance(gpu, str):
                gpus.add((node, gpu))
        self._gpus[facility] = gpus
        self._loaded[facility] = self._clock()
