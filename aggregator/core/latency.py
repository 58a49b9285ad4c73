"""Interactive-analysis latency, the model every layer shares: the latency kinds, their fixed
histogram buckets and default SLOs, and percentiles from summed buckets.

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
exact. The ledger's rules that observe latencies are in `afmon.aggregator.ledger.latency`, the
/metrics histograms in `afmon.aggregator.metrics.latency`.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Sequence
from typing import Any

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

