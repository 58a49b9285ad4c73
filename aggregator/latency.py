"""Interactive-analysis latency: fixed histogram buckets, the event rules that observe
latencies (and Dask worker time), percentiles from summed buckets, and /metrics families.

Latency kinds (the `kind` column of the `latency` table) and the events they come from:

    time_to_session       spawn            request -> server ready and routed (JupyterHub)
    time_to_first_worker  dask_scale       cluster requested -> first worker joined
                          (reason=first_worker)
    time_to_scale_up      dask_scale       scale request -> target worker count reached
    time_to_finish        dask_computation graph submitted -> all its keys done
    batch_queue_wait      (batch accounting) job submitted -> job started

Each latency counts once, in the hour its wait began, in the first bucket whose upper bound
(`le`, seconds) is at least the latency. Buckets are fixed, so hours merge exactly and any
window's percentiles come from summed buckets (`quantile`). The seed's targets are the default
SLOs (`ServerSettings.latency_slo_seconds`) and are bucket bounds, so "share within the SLO" is
exact.

This module imports nothing of the ledger at import time: the ledger imports it to register
the rules below (`EVENT_RULES`), and AttrError is looked up when a rule needs it.
"""

from __future__ import annotations

import bisect
import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import Engine, text

from collectors import wire

if TYPE_CHECKING:
    from aggregator.identity import MemberRef
    from aggregator.ledger import Increments

INF = math.inf
# SLO-aligned upper bounds in seconds: O(seconds) 10, O(1 minute) 60, O(few minutes) 300,
# 30 min to 1 h 1800/3600; +Inf last. Up to 600 s they are JupyterHub's own spawn buckets, and
# they hold every bound of metric_catalog.LATENCY_BUCKETS (the /metrics histograms).
BUCKETS_SECONDS: tuple[float, ...] = (
    0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 1800.0, 3600.0,
    7200.0, INF,
)  # fmt: skip

TIME_TO_SESSION = "time_to_session"
TIME_TO_FIRST_WORKER = "time_to_first_worker"
TIME_TO_SCALE_UP = "time_to_scale_up"
TIME_TO_FINISH = "time_to_finish"
BATCH_QUEUE_WAIT = "batch_queue_wait"
KINDS: dict[str, str] = {
    TIME_TO_SESSION: "Time to session",
    TIME_TO_FIRST_WORKER: "Time to first Dask worker",
    TIME_TO_SCALE_UP: "Time to Dask scale-up",
    TIME_TO_FINISH: "Time to finish (Dask computation)",
    BATCH_QUEUE_WAIT: "Batch queue wait",
}
DEFAULT_SLO_SECONDS: dict[str, float] = {
    TIME_TO_SESSION: 10.0,
    TIME_TO_FIRST_WORKER: 60.0,
    TIME_TO_SCALE_UP: 300.0,
    TIME_TO_FINISH: 3600.0,
}
DEFAULT_PROFILE = "default"
SPAWN_OUTCOMES = ("ok", "failed", "timeout", "stopped")
HOUR = 3600


def bucket_of(seconds: float) -> float:
    """The upper bound of the bucket that holds `seconds`."""
    if not seconds >= 0:  # also refuses NaN
        raise ValueError(f"a latency must be a non-negative number of seconds, not {seconds}")
    return BUCKETS_SECONDS[bisect.bisect_left(BUCKETS_SECONDS, seconds)]


def lower_bound(le: float) -> float:
    i = BUCKETS_SECONDS.index(le)
    return 0.0 if i == 0 else BUCKETS_SECONDS[i - 1]


def quantile(buckets: Sequence[tuple[float, int, float]], q: float) -> float:
    """The q-quantile (0..1) of observations given as (le, count, sum_seconds) per bucket.

    Linear interpolation inside the bucket that holds the rank q x count (as Prometheus'
    histogram_quantile), so the answer lies in the same bucket as the nearest-rank quantile of
    the raw values: it is off by less than that bucket's width. In the open top bucket the
    mean of its observations is the answer. NaN without observations.
    """
    rows = sorted((le, c, s) for le, c, s in buckets if c)
    total = sum(c for _le, c, _s in rows)
    if total == 0:
        return math.nan
    rank = q * total
    seen = 0
    for le, c, s in rows:
        if seen + c >= rank:
            if math.isinf(le):
                return s / c
            lo = lower_bound(le)
            return lo + (le - lo) * max(0.0, rank - seen) / c
        seen += c
    le, c, s = rows[-1]
    return s / c if math.isinf(le) else le


def summarize(
    buckets: pd.DataFrame,
    by: Sequence[str],
    quantiles: Sequence[float] = (0.5, 0.9, 0.99),
    slo_seconds: float | None = None,
) -> pd.DataFrame:
    """From rows (by..., le, count, sum_seconds): per group count, mean_seconds,
    p<q>_seconds (e.g. p50_seconds) and, with an SLO, within_slo_ratio (exact when the SLO is
    a bucket bound)."""
    qcols = [f"p{round(q * 100):g}_seconds" for q in quantiles]
    cols = [*by, "count", "mean_seconds", *qcols] + (["within_slo_ratio"] if slo_seconds else [])
    out: list[dict[str, Any]] = []
    groups = buckets.groupby(list(by), sort=True) if by else [((), buckets)]
    for key, g in groups:
        rows = list(zip(g["le"], g["count"], g["sum_seconds"], strict=True))
        n = int(sum(c for _le, c, _s in rows))
        if n == 0:
            continue
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        row["count"] = n
        row["mean_seconds"] = sum(s for _le, _c, s in rows) / n
        for q, col in zip(quantiles, qcols, strict=True):
            row[col] = quantile(rows, q)
        if slo_seconds:
            row["within_slo_ratio"] = sum(c for le, c, _s in rows if le <= slo_seconds) / n
        out.append(row)
    return pd.DataFrame(out, columns=cols)


# -- event rules ---------------------------------------------------------------------------


def _attr_error(attr: str, message: str) -> Exception:
    from aggregator.ledger import AttrError

    return AttrError(attr, message)


def _profile(e: wire.Event) -> str:
    value = e.attrs.get("profile", DEFAULT_PROFILE)
    if not isinstance(value, str) or not value:
        raise _attr_error("profile", f"{e.kind} {e.id}: profile must be a non-empty string")
    return value[:64]


def _int(e: wire.Event, attr: str, default: int | None = None, minimum: int = 0) -> int:
    value = e.attrs.get(attr, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise _attr_error(attr, f"{e.kind} {e.id}: {attr} must be a whole number, not {value!r}")
    if value < minimum:
        raise _attr_error(attr, f"{e.kind} {e.id}: {attr} must be at least {minimum}")
    return int(value)


def _choice(e: wire.Event, attr: str, choices: Sequence[str], default: str) -> str:
    value = e.attrs.get(attr, default)
    if value not in choices:
        raise _attr_error(attr, f"{e.kind} {e.id}: {attr} must be one of {', '.join(choices)}")
    return str(value)


def _hour(t: float) -> int:
    return int(t // HOUR) * HOUR


def _wait(e: wire.Event) -> float:
    assert e.end is not None
    return e.end - e.start


def spawn_rule(inc: Increments, facility: str, member: MemberRef, e: wire.Event) -> None:
    """A server start: its wait when it became ready, else one failure."""
    outcome = _choice(e, "outcome", SPAWN_OUTCOMES, "ok")
    profile = _profile(e)
    if outcome == "ok":
        inc.observe(facility, member, TIME_TO_SESSION, profile, _hour(e.start), _wait(e))
    else:
        inc.add(facility, member, "spawn_failures", _hour(e.start), 1.0)


def dask_scale_rule(inc: Increments, facility: str, member: MemberRef, e: wire.Event) -> None:
    """A scale request that reached its target: time-to-first-worker or time-to-scale-up.

    Scale-downs and requests superseded before their target was reached observe nothing.
    """
    reason = _choice(e, "reason", ("first_worker", "scale", "adaptive"), "scale")
    outcome = _choice(e, "outcome", ("ok", "superseded"), "ok")
    target = _int(e, "target", minimum=0)
    before = _int(e, "from", 0)
    if outcome != "ok":
        return
    kind = None
    if reason == "first_worker":
        kind = TIME_TO_FIRST_WORKER
    elif target > before:
        kind = TIME_TO_SCALE_UP
    if kind is not None:
        inc.observe(facility, member, kind, _profile(e), _hour(e.start), _wait(e))


def dask_worker_rule(inc: Increments, facility: str, member: MemberRef, e: wire.Event) -> None:
    """A worker's lifetime: worker-seconds, and x its threads, worker core-seconds."""
    assert e.end is not None
    threads = _int(e, "nthreads", minimum=1)
    inc.add_interval(facility, member, "dask_worker_seconds", e.start, e.end)
    inc.add_interval(facility, member, "dask_worker_core_seconds", e.start, e.end, float(threads))


def dask_computation_rule(inc: Increments, facility: str, member: MemberRef, e: wire.Event) -> None:
    """A computation (one update_graph) whose keys are all done: its time-to-finish."""
    outcome = _choice(e, "outcome", ("ok", "erred", "cancelled"), "ok")
    if outcome == "ok":
        inc.observe(facility, member, TIME_TO_FINISH, _profile(e), _hour(e.start), _wait(e))


EventRule = Callable[["Increments", str, "MemberRef", wire.Event], None]
EVENT_RULES: dict[str, EventRule] = {
    "spawn": spawn_rule,
    "dask_scale": dask_scale_rule,
    "dask_worker": dask_worker_rule,
    "dask_computation": dask_computation_rule,
}

# Which events show each latency kind one by one (the slowest, a member's own waits).
# (event kind, SQL condition on the event id or None)
EVENTS_OF_KIND: dict[str, tuple[str, str | None]] = {
    TIME_TO_SESSION: ("spawn", None),
    TIME_TO_FIRST_WORKER: ("dask_scale", "%/first-worker"),
    TIME_TO_SCALE_UP: ("dask_scale", "%/up-%"),
    TIME_TO_FINISH: ("dask_computation", None),
}


def attrs_of(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# -- /metrics ------------------------------------------------------------------------------


class LatencyCollector(Collector):
    """Latency histograms per (facility, VO) from the ledger, one family per kind that
    `metric_catalog` lists as `afmon_<kind>_seconds`, in the catalog's buckets (each one a
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
        from aggregator.db import read_connection
        from aggregator.metric_catalog import CATALOG

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
