"""/metrics for Prometheus, on a registry the app owns.

Labels are bounded (facility, VO, node, outcome, resource); a user never
appears in a label. Usage totals come from the ledger at scrape time, cached
for a few seconds so that several scrapers do not multiply the queries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text

from aggregator.db import read_connection

# ledger resource -> (metric name in base units, help)
USAGE_METRICS = {
    "cpu_seconds": ("afmon_usage_cpu_seconds", "CPU time used, from the ledger"),
    "cpu_hs23_seconds": (
        "afmon_usage_cpu_hs23_seconds",
        "CPU time x HEPscore23 per core, from the ledger",
    ),
    "memory_byte_seconds": (
        "afmon_usage_memory_byte_seconds",
        "Resident memory integrated over time, from the ledger",
    ),
    "io_read_bytes": ("afmon_usage_io_read_bytes", "Bytes read from local IO, from the ledger"),
    "io_write_bytes": ("afmon_usage_io_write_bytes", "Bytes written by local IO, from the ledger"),
    "session_seconds": ("afmon_usage_session_seconds", "Interactive session time, from the ledger"),
    "sessions": ("afmon_usage_sessions", "Interactive sessions accounted, from the ledger"),
}


class IngestMetrics:
    """Instruments that the ingest route updates."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batches = Counter(
            "afmon_ingest_batches",
            "Batches received, by outcome",
            ["facility", "outcome"],
            registry=registry,
        )
        self.samples = Counter(
            "afmon_ingest_samples",
            "Samples applied to the store and ledger",
            ["facility"],
            registry=registry,
        )
        self.stale_samples = Counter(
            "afmon_ingest_stale_samples",
            "Samples not applied because the series already had newer ones (each counts once)",
            ["facility"],
            registry=registry,
        )
        self.duration = Histogram(
            "afmon_ingest_duration_seconds",
            "Time to decode and apply one batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )


class LedgerCollector(Collector):
    """Usage totals per (facility, VO, resource), node capacity and agent liveness."""

    def __init__(
        self, engine: Engine, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = engine
        self._ttl = ttl
        self._clock = clock
        self._cached: list[Metric] = []
        self._at = float("-inf")

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        if now - self._at > self._ttl:
            self._cached = self._read()
            self._at = now
        yield from self._cached

    def _read(self) -> list[Metric]:
        families = {
            r: CounterMetricFamily(name, doc, labels=["facility", "vo"])
            for r, (name, doc) in USAGE_METRICS.items()
        }
        cores = GaugeMetricFamily(
            "afmon_node_cpu_cores", "CPU cores of the node", labels=["facility", "node"]
        )
        memory = GaugeMetricFamily(
            "afmon_node_memory_bytes", "Memory of the node", labels=["facility", "node"]
        )
        busy = GaugeMetricFamily(
            "afmon_node_cpu_busy_ratio",
            "Busy share of the node's CPUs (0..1)",
            labels=["facility", "node"],
        )
        seen = GaugeMetricFamily(
            "afmon_agent_last_seen_timestamp_seconds",
            "When the node's agent last delivered a batch",
            labels=["facility", "node"],
        )
        with read_connection(self._engine) as conn:
            for facility, vo, resource, amount in conn.execute(
                text(
                    "SELECT facility, vo, resource, SUM(amount) FROM usage "
                    "GROUP BY facility, vo, resource ORDER BY facility, vo, resource"
                )
            ):
                if resource in families:
                    families[resource].add_metric([facility, vo], amount)
            for facility, node, c, m, b in conn.execute(
                text(
                    "SELECT facility, node, cpu_cores, memory_bytes, cpu_busy_ratio FROM node "
                    "ORDER BY facility, node"
                )
            ):
                for family, value in ((cores, c), (memory, m), (busy, b)):
                    if value is not None:
                        family.add_metric([facility, node], value)
            for facility, node, last_seen in conn.execute(
                text(
                    "SELECT facility, node, MAX(last_seen) FROM agent GROUP BY facility, node "
                    "ORDER BY facility, node"
                )
            ):
                seen.add_metric([facility, node], last_seen)
        return [*families.values(), cores, memory, busy, seen]


def make_registry(engine: Engine) -> tuple[CollectorRegistry, IngestMetrics]:
    # `_created` series double the exposition and no afmon reader uses them.
    disable_created_metrics()
    registry = CollectorRegistry()
    instruments = IngestMetrics(registry)
    registry.register(LedgerCollector(engine))
    return registry, instruments
