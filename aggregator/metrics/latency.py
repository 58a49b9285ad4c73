"""Latency histograms on /metrics: per (facility, VO), read from the ledger (no user label)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import Engine, text

from afmon.aggregator.core.latency import KINDS
from afmon.aggregator.metrics.catalog import CATALOG
from afmon.aggregator.store.db import read_connection


class LatencyCollector(Collector):
    """Latency histograms per (facility, VO) from the ledger, one family per kind that
    `metrics.catalog` lists as `afmon_<kind>_seconds`, in the catalog's buckets (each one a
    ledger bucket bound, so the cumulative counts are exact). No user label."""

    def __init__(
        self, engine: Engine, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = engine
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: list[Metric] = []
        self._at = -math.inf

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = self._clock()
            if now - self._at > self._ttl:
                self._cached = self._read()
                self._at = now
            cached = self._cached
        yield from cached

    def _read(self) -> list[Metric]:
        specs = {
            kind: CATALOG[f"afmon_{kind}_seconds"]
            for kind in KINDS
            if f"afmon_{kind}_seconds" in CATALOG
            and CATALOG[f"afmon_{kind}_seconds"].status == "live"
        }
        rows: dict[tuple[str, str, str], dict[float, tuple[int, float]]] = {}
        with read_connection(self._engine) as conn:
            for facility, vo, kind, le, count, total in conn.execute(
                text(
                    "SELECT facility, vo, kind, le, SUM(count), SUM(sum_seconds) FROM latency "
                    "GROUP BY facility, vo, kind, le ORDER BY facility, vo, kind, le"
                )
            ):
                if kind in specs:
                    rows.setdefault((kind, facility, vo), {})[float(le)] = (int(count), total)
        families = {
            kind: HistogramMetricFamily(s.name, s.help, labels=["facility", "vo"])
            for kind, s in specs.items()
        }
        for (kind, facility, vo), per_le in rows.items():
            bounds = specs[kind].buckets
            cum = [
                (floatToGoString(b), float(sum(c for le, (c, _s) in per_le.items() if le <= b)))
                for b in bounds
            ]
            count = sum(c for c, _s in per_le.values())
            cum.append(("+Inf", float(count)))
            families[kind].add_metric(
                [facility, vo], cum, sum_value=sum(s for _c, s in per_le.values())
            )
        return list(families.values())
