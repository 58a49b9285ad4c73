"""Interactive-analysis latency, the model every layer shares: the latency kinds, their fixed
histogram buckets and default SLOs, and percentiles from per-wait records and summed buckets.

Latency kinds (the `kind` column of the `latency` table) and the events they come from:

    time_to_session       spawn            request -> server ready and routed (JupyterHub)
    time_to_first_worker  dask_scale       cluster requested -> first worker joined
                          (reason=first_worker)
    time_to_scale_up      dask_scale       scale request -> target worker count reached
    time_to_finish        dask_computation graph submitted -> all its keys done
    batch_queue_wait      (batch accounting) job submitted -> job started

Each latency counts once, in the hour its wait began, in the first bucket whose upper bound
(`le`, seconds) is at least the latency. Buckets are fixed, so hours merge exactly. Where the
waits also have per-wait records (the events of `EVENTS_OF_KIND`), a window's figures come from
those, filtered by their exact start, and percentiles are exact (`quantiles_of`: the standard
linear sample quantile); the buckets serve only for waits without a record, and no percentile
is ever outside [min, max] of the measured waits. A figure covers one `POPULATIONS` entry:
successful waits only (the default), or all starts with the failed ones. The seed's targets
are the default SLOs (`ServerSettings.latency_slo_seconds`) and are bucket bounds, so "share
within the SLO" is exact. The ledger's rules that observe latencies are in
`afmon.aggregator.ledger.latency`, the /metrics histograms in `afmon.aggregator.metrics.latency`.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

INF = math.inf
# SLO-aligned upper bounds in seconds: O(seconds) 10, O(1 minute) 60, O(few minutes) 300,
# 30 min to 1 h 1800/3600; +Inf last. Up to 600 s they are JupyterHub's own spawn buckets, and
# they hold every bound of metrics/catalog.py LATENCY_BUCKETS (the /metrics histograms).
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
# Which waits a figure covers: the successful ones (what the histograms hold; the default), or
# every start, the failed ones (failed, timed out, stopped, superseded, erred, cancelled) with
# their time to failure, from the per-wait records.
POPULATION_OK = "ok"
POPULATION_ALL = "all"
POPULATIONS: dict[str, str] = {
    POPULATION_OK: "successful waits only",
    POPULATION_ALL: "all starts, failed ones included",
}


def bucket_of(seconds: float) -> float:
    """The upper bound of the bucket that holds `seconds`."""
    if not seconds >= 0:  # also refuses NaN
        raise ValueError(f"a latency must be a non-negative number of seconds, not {seconds}")
    return BUCKETS_SECONDS[bisect.bisect_left(BUCKETS_SECONDS, seconds)]


def lower_bound(le: float) -> float:
    i = BUCKETS_SECONDS.index(le)
    return 0.0 if i == 0 else BUCKETS_SECONDS[i - 1]


def _residual_points(
    buckets: Sequence[tuple[float, int, float]],
) -> tuple[list[np.ndarray], list[float]]:
    """Stand-ins for waits known only by their bucket: per bucket of `c` waits summing to `s`,
    `c` points spread evenly over [m - d, m + d] around their mean m = s / c, with d as large
    as the bucket allows (the bucket's bounds; the open top bucket is bounded below only).
    They keep the bucket's count and sum exactly; one wait alone is its own value. Also the
    means, each of which lies within [min, max] of its bucket's waits."""
    counts: list[int] = []
    means: list[float] = []
    spans: list[float] = []
    for le, c, s in buckets:
        c = int(c)
        if c <= 0:
            continue
        m = float(s) / c
        lo = lower_bound(le) if le in BUCKETS_SECONDS else 0.0
        counts.append(c)
        means.append(m)
        spans.append(max(0.0, min(m - lo, le - m)))  # le = inf: m - lo
    if not counts:
        return [], means
    # per bucket m - d + 2 d (i + 0.5) / c, i = 0..c-1: the same operations on every point
    # as one bucket at a time, all buckets at once
    c_ = np.asarray(counts, dtype="int64")
    m_, d_ = np.asarray(means, dtype=float), np.asarray(spans, dtype=float)
    i = np.arange(int(c_.sum())) - np.repeat(np.cumsum(c_) - c_, c_)
    points = np.repeat(m_ - d_, c_) + np.repeat(2.0 * d_, c_) * (i + 0.5) / np.repeat(c_, c_)
    return [points], means


def quantiles_of(
    values: Sequence[float] | np.ndarray,
    buckets: Sequence[tuple[float, int, float]],
    qs: Sequence[float],
) -> list[float]:
    """The q-quantiles (each 0..1) of waits given exactly (`values`, from per-wait records) and,
    beyond them, as (le, count, sum_seconds) histogram buckets. NaN without waits.

    The definition is the standard sample quantile of numpy's default (`method="linear"`,
    Hyndman and Fan's type 7, also R's and pandas' default): the sorted waits x_0..x_(n-1),
    h = (n - 1) q, and the answer x_floor(h) + (h - floor(h)) (x_floor(h)+1 - x_floor(h)).
    With only per-wait records it is that of the raw waits, exactly. Waits known only by their
    bucket take the places `_residual_points` gives them within the bucket, clamped to
    [lowest, highest] of the exact waits and the buckets' means: those lie within [min, max]
    of the measured waits, so no percentile is ever outside [min, max] (a single wait is every
    percentile of itself).
    """
    exact = np.asarray(values, dtype=float)
    points, means = _residual_points(buckets)
    if points:
        known = np.concatenate([exact, np.asarray(means)])
        pseudo = np.clip(np.concatenate(points), known.min(), known.max())
        waits = np.concatenate([exact, pseudo])
    else:
        waits = exact
    if waits.size == 0:
        return [math.nan for _q in qs]
    out = np.quantile(waits, list(qs), method="linear")
    return [float(x) for x in np.clip(out, waits.min(), waits.max())]


def quantile(buckets: Sequence[tuple[float, int, float]], q: float) -> float:
    """The q-quantile (0..1) of waits known only as (le, count, sum_seconds) buckets
    (`quantiles_of` without per-wait records). NaN without observations."""
    return quantiles_of((), buckets, (q,))[0]


def quantile_column(q: float) -> str:
    return f"p{round(q * 100):g}_seconds"


def summarize_waits(
    waits: pd.DataFrame,
    buckets: pd.DataFrame,
    by: Sequence[str],
    quantiles: Sequence[float] = (0.5, 0.9, 0.99),
    slo_seconds: float | None = None,
    population: str = POPULATION_OK,
) -> pd.DataFrame:
    """Per group: count, mean_seconds, p<q>_seconds (e.g. p50_seconds), with an SLO
    within_slo_ratio, then min_seconds, max_seconds, exact_count, failed_count, population.

    `waits` holds the waits that have per-wait records, (by..., seconds, ok); `buckets` those
    known only by their histogram bucket, (by..., le, count, sum_seconds). Percentiles are
    `quantiles_of` both. min/max are exact when every wait has its record (exact_count ==
    count); otherwise the extremes of the records and of the buckets' means, which the true
    ones lie beyond. within_slo_ratio counts records by their value, bucketed waits by their
    bucket (exact when the SLO is a bucket bound). failed_count: waits that did not end in
    success (in population "all" only). `population` is written on every row.
    """
    qcols = [quantile_column(q) for q in quantiles]
    cols = [*by, "count", "mean_seconds", *qcols]
    cols += ["within_slo_ratio"] if slo_seconds else []
    cols += ["min_seconds", "max_seconds", "exact_count", "failed_count", "population"]

    def positions(frame: pd.DataFrame | None) -> dict[tuple[Any, ...], np.ndarray]:
        if frame is None or frame.empty:
            return {}
        if not by:
            return {(): np.arange(len(frame))}
        found = frame.groupby(list(by), sort=False).indices
        return {(k if isinstance(k, tuple) else (k,)): v for k, v in found.items()}

    w_at, b_at = positions(waits), positions(buckets)
    if w_at:
        seconds = waits["seconds"].to_numpy(dtype=float)
        ok = waits["ok"].to_numpy(dtype=bool)
    if b_at:
        les = buckets["le"].to_numpy(dtype=float)
        counts = buckets["count"].to_numpy(dtype="int64")
        sums = buckets["sum_seconds"].to_numpy(dtype=float)
    out: list[dict[str, Any]] = []
    for key in sorted({*w_at, *b_at}, key=lambda k: tuple(str(x) for x in k)):
        w = w_at.get(key)
        values = np.sort(seconds[w]) if w is not None else np.empty(0)
        b = b_at.get(key)
        rows = (
            [(le, int(c), s) for le, c, s in zip(les[b], counts[b], sums[b], strict=True) if c]
            if b is not None
            else []
        )
        n = len(values) + sum(c for _le, c, _s in rows)
        if n == 0:
            continue
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        row["count"] = n
        row["mean_seconds"] = (float(values.sum()) + sum(s for _le, _c, s in rows)) / n
        for col, value in zip(qcols, quantiles_of(values, rows, quantiles), strict=True):
            row[col] = value
        if slo_seconds:
            within = int((values <= slo_seconds).sum())
            within += sum(c for le, c, _s in rows if le <= slo_seconds)
            row["within_slo_ratio"] = within / n
        known = [*values[:1], *values[-1:], *(s / c for _le, c, s in rows)]
        row["min_seconds"], row["max_seconds"] = float(min(known)), float(max(known))
        row["exact_count"] = len(values)
        row["failed_count"] = int((~ok[w]).sum()) if w is not None else 0
        row["population"] = population
        out.append(row)
    return pd.DataFrame(out, columns=cols)


def summarize(
    buckets: pd.DataFrame,
    by: Sequence[str],
    quantiles: Sequence[float] = (0.5, 0.9, 0.99),
    slo_seconds: float | None = None,
) -> pd.DataFrame:
    """`summarize_waits` of waits known only by their buckets: rows (by..., le, count,
    sum_seconds)."""
    return summarize_waits(pd.DataFrame(), buckets, by, quantiles, slo_seconds)


# The events that are the per-wait records of each latency kind (the ledger rules in
# aggregator/ledger/latency.py observe their waits); `wait_outcome` tells which are waits.
EVENTS_OF_KIND: dict[str, str] = {
    TIME_TO_SESSION: "spawn",
    TIME_TO_FIRST_WORKER: "dask_scale",
    TIME_TO_SCALE_UP: "dask_scale",
    TIME_TO_FINISH: "dask_computation",
}


def _whole(value: Any, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return default
    return int(value)


def wait_outcome(kind: str, attrs: dict[str, Any]) -> str | None:
    """The outcome of a closed event of `EVENTS_OF_KIND[kind]` as a start of a `kind` wait
    ("ok" when its wait was observed in the histograms), or None when the event is no start of
    that kind. The ledger rules' own conditions: every spawn is a start of time_to_session
    (ok, failed, timeout, stopped); a dask_scale with reason first_worker one of
    time_to_first_worker, another one of time_to_scale_up when its target exceeds its
    starting count (a scale-down is no wait; ok or superseded); every dask_computation one of
    time_to_finish (ok, erred, cancelled)."""
    outcome = str(attrs.get("outcome", "ok"))
    if kind in (TIME_TO_FIRST_WORKER, TIME_TO_SCALE_UP):
        first = attrs.get("reason", "scale") == "first_worker"
        if kind == TIME_TO_FIRST_WORKER and not first:
            return None
        if kind == TIME_TO_SCALE_UP and (
            first or _whole(attrs.get("target"), 0) <= _whole(attrs.get("from", 0), 0)
        ):
            return None
    return outcome


def profile_of(attrs: dict[str, Any]) -> str:
    """The profile a per-wait record's wait is kept under (as the ledger rules do)."""
    value = attrs.get("profile", DEFAULT_PROFILE)
    return value[:64] if isinstance(value, str) and value else DEFAULT_PROFILE


def attrs_of(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
