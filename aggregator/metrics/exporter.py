"""/metrics for Prometheus, on a registry the app owns; families come from the catalog.

Labels are bounded (facility, VO, node, outcome); a user never appears in a
label. Ledger-derived families (usage totals, node capacity, agent liveness,
the time-series outbox's backlog) are read at scrape time from the database,
so every worker of `afmon serve --workers N` reports the same values, cached
for a few seconds so that several scrapers do not multiply the queries, and
rendered by a small hand-written renderer: with 10k series prometheus_client's
generic path is several times slower (see bench/metrics.py). afmon's alert
signals are read the same way, as `afmon_signal_*` gauges, so that exported rules
judge what afmon's own evaluator judges. The ingest instruments stay ordinary
prometheus_client objects, each known label combination created at 0. Both the
text format and OpenMetrics are served (content negotiation).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client import generate_latest as text_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text

from afmon.aggregator.metrics.catalog import (
    INGEST_OUTCOMES,
    REFUSAL_REASONS,
    SIGNAL_GAUGES,
    WRITE_FAILURE_REASONS,
    MetricSpec,
    signal_metric_name,
    spec,
    usage_metric_name,
)
from afmon.aggregator.metrics.latency import LatencyCollector
from afmon.aggregator.query.signals import compute
from afmon.aggregator.store.db import read_connection
from afmon.aggregator.store.schema import RESOURCES

Row = tuple[tuple[str, ...], float]
OPENMETRICS = "application/openmetrics-text"


def _counter(name: str, registry: CollectorRegistry) -> Counter:
    s = spec(name)
    return Counter(s.name, s.help, list(s.labels), registry=registry)


# Unauthenticated requests have no facility: they are counted under this one.
UNKNOWN_FACILITY = "unknown"


class IngestMetrics:
    """Instruments that the ingest route updates.

    Every known label combination exists at 0 from the start (`prime`): a child created by
    its first event would enter Prometheus already at 1, and `increase()` cannot see the
    step from a value it never scraped."""

    def __init__(
        self,
        registry: CollectorRegistry,
        facilities: Iterable[str] = (),
        alertmanagers: Iterable[str] = (),
    ) -> None:
        self.batches = _counter("afmon_ingest_batches", registry)
        self.samples = _counter("afmon_ingest_samples", registry)
        self.stale_samples = _counter("afmon_ingest_stale_samples", registry)
        self.refused_records = _counter("afmon_ingest_refused_records", registry)
        self.write_failures = _counter("afmon_ingest_write_failures", registry)
        d = spec("afmon_ingest_duration_seconds")
        self.duration = Histogram(d.name, d.help, buckets=d.buckets, registry=registry)
        self._primed: set[str] = set()
        self._lock = threading.Lock()
        self.batches.labels(UNKNOWN_FACILITY, "unauthorized")
        self.prime(facilities)
        self.alertmanager_alerts = _counter("afmon_alertmanager_alerts", registry)
        self.alertmanager_failures = _counter("afmon_alertmanager_send_failures", registry)
        for url in alertmanagers:
            self.push_counts(url)

    def push_counts(self, url: str) -> PushCounts:
        """The counters of the alert push to one Alertmanager (its children at 0 now)."""
        where = alertmanager_label(url)
        return PushCounts(
            self.alertmanager_alerts.labels(where, "sent"),
            self.alertmanager_alerts.labels(where, "dropped"),
            self.alertmanager_failures.labels(where),
        )

    def prime(self, facilities: Iterable[str]) -> None:
        """Create each facility's children (every outcome and reason) at 0, once."""
        with self._lock:
            new = sorted(set(facilities) - self._primed)
            self._primed.update(new)
        for f in new:
            for outcome in INGEST_OUTCOMES:
                self.batches.labels(f, outcome)
            self.samples.labels(f)
            self.stale_samples.labels(f)
            for reason in REFUSAL_REASONS:
                self.refused_records.labels(f, reason)
            for reason in WRITE_FAILURE_REASONS:
                self.write_failures.labels(f, reason)


def alertmanager_label(url: str) -> str:
    """An Alertmanager's URL as a label: without user and password."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True)
class PushCounts:
    """What the alert push to one Alertmanager reports on /metrics."""

    sent: Counter
    dropped: Counter
    failures: Counter


@dataclass
class Family:
    """A catalog family and its rows (label values in catalog order, value)."""

    spec: MetricSpec
    rows: list[Row]

    def to_metric(self) -> Metric:
        cls = CounterMetricFamily if self.spec.type == "counter" else GaugeMetricFamily
        m = cls(self.spec.name, self.spec.help, labels=list(self.spec.labels))
        for values, value in self.rows:
            m.add_metric(list(values), value)
        return m


def _escape_label(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    return repr(float(value))


def render_families(families: Iterable[Family], openmetrics: bool = False) -> str:
    """Text (0.0.4) or OpenMetrics lines of counter and gauge families (no `# EOF`).

    Families without rows are left out, as prometheus_client does.
    """
    out: list[str] = []
    for fam in families:
        if not fam.rows:
            continue
        s = fam.spec
        sample = f"{s.name}_total" if s.type == "counter" else s.name
        doc = s.help.replace("\\", "\\\\").replace("\n", "\\n")
        if openmetrics:
            doc = doc.replace('"', '\\"')
        header = s.name if openmetrics else sample
        out.append(f"# HELP {header} {doc}\n# TYPE {header} {s.type}\n")
        names = s.labels
        for values, value in fam.rows:
            labels = ",".join(
                f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)
            )
            braces = f"{{{labels}}}" if names else ""  # no `{}` on a family without labels
            out.append(f"{sample}{braces} {_number(value)}\n")
    return "".join(out)


_USAGE_SQL = (  # all-time totals: the daily rollup holds the same sums in 24x fewer rows
    "SELECT facility, vo, resource, SUM(amount) FROM usage_day "
    "GROUP BY facility, vo, resource ORDER BY facility, vo, resource"
)
# Per-node families leave out nodes silent since before `:since` (a stale target's series
# disappear the same way), so nodes that are gone do not stay in every scrape for ever.
_NODE_SQL = (
    "SELECT facility, node, cpu_cores, memory_bytes, cpu_busy_ratio FROM node "
    "WHERE updated >= :since ORDER BY facility, node"
)
_AGENT_SQL = (
    "SELECT facility, node, MAX(last_seen) FROM agent GROUP BY facility, node "
    "HAVING MAX(last_seen) >= :since ORDER BY facility, node"
)
_SPOOL_SQL = (
    "SELECT facility, node, MAX(last_value) FROM series "
    "WHERE metric = 'agent_spool_batches' AND last_value IS NOT NULL AND last_time >= :since "
    "GROUP BY facility, node ORDER BY facility, node"
)
_SESSIONS_SQL = (
    "SELECT e.facility, m.vo, COUNT(*) FROM event e JOIN member m ON m.id = e.member_id "
    "WHERE e.kind = 'session' AND e.\"end\" IS NULL GROUP BY e.facility, m.vo "
    "ORDER BY e.facility, m.vo"
)


# The time-series outbox (aggregator/store/tsdb.py): one aggregate pass over a table that is
# near empty while the store keeps up. Rows carry no facility: the backlog is the server's.
_OUTBOX_SQL = "SELECT COUNT(*), COALESCE(SUM(samples), 0), MIN(created) FROM tsdb_outbox"
_SOURCES_SQL = (
    "SELECT facility, last_hour, received_at FROM federation_source ORDER BY facility"
)


_GPU_SQL = (
    "SELECT facility, node, metric, labels, last_value FROM series "
    "WHERE metric IN ('gpu_utilization_ratio', 'gpu_held') AND last_value IS NOT NULL "
    "AND last_time >= :since"
)


# Facilities afmon knows before any of their batches counts: agent credentials and the
# agents and nodes that reported (static tokens from the settings come through make_registry).
_FACILITIES_SQL = (
    "SELECT facility FROM agent_token UNION SELECT facility FROM agent "
    "UNION SELECT facility FROM node"
)


def known_facilities(engine: Engine) -> set[str]:
    with read_connection(engine) as conn:
        return {f for (f,) in conn.execute(text(_FACILITIES_SQL)) if f}


def signal_families(engine: Engine, now: float) -> list[Family]:
    """afmon's alert signals as gauges, computed as its own evaluator computes them."""
    values = compute(engine, now)
    out = []
    for name, _unit, labels, _meaning in SIGNAL_GAUGES:
        rows = [
            (tuple(dict(o.labels).get(lab, "") for lab in labels), o.value)
            for o in values.get(name, [])
        ]
        out.append(Family(spec(signal_metric_name(name)), sorted(rows)))
    return out


def _gpu_families(rows: Iterable[tuple[str, str, str, str, float]]) -> list[Family]:
    """Per GPU (or MIG unit): its busy ratio, and whether anyone holds it (max over users:
    the user stays out of the labels)."""
    util: dict[tuple[str, str], float] = {}
    held: dict[tuple[str, str], float] = {}
    for facility, node, metric, labels, value in rows:
        key = (facility, node, json.loads(labels).get("gpu", ""))
        if metric == "gpu_held":
            held[key] = max(held.get(key, 0.0), float(value))
        else:
            util[key] = float(value)
    return [
        Family(spec("afmon_gpu_utilization_ratio"), sorted(util.items())),
        Family(spec("afmon_gpu_held"), sorted(held.items())),
    ]


def _outbox_families(batches: int, samples: float, oldest: float | None) -> list[Family]:
    """Rows and samples waiting for the store (0 when none), and when the oldest waiting row
    was staged (no row while the outbox is empty)."""
    return [
        Family(spec("afmon_tsdb_outbox_batches"), [((), float(batches))]),
        Family(spec("afmon_tsdb_outbox_samples"), [((), float(samples))]),
        Family(
            spec("afmon_tsdb_outbox_oldest_timestamp_seconds"),
            [] if oldest is None else [((), float(oldest))],
        ),
    ]


def read_families(engine: Engine, usage_totals: bool = True, since: float = 0.0) -> list[Family]:
    """Ledger-derived families, read in one short read-only transaction; `usage_totals`
    False leaves out the per-(facility, VO) usage families, and nodes silent since before
    `since` (epoch seconds) are left out of the per-node families."""
    recent = {"since": max(since, 0.0)}
    usage = {r: Family(spec(usage_metric_name(r)), []) for r in RESOURCES} if usage_totals else {}
    node = [
        Family(spec(n), [])
        for n in ("afmon_node_cpu_cores", "afmon_node_memory_bytes", "afmon_node_cpu_busy_ratio")
    ]
    seen = Family(spec("afmon_agent_last_seen_timestamp_seconds"), [])
    spool = Family(spec("afmon_agent_spool_batches"), [])
    sessions = Family(spec("afmon_sessions_active"), [])
    with read_connection(engine) as conn:
        for facility, vo, resource, amount in conn.execute(text(_USAGE_SQL)) if usage else ():
            if resource in usage:
                usage[resource].rows.append(((facility, vo), float(amount)))
        for facility, name, *values in conn.execute(text(_NODE_SQL), recent):
            for fam, value in zip(node, values, strict=True):
                if value is not None:
                    fam.rows.append(((facility, name), float(value)))
        for family, sql in ((seen, _AGENT_SQL), (spool, _SPOOL_SQL), (sessions, _SESSIONS_SQL)):
            for a, b, value in conn.execute(text(sql), recent):
                family.rows.append(((a, b), float(value)))
        gpus = _gpu_families(conn.execute(text(_GPU_SQL), recent))
        outbox = _outbox_families(*conn.execute(text(_OUTBOX_SQL)).one())
        sources = [
            Family(spec("afmon_federation_source_last_hour_timestamp_seconds"), []),
            Family(spec("afmon_federation_source_received_timestamp_seconds"), []),
        ]
        for facility, last_hour, received in conn.execute(text(_SOURCES_SQL)):
            if last_hour is not None:
                sources[0].rows.append(((facility,), float(last_hour)))
            sources[1].rows.append(((facility,), float(received)))
    return [*usage.values(), *node, seen, spool, sessions, *gpus, *outbox, *sources]


class LedgerCollector(Collector):
    """The ledger-derived families, cached for `ttl` seconds, with their rendered text."""

    def __init__(
        self,
        engine: Engine,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        usage_totals: bool = True,
        node_silence: float = float("inf"),
        now: Callable[[], float] = time.time,
        on_facilities: Callable[[set[str]], None] | None = None,
    ) -> None:
        self._engine = engine
        self.on_facilities = on_facilities
        self._usage_totals = usage_totals
        self._node_silence = node_silence
        self._now = now
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._families: list[Family] = []
        self._text: dict[bool, str] = {}
        self._at = float("-inf")

    def invalidate(self) -> None:
        """The next scrape reads the database again."""
        with self._lock:
            self._at = float("-inf")

    def families(self) -> list[Family]:
        with self._lock:
            now = self._clock()
            if now - self._at > self._ttl:
                wall = self._now()
                self._families = [
                    *read_families(self._engine, self._usage_totals, wall - self._node_silence),
                    *signal_families(self._engine, wall),
                ]
                if self.on_facilities is not None:
                    self.on_facilities(known_facilities(self._engine))
                self._text = {}
                self._at = now
            return self._families

    def render(self, openmetrics: bool) -> str:
        families = self.families()
        with self._lock:
            if openmetrics not in self._text:
                self._text[openmetrics] = render_families(families, openmetrics)
            return self._text[openmetrics]

    def collect(self) -> Iterator[Metric]:
        for fam in self.families():
            if fam.rows:
                yield fam.to_metric()


class MetricsRegistry(CollectorRegistry):
    """The app's registry: prometheus_client instruments plus the ledger collector.

    `collect()` yields everything (so any prometheus_client tool works on it);
    `render()` is the fast path that /metrics uses.
    """

    def __init__(self, ledger: LedgerCollector) -> None:
        super().__init__()
        self.ledger = ledger

    def collect(self) -> Iterator[Metric]:
        ledger = list(self.ledger.collect())  # first: it primes the ingest counters
        yield from super().collect()
        yield from ledger

    def render(self, openmetrics: bool) -> bytes:
        self.ledger.families()  # first: it primes the ingest counters of new facilities
        instruments = _Instruments(self)
        if openmetrics:
            head = openmetrics_latest(instruments).decode()
            head = head.removesuffix("# EOF\n")
            return (head + self.ledger.render(True) + "# EOF\n").encode()
        return text_latest(instruments) + self.ledger.render(False).encode()


class _Instruments:
    """A view of the registry without the ledger collector."""

    def __init__(self, registry: MetricsRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        return CollectorRegistry.collect(self._registry)


def render_exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """Body and content type for a scrape with this Accept header."""
    encoder, content_type = choose_encoder(accept)
    if isinstance(registry, MetricsRegistry):
        return registry.render(content_type.startswith(OPENMETRICS)), content_type
    return encoder(registry), content_type


def make_registry(
    engine: Engine,
    per_vo: bool = True,
    node_silence: float = float("inf"),
    now: Callable[[], float] = time.time,
    facilities: Iterable[str] = (),
    alertmanagers: Iterable[str] = (),
) -> tuple[MetricsRegistry, IngestMetrics]:
    """The registry of /metrics; `per_vo` False leaves out every family labelled by VO
    (usage totals and latency histograms): operational families only; nodes silent for
    longer than `node_silence` seconds leave the per-node families. The ingest counters of
    `facilities` (the settings' static tokens) and of those in the database start at 0, as
    do the push counters of `alertmanagers`."""
    # `_created` series double the exposition and no afmon reader uses them.
    disable_created_metrics()
    ledger = LedgerCollector(engine, usage_totals=per_vo, node_silence=node_silence, now=now)
    registry = MetricsRegistry(ledger)
    if per_vo:
        registry.register(LatencyCollector(engine))
    instruments = IngestMetrics(registry, facilities, alertmanagers)
    ledger.on_facilities = instruments.prime
    return registry, instruments
