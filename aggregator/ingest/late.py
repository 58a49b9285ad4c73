"""Late samples: the ledger is a function of the set of samples, not of their arrival order.

A sample at or before its series' newest time arrives late (batches delivered swapped, an
agent's spool replayed after a newer one got through, a quarantined record replayed). Within
`AFMON_LATE_SAMPLE_WINDOW_SECONDS` of the series' newest sample it is stored, and the ledger
pieces it changes are recomputed: the ledger rules (`afmon.aggregator.ledger.base`) give each
pair of consecutive samples its own piece, so a late sample between stored neighbours `a`
and `b` replaces the pieces of a..b by those of a..late..b, which is exactly what the ledger
would hold had the samples come in time order. A late sample before the series' first one
becomes its new baseline the same way.

A series record reaching further back than the window is refused whole (reason `too_old`,
quarantined, replayable after the window is widened), as is one whose stored neighbours are
no longer kept (pruned by the retention): it cannot be placed exactly. A late sample at a
time the series already has is a repeat: the stored one stays (`stale_samples`).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlalchemy import Connection

from afmon.aggregator.ledger.base import MetricRule, counter_increases, gauge_integral
from afmon.collectors import wire

SeriesState = tuple[float | None, float | None, float | None]
"""(last_time, last_value, first_time) of a series as the `series` table holds them."""


@dataclass(frozen=True)
class LateSamples:
    """The late samples of one series record, placed among the stored ones.

    `times`/`values`: the late samples the store does not have yet (in time order);
    `stored`: the stored samples from the one before the first late sample (when kept) to
    the one after the last; `before`: whether `stored[0]` is that predecessor;
    `repeats`: late samples at times already stored (dropped)."""

    times: list[float]
    values: list[float]
    stored: list[tuple[float, float]]
    before: bool
    repeats: int

    def corrections(
        self, rule: MetricRule, created: float | None, max_gap: float
    ) -> Iterator[tuple[float, float]]:
        """(time, amount) pieces that turn the ledger of the stored samples into the ledger
        with the late ones: the new pieces of the span, and the old ones negated."""
        merged = list(heapq.merge(self.stored, zip(self.times, self.values, strict=True)))
        start: tuple[float | None, float | None] = (None, None)
        old, new = self.stored, merged
        if self.before:
            start, old, new = self.stored[0], self.stored[1:], merged[1:]
        for sign, samples in ((1.0, new), (-1.0, old)):
            times = [t for t, _ in samples]
            values = [v for _, v in samples]
            if rule.how == "counter":
                pieces = counter_increases(times, values, *start, created)
            else:
                pieces = gauge_integral(times, values, *start, max_gap)
            for t, amount in pieces:
                yield t, sign * amount


def place_late(
    conn: Connection,
    batch: wire.Batch,
    ids: list[int | None],
    state: dict[int, SeriesState],
    window: float,
    kept: Callable[[wire.Series], bool],
    p: str,
) -> tuple[list[wire.Refusal], dict[int, LateSamples]]:
    """The refusals of series records that reach too far back, and the placed late samples
    of the others, by record index. `ids[i]` is the series id of record i (None: refused
    already); `kept(series)` whether its samples are in the `sample` table (else they go to the
    time-series store only and change no ledger: nothing to place)."""
    refused: list[wire.Refusal] = []
    placed: dict[int, LateSamples] = {}
    for i, (s, sid) in enumerate(zip(batch.series, ids, strict=True)):
        if sid is None or not s.times:
            continue
        last, _value, first = state[sid]
        if last is None or s.times[0] > last:
            continue  # nothing late: the common case
        k = bisect.bisect_right(s.times, last)
        times, values = s.times[:k], s.values[:k]
        if times[0] < last - window and not _all_stored(conn, p, sid, times, last - window):
            refused.append(_too_old(i, s, 0, f"is {last - times[0]:.0f} s older than the "
                           "series' newest sample, beyond AFMON_LATE_SAMPLE_WINDOW_SECONDS "
                           f"({window:g} s)"))  # fmt: skip
            continue
        if not kept(s):
            placed[i] = LateSamples(times, values, [], False, 0)
            continue
        stored = _stored_around(conn, p, sid, times[0], times[-1])
        have = {t for t, _ in stored}
        fresh = [(t, v) for t, v in zip(times, values, strict=True) if t not in have]
        # a stored sample before the first new one starts the span (else the first new one
        # is the series' first, unless its real predecessor was pruned); one after the last
        # new one ends it (the newest sample at least, unless it is not kept)
        before = bool(fresh) and stored[0][0] < fresh[0][0] if stored else False
        if fresh and (
            not stored
            or stored[-1][0] < fresh[-1][0]
            or (not before and first is not None and first < fresh[0][0])
        ):
            refused.append(_too_old(i, s, 0, "cannot be placed: its neighbouring samples "
                           "are no longer kept (AFMON_RETENTION_DAYS)"))  # fmt: skip
            continue
        placed[i] = LateSamples(
            [t for t, _ in fresh], [v for _, v in fresh], stored, before, k - len(fresh)
        )
    return refused, placed


def _all_stored(conn: Connection, p: str, sid: int, times: list[float], cutoff: float) -> bool:
    """Whether the samples of `times` before `cutoff` are all stored already: a resent old
    batch (an agent replaying its spool under a new id) repeats, it is not refused."""
    old = times[: bisect.bisect_left(times, cutoff)]
    rows = conn.exec_driver_sql(
        f"SELECT time FROM sample WHERE series_id = {p} AND time >= {p} AND time <= {p}",
        (sid, old[0], old[-1]),
    )
    return set(old) <= {r[0] for r in rows}


def _too_old(i: int, s: wire.Series, k: int, why: str) -> wire.Refusal:
    return wire.Refusal(
        "series", i, f"$.series[{i}].times[{k}]", "too_old",
        f"a late sample of series {s.metric} {why}",
    )  # fmt: skip


def _stored_around(
    conn: Connection, p: str, sid: int, lo: float, hi: float
) -> list[tuple[float, float]]:
    """The stored samples of series `sid` from the last one before `lo` to the first one
    after `hi` (each when there is one), in time order."""
    rows = conn.exec_driver_sql(
        f"SELECT time, value FROM sample WHERE series_id = {p} AND time >= COALESCE("
        f"(SELECT MAX(time) FROM sample WHERE series_id = {p} AND time < {p}), {p}) "
        f"AND time <= COALESCE((SELECT MIN(time) FROM sample WHERE series_id = {p} "
        f"AND time > {p}), {p}) ORDER BY time",
        (sid, sid, lo, lo, sid, hi, hi),
    )
    return [(r[0], r[1]) for r in rows]
