"""Delta counters (OTLP's delta temporality) turned into cumulative ones, exactly.

A series sent with `temporality` "delta" carries the increase of each interval rather than
the running total. Inside the ingest transaction, with the series' stored state read under
its lock, each delta is added to the series' newest stored value, so the sample store, the
time-series store and the ledger rules see an ordinary cumulative counter: the ledger gets
exactly the sum of the deltas. A series never seen before starts from zero (its first delta
counts in full).

A delta at the time of the series' newest stored sample is a repeat (an exporter's retry)
and is dropped like any repeated sample. A delta before it cannot be placed: every later
total would have to move with it. Such a series record is refused whole (`too_old`,
quarantined; the exporter sends deltas in time order, so this takes a reordering proxy).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from afmon.aggregator.ingest.late import SeriesState
from afmon.collectors import wire


def cumulate(
    batch: wire.Batch, ids: Sequence[int | None], state: dict[int, SeriesState]
) -> tuple[wire.Batch, list[wire.Refusal]]:
    """`batch` with its delta series (those with an id) made cumulative from their stored
    state, and the refusals of those that reach back before their newest stored sample."""
    if not any(s.temporality == "delta" for s in batch.series):
        return batch, []
    series = list(batch.series)
    refused: list[wire.Refusal] = []
    for i, (s, sid) in enumerate(zip(batch.series, ids, strict=True)):
        if s.temporality != "delta" or sid is None or not s.times:
            continue
        last_t, last_v, _first = state[sid]
        if last_t is not None and s.times[0] < last_t:
            refused.append(
                wire.Refusal(
                    "series",
                    i,
                    f"$.series[{i}].times",
                    "too_old",
                    f"delta sample of {s.metric} at {s.times[0]:.3f} is before the series' "
                    f"newest stored sample ({last_t:.3f}): deltas must arrive in time order",
                )
            )
            continue
        total = last_v or 0.0
        values: list[float] = []
        for t, v in zip(s.times, s.values, strict=True):
            if last_t is None or t > last_t:
                total += v
                values.append(total)
            else:  # at the newest stored time: a repeat, dropped with the stored value
                values.append(last_v or 0.0)
        if last_t is None:  # a new series: it starts from zero, the first delta counts
            created = min(s.created, s.times[0]) if s.created is not None else s.times[0]
        else:
            created = None
        series[i] = msgspec.structs.replace(
            s, values=values, created=created, temporality="cumulative"
        )
    return msgspec.structs.replace(batch, series=series), refused
