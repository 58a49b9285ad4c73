"""Turning samples and events into hourly ledger increments (pure functions).

Rules (docs/accounting.md states them for users):
- a counter adds its increase between consecutive samples to the hour of the
  later sample; a decrease is a reset, and the new value counts in full; the
  first sample ever seen is a baseline unless the series says when the
  counter started (`created`);
- a gauge is integrated over time: each value holds until the next sample,
  split exactly at hour boundaries; gaps longer than `max_gap` count nothing;
- an event (session, cluster, job) is accounted once, when its end is known,
  by the rule of its kind (`EVENT_RULES`); the default rule splits its duration
  over the hours it covered and counts one start in its first hour.

New probes plug in here: a `MetricRule` per accounted metric, an event rule per event kind
(registered with `event_rule` from a module of this package: events.py, latency.py, batch.py),
and their resources in `afmon.aggregator.store.schema.RESOURCES`.
"""

from __future__ import annotations

import bisect
import operator
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from afmon.aggregator.core.latency import bucket_of
from afmon.aggregator.identity.accounts import MemberRef
from afmon.collectors import wire

HOUR = 3600


@dataclass(frozen=True)
class MetricRule:
    """How a per-user metric (a series with a `user` label) enters the ledger.

    `resource` may name a label in braces ("data_read_{source}_bytes"); `normalised`
    names a second resource that receives the amount x the node's HEPscore23 per core;
    `unverified` one that receives the amount again when the series' `identity` label is
    "asserted" (a user name no authentication vouched for, docs/data.md).
    """

    resource: str
    how: Literal["counter", "integral"]
    normalised: str | None = None
    unverified: str | None = None

    def resource_for(self, labels: dict[str, str]) -> str:
        return self.resource.format_map(labels) if "{" in self.resource else self.resource


ACCOUNTED_METRICS: dict[str, MetricRule] = {
    "user_cpu_seconds": MetricRule("cpu_seconds", "counter", normalised="cpu_hs23_seconds"),
    "user_io_read_bytes": MetricRule("io_read_bytes", "counter"),
    "user_io_write_bytes": MetricRule("io_write_bytes", "counter"),
    "user_data_read_bytes": MetricRule(  # docs/data.md
        "data_read_{source}_bytes", "counter", unverified="data_unverified_bytes"
    ),
    "user_data_written_bytes": MetricRule(
        "data_written_{source}_bytes", "counter", unverified="data_unverified_bytes"
    ),
    "user_files_opened": MetricRule("data_files_opened", "counter"),
    "user_memory_rss_bytes": MetricRule("memory_byte_seconds", "integral"),
    "user_gpus_held": MetricRule("gpu_allocated_seconds", "integral"),
    "user_gpu_busy": MetricRule("gpu_active_seconds", "integral"),
    "user_gpu_energy_joules": MetricRule("gpu_energy_joules", "counter"),
    "user_model_gpus_held": MetricRule("gpu_{model}_allocated_seconds", "integral"),
    "user_model_gpu_busy": MetricRule("gpu_{model}_active_seconds", "integral"),
}


class AttrError(ValueError):
    """An event whose attributes do not suit its kind's rule; `attr` names the attribute."""

    def __init__(self, attr: str, message: str) -> None:
        super().__init__(f"{attr}: {message}")
        self.attr = attr
        self.message = message


def hour_of(t: float) -> int:
    return int(t // HOUR) * HOUR


def split_by_hour(start: float, end: float) -> Iterator[tuple[int, float]]:
    """Yield (hour, seconds) covering [start, end)."""
    t = start
    while t < end:
        h = hour_of(t)
        stop = min(end, h + HOUR)
        yield h, stop - t
        t = stop


def counter_increases(
    times: list[float],
    values: list[float],
    last_time: float | None,
    last_value: float | None,
    created: float | None,
) -> Iterator[tuple[float, float]]:
    """Yield (time, increase) for the samples after `last_time`."""
    prev_t, prev_v = last_time, last_value
    for t, v in zip(times, values, strict=True):
        if prev_t is not None and t <= prev_t:
            continue
        if prev_v is None:
            inc = v if created is not None and t >= created else 0.0
        elif v < prev_v or (created is not None and prev_t is not None and prev_t < created <= t):
            inc = v  # the counter was reset (or restarted from zero at `created`)
        else:
            inc = v - prev_v
        prev_t, prev_v = t, v
        if inc:
            yield t, inc


def counter_increases_per_hour(
    times: list[float],
    values: list[float],
    last_time: float | None,
    last_value: float | None,
    created: float | None,
) -> list[tuple[float, float]] | None:
    """`counter_increases` summed per hour, as (time of the hour's last sample, increase).

    Without a reset among the new samples the increases of an hour telescope to its last
    value minus the value before it, so this costs a few operations per hour instead of
    per sample. None when the new samples hold a reset: use `counter_increases` then.
    """
    k = len(times) - fresh_count(times, last_time)
    ts, vs = times[k:], values[k:]
    if not ts:
        return []
    if not all(map(operator.le, vs, vs[1:])) or (created is not None and ts[0] < created <= ts[-1]):
        return None
    if last_value is None:  # first sight: a baseline, unless the series says it started at 0
        base = 0.0 if created is not None and ts[0] >= created else vs[0]
    elif vs[0] < last_value or (
        created is not None and last_time is not None and last_time < created <= ts[0]
    ):
        base = 0.0  # reset (or restarted from zero at `created`) before the first new sample
    else:
        base = last_value
    out: list[tuple[float, float]] = []
    i, n = 0, len(ts)
    while i < n:
        j = bisect.bisect_left(ts, hour_of(ts[i]) + HOUR, i)
        amount = vs[j - 1] - base
        if amount:
            out.append((ts[j - 1], amount))
        base, i = vs[j - 1], j
    return out


def gauge_integral(
    times: list[float],
    values: list[float],
    last_time: float | None,
    last_value: float | None,
    max_gap: float,
) -> Iterator[tuple[float, float]]:
    """Yield (time, value x seconds) for the intervals the new samples close, one piece per
    hour touched, each timed at the start of its piece."""
    prev_t, prev_v = last_time, last_value
    for t, v in zip(times, values, strict=True):
        if prev_t is not None and t <= prev_t:
            continue
        if prev_t is not None and prev_v and t - prev_t <= max_gap:
            for h, secs in split_by_hour(prev_t, t):
                yield max(h, prev_t), prev_v * secs
        prev_t, prev_v = t, v


def fresh_count(times: list[float], last_time: float | None) -> int:
    """How many samples at the end of `times` are newer than `last_time`; `times` strictly
    increase (`wire.check_batch`), so a binary search finds them."""
    if last_time is None:
        return len(times)
    return len(times) - bisect.bisect_right(times, last_time)


@dataclass
class Increments:
    """Ledger increments of one batch, keyed like the ledger's primary key."""

    amounts: dict[tuple[str, str, str, str, str, int], float] = field(
        default_factory=lambda: defaultdict(float)
    )

    def add(
        self, facility: str, member: MemberRef, resource: str, hour: int, amount: float
    ) -> None:
        self.amounts[(facility, member.vo, member.grp, member.id, resource, hour)] += amount

    def add_interval(
        self,
        facility: str,
        member: MemberRef,
        resource: str,
        start: float,
        end: float,
        rate: float = 1.0,
    ) -> None:
        """Add rate x seconds of [start, end) to `resource`, split over the hours."""
        for h, secs in split_by_hour(start, end):
            self.add(facility, member, resource, h, secs * rate)

    # latency histograms: (facility, vo, grp, member, kind, profile, hour, le) -> [count, sum]
    latencies: dict[tuple[str, str, str, str, str, str, int, float], list[float]] = field(
        default_factory=dict
    )

    def observe(
        self, facility: str, member: MemberRef, kind: str, profile: str, hour: int, seconds: float
    ) -> None:
        """Count one latency of `seconds` in its bucket of the hour (aggregator/core/latency.py)."""
        le = bucket_of(seconds)
        key = (facility, member.vo, member.grp, member.id, kind, profile, hour, le)
        slot = self.latencies.setdefault(key, [0, 0.0])
        slot[0] += 1
        slot[1] += seconds

    # batch resources by the scheduler's accounting dimensions (table `batch_usage`):
    # (facility, vo, grp, member, account, qos, partition, resource, hour) -> amount
    batch: dict[tuple[str, str, str, str, str, str, str, str, int], float] = field(
        default_factory=lambda: defaultdict(float)
    )

    def add_batch(
        self,
        facility: str,
        member: MemberRef,
        dimensions: tuple[str, str, str],
        resource: str,
        hour: int,
        amount: float,
    ) -> None:
        """Add `amount` to the ledger and, under `dimensions` (account, qos, partition), to
        its batch breakdown: one call adds both, so the breakdown of a member's hour always
        holds the same amounts as the ledger (docs/batch.md)."""
        self.add(facility, member, resource, hour, amount)
        account, qos, partition = dimensions
        key = (facility, member.vo, member.grp, member.id, account, qos, partition, resource, hour)
        self.batch[key] += amount

    def merge(self, other: Increments) -> None:
        """Add everything of `other` (an event's increments, judged apart) to these."""
        for key, amount in other.amounts.items():
            self.amounts[key] += amount
        for key, amount in other.batch.items():
            self.batch[key] += amount
        for key, (count, seconds) in other.latencies.items():
            slot = self.latencies.setdefault(key, [0, 0.0])
            slot[0] += count
            slot[1] += seconds

    def __len__(self) -> int:
        return len(self.amounts)


EventRule = Callable[[Increments, str, MemberRef, wire.Event], None]

# The rule of each event kind; the modules of this package register theirs on import
# (the package's __init__ imports them all), so the ingest finds every rule here.
EVENT_RULES: dict[str, EventRule] = {}


def event_rule(*kinds: str) -> Callable[[EventRule], EventRule]:
    """Register the decorated function as the ledger rule of these event kinds."""

    def register(rule: EventRule) -> EventRule:
        for kind in kinds:
            if kind in EVENT_RULES:
                raise ValueError(f"event kind {kind!r} has a ledger rule already")
            EVENT_RULES[kind] = rule
        return rule

    return register
