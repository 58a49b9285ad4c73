"""The one catalog of afmon's Prometheus metrics.

Every family that `/metrics` exposes is listed here with its type, base unit,
help text and labels; `afmon.aggregator.metrics.exporter` builds its families from these
entries, Grafana dashboards and exported alert rules may only use names found
here, and docs/metrics.md is generated from it (`python -m
afmon.aggregator.metrics.catalog`). Labels are bounded: facility, VO, node, outcome,
never a user. Usage counters follow the ledger's `RESOURCES`, so a new ledger
resource gets its counter (and its docs row) without another edit.

`status="planned"` marks a metric that a collector issue is adding: alert
rules and dashboard panels may refer to it (they then show "no data"), but
`/metrics` does not expose it yet.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal

from afmon.aggregator.store.schema import RESOURCES

MetricType = Literal["counter", "gauge", "histogram"]

INGEST_OUTCOMES = (
    "applied",
    "duplicate",
    "rejected",
    "unauthorized",
    "too_large",
    "rate_limited",
    "over_limit",
    "partial",
)
# Why a record is refused (`wire.Refusal.reason`): collectors/wire.py's record rules, the
# ingest's own (aggregator/ingest/: capacity, labels, resources), and a body that does not
# decode. The one list of them: /metrics creates every (facility, reason) child at 0 from it,
# and tests/alerts check that every reason the code can give is here.
REFUSAL_REASONS = (
    "malformed",
    "reserved_label",
    "missing_label",
    "too_many_labels",
    "length_mismatch",
    "non_finite",
    "times_not_increasing",
    "wrong_unit",
    "wrong_kind",
    "negative_counter",
    "negative_gauge",
    "value_too_large",
    "future",
    "too_old",
    "too_long",
    "ends_before_start",
    "bad_attribute",
    "repeated_series",
    "unknown_resource",
    "beyond_capacity",
    "no_user",
    "no_node",
    "unsupported",
)
# Why a database write failed (aggregator/web/health.py's classification).
WRITE_FAILURE_REASONS = ("locked", "disk_full", "read_only", "unavailable", "other")
INGEST_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# SLO-aligned buckets for the interactive latencies (seconds), planned in issue #3.
LATENCY_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class MetricSpec:
    """One metric family. `name` is the family name (a counter's samples end `_total`)."""

    name: str
    type: MetricType
    unit: str
    help: str
    labels: tuple[str, ...]
    source: str
    label_values: dict[str, tuple[str, ...]] = field(default_factory=dict)
    buckets: tuple[float, ...] = ()
    status: Literal["live", "planned"] = "live"

    @property
    def sample_names(self) -> tuple[str, ...]:
        """The series names that PromQL sees."""
        if self.type == "counter":
            return (f"{self.name}_total",)
        if self.type == "histogram":
            return tuple(f"{self.name}_{s}" for s in ("bucket", "sum", "count"))
        return (self.name,)


USAGE_PREFIX = "afmon_usage_"


def usage_metric_name(resource: str) -> str:
    return f"{USAGE_PREFIX}{resource}"


def _usage_specs() -> list[MetricSpec]:
    return [
        MetricSpec(
            usage_metric_name(r.name),
            "counter",
            r.unit,
            f"{r.title} ({r.unit}), summed over the ledger",
            ("facility", "vo"),
            "ledger (usage table)",
        )
        for r in RESOURCES.values()
    ]


_NODE = ("facility", "node")
SIGNAL_PREFIX = "afmon_signal_"

# afmon's alert signals (aggregator/query/signals.py SIGNALS) as live-state gauges: (signal,
# unit, labels, meaning). Exported rules read these, so that Prometheus and afmon's own
# evaluator judge the same numbers; rate() over ledger totals would not, since late and
# backfilled data land in the totals when they arrive, not in the hour they describe.
# Signals that are the age of a timestamp are not here: their rules read `time()` minus the
# timestamp's own gauge (agent last seen, outbox oldest), the same number.
SIGNAL_GAUGES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("time_to_session_p95_seconds", "seconds", ("facility",),
     "p95 of time-to-session in the current and last hour (upper bound of its bucket)"),
    ("time_to_first_worker_p95_seconds", "seconds", ("facility",),
     "p95 of time-to-first-worker in the current and last hour (upper bound of its bucket)"),
    ("time_to_scale_up_p95_seconds", "seconds", ("facility",),
     "p95 of time-to-scale-up in the current and last hour (upper bound of its bucket)"),
    ("gpu_idle_held", "1", ("facility", "node", "gpu"),
     "1 while a process holds the GPU and it is under 5 % busy, else 0"),
    ("gpu_hoarders", "members", ("facility",),
     "Members holding two GPUs or more while GPU requests wait (0 when none wait)"),
    ("gpu_hold_seconds_max", "seconds", ("facility",),
     "The longest a GPU has been held without a break until now (0 when none is held)"),
    ("agent_spool_growth_batches", "batches", _NODE,
     "Growth of the agent's spool over the last 15 min"),
    ("unmapped_usage_ratio", "ratio", ("facility",),
     "Share of the last day's CPU time accounted to unmapped accounts"),
)  # fmt: skip


def signal_metric_name(signal: str) -> str:
    return f"{SIGNAL_PREFIX}{signal}"


def _signal_specs() -> list[MetricSpec]:
    return [
        MetricSpec(
            signal_metric_name(name),
            "gauge",
            unit,
            f"Alert signal {name}: {meaning}",
            labels,
            "alert signals (aggregator/query/signals.py), computed at scrape time",
        )
        for name, unit, labels, meaning in SIGNAL_GAUGES
    ]


CATALOG: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        *_usage_specs(),
        MetricSpec(
            "afmon_node_cpu_cores",
            "gauge",
            "cores",
            "CPU cores of the node",
            _NODE,
            "node table (agent's node_cpu_cores)",
        ),
        MetricSpec(
            "afmon_node_memory_bytes",
            "gauge",
            "bytes",
            "Memory of the node",
            _NODE,
            "node table (agent's node_memory_bytes)",
        ),
        MetricSpec(
            "afmon_node_cpu_busy_ratio",
            "gauge",
            "ratio",
            "Busy share of the node's CPUs (0..1)",
            _NODE,
            "node table (agent's node_cpu_busy_ratio)",
        ),
        MetricSpec(
            "afmon_agent_last_seen_timestamp_seconds",
            "gauge",
            "seconds",
            "When the node's agent last delivered a batch (UNIX time)",
            _NODE,
            "agent table",
        ),
        MetricSpec(
            "afmon_agent_spool_batches",
            "gauge",
            "batches",
            "Batches waiting in the node agent's spool, as the agent last reported",
            _NODE,
            "latest agent_spool_batches sample",
        ),
        MetricSpec(
            "afmon_tsdb_outbox_batches",
            "gauge",
            "batches",
            "Ingested batches whose raw samples wait in the outbox for the time-series store",
            (),
            "tsdb_outbox table (COUNT)",
        ),
        MetricSpec(
            "afmon_tsdb_outbox_samples",
            "gauge",
            "samples",
            "Raw samples waiting in the outbox for the time-series store",
            (),
            "tsdb_outbox table (SUM of samples)",
        ),
        MetricSpec(
            "afmon_tsdb_outbox_oldest_timestamp_seconds",
            "gauge",
            "seconds",
            "When the oldest batch waiting in the outbox was staged (UNIX time); "
            "absent while the outbox is empty",
            (),
            "tsdb_outbox table (MIN of created)",
        ),
        MetricSpec(
            "afmon_federation_source_last_hour_timestamp_seconds",
            "gauge",
            "seconds",
            "Upstream side: the start of the newest ledger hour a publishing facility "
            "delivered (UNIX time; docs/federation.md)",
            ("facility",),
            "federation_source table",
        ),
        MetricSpec(
            "afmon_federation_source_received_timestamp_seconds",
            "gauge",
            "seconds",
            "Upstream side: when a publishing facility's last publication arrived (UNIX time)",
            ("facility",),
            "federation_source table",
        ),
        MetricSpec(
            "afmon_sessions_active",
            "gauge",
            "sessions",
            "Interactive sessions started and not yet ended",
            ("facility", "vo"),
            "event table (sessions without an end)",
        ),
        MetricSpec(
            "afmon_ingest_batches",
            "counter",
            "batches",
            "Batches received, by outcome",
            ("facility", "outcome"),
            "ingest route",
            label_values={"outcome": INGEST_OUTCOMES},
        ),
        MetricSpec(
            "afmon_ingest_samples",
            "counter",
            "samples",
            "Samples applied to the store and ledger",
            ("facility",),
            "ingest route",
        ),
        MetricSpec(
            "afmon_ingest_stale_samples",
            "counter",
            "samples",
            "Samples not applied because the series already had newer ones (each counts once)",
            ("facility",),
            "ingest route",
        ),
        MetricSpec(
            "afmon_ingest_refused_records",
            "counter",
            "records",
            "Series and events refused at ingest (quarantined while the rest of their batch "
            "was applied), by reason: `afmon quarantine list`",
            ("facility", "reason"),
            "ingest route",
            label_values={"reason": REFUSAL_REASONS},
        ),
        MetricSpec(
            "afmon_ingest_write_failures",
            "counter",
            "batches",
            "Batches not stored because the database failed (answered 503, retried by the "
            "agent), by reason",
            ("facility", "reason"),
            "ingest route",
            label_values={"reason": WRITE_FAILURE_REASONS},
        ),
        MetricSpec(
            "afmon_alertmanager_alerts",
            "counter",
            "alerts",
            "Alerts pushed to an Alertmanager (AFMON_ALERTMANAGER_URLS), by outcome: `sent` "
            "(accepted) or `dropped` (refused with a 4xx, not retried)",
            ("alertmanager", "outcome"),
            "alert push",
            label_values={"outcome": ("sent", "dropped")},
        ),
        MetricSpec(
            "afmon_alertmanager_send_failures",
            "counter",
            "requests",
            "Pushes to an Alertmanager that failed (unreachable, 5xx: retried with backoff; "
            "4xx: dropped)",
            ("alertmanager",),
            "alert push",
        ),
        MetricSpec(
            "afmon_ingest_duration_seconds",
            "histogram",
            "seconds",
            "Time to decode and apply one batch",
            (),
            "ingest route",
            buckets=INGEST_DURATION_BUCKETS,
        ),
        MetricSpec(
            "afmon_time_to_session_seconds",
            "histogram",
            "seconds",
            "Session requested -> server ready and routed",
            ("facility", "vo"),
            "JupyterHub probe via the latency ledger",
            buckets=LATENCY_BUCKETS,
        ),
        MetricSpec(
            "afmon_time_to_first_worker_seconds",
            "histogram",
            "seconds",
            "Dask cluster requested -> first worker joined",
            ("facility", "vo"),
            "Dask probe via the latency ledger",
            buckets=LATENCY_BUCKETS,
        ),
        MetricSpec(
            "afmon_time_to_scale_up_seconds",
            "histogram",
            "seconds",
            "Dask scale request -> target worker count reached",
            ("facility", "vo"),
            "Dask probe via the latency ledger",
            buckets=LATENCY_BUCKETS,
        ),
        MetricSpec(
            "afmon_time_to_finish_seconds",
            "histogram",
            "seconds",
            "Dask computation submitted -> all its keys done",
            ("facility", "vo"),
            "Dask probe via the latency ledger",
            buckets=LATENCY_BUCKETS,
        ),
        MetricSpec(
            "afmon_gpu_utilization_ratio",
            "gauge",
            "ratio",
            "Busy share of the GPU (0..1)",
            ("facility", "node", "gpu"),
            "latest gpu_utilization_ratio / gpu_held samples (GPU probe)",
        ),
        MetricSpec(
            "afmon_gpu_held",
            "gauge",
            "1",
            "1 while a process holds the GPU, else 0",
            ("facility", "node", "gpu"),
            "latest gpu_utilization_ratio / gpu_held samples (GPU probe)",
        ),
        *_signal_specs(),
    )
}

FORBIDDEN_LABELS = frozenset({"user", "member", "member_id", "subject", "local_user", "username"})


def spec(name: str) -> MetricSpec:
    try:
        return CATALOG[name]
    except KeyError:
        raise KeyError(f"{name} is not in afmon.aggregator.metrics.catalog.CATALOG") from None


def live() -> list[MetricSpec]:
    return [s for s in CATALOG.values() if s.status == "live"]


def series_names() -> dict[str, MetricSpec]:
    """Every PromQL series name (`_total`, `_bucket`, ...) -> its family."""
    return {n: s for s in CATALOG.values() for n in s.sample_names}


def markdown_table() -> str:
    """The table that docs/metrics.md shows between its generated markers."""
    rows = [
        "| series | type | unit | labels | status | meaning | source |",
        "|---|---|---|---|---|---|---|",
    ]
    usage = [s for s in CATALOG.values() if s.name.startswith(USAGE_PREFIX)]
    if usage:
        rows.append(
            f"| `{USAGE_PREFIX}<resource>_total` | counter | the resource's unit | facility, vo "
            "| live | one counter per ledger resource (every entry of "
            "`afmon.aggregator.store.schema.RESOURCES`, see accounting.md), summed over all hours "
            "| ledger (usage table) |"
        )
    others = [s for s in CATALOG.values() if not s.name.startswith(USAGE_PREFIX)]
    for s in sorted(others, key=lambda s: (s.status != "live", s.name)):
        labels = ", ".join(
            f"{lab} ({' / '.join(s.label_values[lab])})" if lab in s.label_values else lab
            for lab in s.labels
        )
        names = " ".join(f"`{n}`" for n in s.sample_names)
        rows.append(
            f"| {names} | {s.type} | {s.unit} | {labels or '-'} | {s.status} | {s.help} "
            f"| {s.source} |"
        )
    return "\n".join(rows) + "\n"


BEGIN = "<!-- BEGIN generated by `python -m afmon.aggregator.metrics.catalog` -->"
END = "<!-- END generated -->"


def render_doc(doc: str) -> str:
    """`doc` with the text between the generated markers replaced by the current table."""
    head, sep, rest = doc.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise ValueError("docs/metrics.md lacks the generated-table markers")
    return f"{head}{BEGIN}\n{markdown_table()}{END}{tail}"


if __name__ == "__main__":  # python -m afmon.aggregator.metrics.catalog [docs/metrics.md]
    if len(sys.argv) > 1:
        from pathlib import Path

        path = Path(sys.argv[1])
        path.write_text(render_doc(path.read_text()))
    else:
        sys.stdout.write(markdown_table())
