"""Signals for the alert rules: bounded, labelled numbers computed from the database.

Each signal is a function `(conn, now) -> list[Observation]`, reading through
a read-only connection (`afmon.aggregator.store.db.read_connection`). A signal whose
inputs do not exist yet (no probe sends them) returns no observations: its
rules then have "no data" and never fire. Labels are facility, node, GPU;
never a user.

What the signals read (the GPU series are what the probe of issue #4 is to send):

- the ledger's `latency` buckets (issue #3), kinds time_to_session, time_to_first_worker,
  time_to_scale_up: `time_to_*_p95_seconds` per facility;
- wire gauges `gpu_utilization_ratio{node, gpu}` (0..1), `gpu_held{node, gpu, user}` (1 while
  the user's process holds the GPU) and `gpu_requests_waiting{node}` (GPUs asked for and not
  granted): `gpu_idle_held` per GPU and `gpu_hoarders` per facility;
- the agent table: `agent_silence_seconds`; the agent's own `agent_spool_batches` samples:
  `agent_spool_growth_batches`; the ledger's cpu_seconds: `unmapped_usage_ratio`;
- the time-series outbox (`tsdb_outbox`, aggregator/store/tsdb.py): `tsdb_outbox_age_seconds`,
  one server-wide value without labels.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from afmon.aggregator.store.db import read_connection
from afmon.aggregator.store.schema import UNMAPPED

Labels = tuple[tuple[str, str], ...]
log = logging.getLogger(__name__)

LATENCY_WINDOW_SECONDS = 3600.0
SPOOL_WINDOW_SECONDS = 900.0
UNMAPPED_WINDOW_SECONDS = 86400.0
GPU_IDLE_RATIO = 0.05
GPU_FRESH_SECONDS = 600.0  # GPU series older than this say nothing about now
REJECTION_WINDOW_SECONDS = 900.0


@dataclass(frozen=True)
class Observation:
    labels: Labels
    value: float

    @classmethod
    def of(cls, value: float, **labels: str) -> Observation:
        return cls(tuple(sorted(labels.items())), float(value))


def bucket_p95(buckets: list[tuple[float, int]]) -> float:
    """Upper bound of the bucket that holds the nearest-rank 95th percentile (conservative:
    the true p95 is at most this)."""
    total = sum(c for _le, c in buckets)
    rank = max(1, math.ceil(0.95 * total))
    seen = 0
    for le, c in sorted(buckets):
        seen += c
        if seen >= rank:
            return le
    return math.inf


def _latency(kind: str) -> Callable[[Connection, float], list[Observation]]:
    def signal(conn: Connection, now: float) -> list[Observation]:
        by_facility: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for facility, le, count in conn.execute(
            text(
                "SELECT facility, le, SUM(count) FROM latency WHERE kind = :k "
                "AND hour >= :since AND hour <= :now GROUP BY facility, le"
            ),
            {"k": kind, "since": int((now - LATENCY_WINDOW_SECONDS) // 3600 * 3600), "now": now},
        ):
            if count:
                by_facility[facility].append((float(le), int(count)))
        return [Observation.of(bucket_p95(b), facility=f) for f, b in sorted(by_facility.items())]

    signal.__doc__ = f"p95 of {kind} (ledger latency buckets) in the current and last hour"
    return signal


def _latest(conn: Connection, metric: str, now: float) -> list[tuple[str, str, dict, float]]:
    """(facility, node, labels, last value) of the metric's fresh series."""
    rows = conn.execute(
        text(
            "SELECT facility, node, labels, last_value FROM series WHERE metric = :m "
            "AND last_value IS NOT NULL AND last_time >= :fresh"
        ),
        {"m": metric, "fresh": now - GPU_FRESH_SECONDS},
    )
    return [(f, n, json.loads(lab), v) for f, n, lab, v in rows]


def gpu_idle_held(conn: Connection, now: float) -> list[Observation]:
    """1 for a GPU that a process holds while it is idle (busy < GPU_IDLE_RATIO), else 0."""
    held: dict[tuple[str, str, str], bool] = defaultdict(bool)
    for f, n, labels, v in _latest(conn, "gpu_held", now):
        held[(f, n, labels.get("gpu", ""))] |= v >= 1
    out = []
    for f, n, labels, util in _latest(conn, "gpu_utilization_ratio", now):
        key = (f, n, labels.get("gpu", ""))
        if key in held:
            idle = held[key] and util < GPU_IDLE_RATIO
            out.append(Observation.of(1.0 if idle else 0.0, facility=f, node=n, gpu=key[2]))
    return sorted(out, key=lambda o: o.labels)


def gpu_hoarders(conn: Connection, now: float) -> list[Observation]:
    """Per facility with GPU requests waiting: how many users hold two GPUs or more; 0 for a
    facility whose GPUs report with none waiting (or no queue reported)."""
    waiting: dict[str, float] = defaultdict(float)
    for f, _n, _labels, v in _latest(conn, "gpu_requests_waiting", now):
        waiting[f] += v
    gpus: dict[tuple[str, str], set[tuple[str, str]]] = defaultdict(set)
    reporting = set(waiting)
    for f, n, labels, v in _latest(conn, "gpu_held", now):
        reporting.add(f)
        if v >= 1 and labels.get("user"):
            gpus[(f, labels["user"])].add((n, labels.get("gpu", "")))
    hoarders: dict[str, int] = defaultdict(int)
    for (f, _user), held in gpus.items():
        hoarders[f] += len(held) >= 2
    return [
        Observation.of(hoarders[f] if waiting.get(f, 0.0) > 0 else 0, facility=f)
        for f in sorted(reporting)
    ]


def agent_silence_seconds(conn: Connection, now: float) -> list[Observation]:
    """Seconds since each node's agent last delivered a batch."""
    rows = conn.execute(
        text("SELECT facility, node, MAX(last_seen) FROM agent GROUP BY facility, node")
    )
    return [Observation.of(now - seen, facility=f, node=n) for f, n, seen in sorted(rows)]


def agent_spool_growth_batches(conn: Connection, now: float) -> list[Observation]:
    """Growth of the agent's spool (batches) over the last SPOOL_WINDOW_SECONDS, per node."""
    first: dict[tuple[str, str], float] = {}
    last: dict[tuple[str, str], float] = {}
    for f, n, value in conn.execute(
        text(
            "SELECT s.facility, s.node, x.value FROM sample x JOIN series s ON s.id = x.series_id "
            "WHERE s.metric = 'agent_spool_batches' AND x.time > :since AND x.time <= :now "
            "ORDER BY x.time"
        ),
        {"since": now - SPOOL_WINDOW_SECONDS, "now": now},
    ):
        first.setdefault((f, n), value)
        last[(f, n)] = value
    return [Observation.of(last[k] - first[k], facility=k[0], node=k[1]) for k in sorted(last)]


def unmapped_usage_ratio(conn: Connection, now: float) -> list[Observation]:
    """Share of CPU time accounted to unmapped accounts in the last day, per facility."""
    rows = conn.execute(
        text(
            "SELECT facility, SUM(CASE WHEN vo = :u THEN amount ELSE 0 END), SUM(amount) "
            "FROM usage WHERE resource = 'cpu_seconds' AND hour >= :since GROUP BY facility"
        ),
        {"u": UNMAPPED, "since": int((now - UNMAPPED_WINDOW_SECONDS) // 3600 * 3600)},
    )
    return [Observation.of(u / t, facility=f) for f, u, t in sorted(rows) if t]


def tsdb_outbox_age_seconds(conn: Connection, now: float) -> list[Observation]:
    """Seconds since the oldest batch still waiting for the time-series store was staged; no
    data while the outbox is empty (no store configured, or the store keeps up). Server-wide:
    outbox rows carry no facility, and one drain serves them all."""
    oldest = conn.execute(text("SELECT MIN(created) FROM tsdb_outbox")).scalar_one()
    return [] if oldest is None else [Observation.of(now - float(oldest))]


def gpu_hold_seconds_max(conn: Connection, now: float) -> list[Observation]:
    """Per facility whose GPUs report: the longest a GPU has been held without a break until
    now (its `gpu_held` samples at 1 since the last 0, or since its first kept sample); 0
    when none is held. The time bound of interactive GPUs is the rule's threshold."""
    longest: dict[str, float] = {}
    held = conn.execute(
        text(
            "SELECT s.id, s.facility, s.first_time FROM series s WHERE s.metric = 'gpu_held' "
            "AND s.last_value >= 1 AND s.last_time >= :fresh"
        ),
        {"fresh": now - GPU_FRESH_SECONDS},
    ).all()
    for f, _n, _labels, _v in _latest(conn, "gpu_held", now):
        longest.setdefault(f, 0.0)
    for sid, facility, first in held:
        since = conn.execute(
            text(
                "SELECT MIN(time) FROM sample WHERE series_id = :s AND time > COALESCE("
                "(SELECT MAX(time) FROM sample WHERE series_id = :s AND value < 1), -1)"
            ),
            {"s": sid},
        ).scalar_one()
        start = since if since is not None else first
        if start is not None:
            longest[facility] = max(longest.get(facility, 0.0), now - float(start))
    return [Observation.of(v, facility=f) for f, v in sorted(longest.items())]


def federation_staleness_seconds(conn: Connection, now: float) -> list[Observation]:
    """Upstream side of federated accounting: seconds since the end of the newest ledger hour
    each publishing facility delivered (an hour closes, then it is published)."""
    rows = conn.execute(
        text("SELECT facility, last_hour FROM federation_source WHERE last_hour IS NOT NULL")
    )
    return [Observation.of(now - (h + 3600), facility=f) for f, h in sorted(rows)]


SIGNALS: dict[str, Callable[[Connection, float], list[Observation]]] = {
    "time_to_session_p95_seconds": _latency("time_to_session"),
    "time_to_first_worker_p95_seconds": _latency("time_to_first_worker"),
    "time_to_scale_up_p95_seconds": _latency("time_to_scale_up"),
    "gpu_idle_held": gpu_idle_held,
    "gpu_hoarders": gpu_hoarders,
    "gpu_hold_seconds_max": gpu_hold_seconds_max,
    "agent_silence_seconds": agent_silence_seconds,
    "agent_spool_growth_batches": agent_spool_growth_batches,
    "unmapped_usage_ratio": unmapped_usage_ratio,
    "tsdb_outbox_age_seconds": tsdb_outbox_age_seconds,
    "federation_staleness_seconds": federation_staleness_seconds,
}
# Computed from the server's own instruments, not the database (see CounterWindow).
PROCESS_SIGNALS = ("ingest_rejected_batches", "ingest_write_failures")


class CounterWindow:
    """Increase of in-process counters over a sliding window (what PromQL's increase() does).

    The counters live as long as the process and start at 0, so a label set seen for the
    first time counts its whole value as increase."""

    def __init__(self, window: float = REJECTION_WINDOW_SECONDS) -> None:
        self._window = window
        self._history: dict[Labels, deque[tuple[float, float]]] = defaultdict(deque)

    def observe(self, now: float, values: Mapping[Labels, float]) -> list[Observation]:
        out = []
        for labels, value in sorted(values.items()):
            h = self._history[labels]
            if not h:  # process counters start at 0: a new label set rose from 0
                h.append((now, 0.0))
            h.append((now, value))
            while len(h) > 1 and h[1][0] <= now - self._window:
                h.popleft()
            out.append(Observation(labels, value - h[0][1]))
        return out


def compute(
    engine: Engine, now: float, names: set[str] | None = None
) -> dict[str, list[Observation]]:
    """Every database signal (or those in `names`) at time `now`.

    A signal that fails (say, its table does not exist in this deployment) is logged and has
    no data: its rules cannot fire, the others still run.
    """
    out: dict[str, list[Observation]] = {}
    for name, fn in SIGNALS.items():
        if names is not None and name not in names:
            continue
        try:
            with read_connection(engine) as conn:
                out[name] = fn(conn, now)
        except SQLAlchemyError:
            log.exception("signal %s failed; its rules have no data", name)
            out[name] = []
    return out
