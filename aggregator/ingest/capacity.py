"""Physically impossible samples: more than the node could have done.

A user's CPU time cannot grow faster than the node has cores, and a user's memory cannot
exceed the node's: a series that claims so (a counter glitch, a unit mix-up, a forged
record) is refused with reason `beyond_capacity` before it reaches the ledger, and
quarantined (replayable once the node's capacity is known to be larger, or the slack
raised). The node's capacity is what its agent reports (`node_cpu_cores`,
`node_memory_bytes`, kept in the `node` table; the batch's own newer values count too);
a node that has reported none is not checked. `AFMON_CAPACITY_SLACK` (default 0.5) is the
share above capacity tolerated (sampling jitter; per-process RSS sums count shared pages
more than once), and counters get one second of slack on each interval.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from afmon.collectors import wire

TIME_SLACK_SECONDS = 1.0
CPU_COUNTERS = frozenset({"user_cpu_seconds"})
MEMORY_GAUGES = frozenset({"user_memory_rss_bytes"})
_WHERE = "$.series[{i}].values[{k}]"  # formatted only for a refusal


def capacity_refusals(
    batch: wire.Batch,
    ids: Sequence[int | None],
    last: Mapping[int, tuple[float | None, float | None]],
    nodes: Mapping[str, tuple[float | None, float | None]],
    slack: float,
) -> list[wire.Refusal]:
    """The `beyond_capacity` refusals of the batch's records. `ids[i]` is record i's series
    id (None: refused already), `last[id]` its series' newest (time, value), `nodes[name]`
    the node's (cores, memory bytes)."""
    out: list[wire.Refusal] = []
    factor = 1.0 + slack
    for i, (s, sid) in enumerate(zip(batch.series, ids, strict=True)):
        if sid is None or "user" not in s.labels:
            continue
        if s.metric not in CPU_COUNTERS and s.metric not in MEMORY_GAUGES:
            continue
        node = s.labels.get("node", batch.node)
        cores, memory = nodes.get(node, (None, None))
        if s.metric in CPU_COUNTERS and cores:
            prev_t, prev_v = last.get(sid, (None, None))
            for k, inc, dt in _increases(s, prev_t, prev_v):
                if inc > cores * (dt + TIME_SLACK_SECONDS) * factor:
                    out.append(wire.Refusal("series", i, _WHERE.format(i=i, k=k), "beyond_capacity",
                        f"{s.metric} of user {s.labels['user']} grew by {inc:g} s in "
                        f"{dt:g} s: more than node {node}'s {cores:g} cores allow "
                        f"(AFMON_CAPACITY_SLACK {slack:g})"))  # fmt: skip
                    break
        elif s.metric in MEMORY_GAUGES and memory:
            if len(s.values) == 1:  # the common record: no `max` to call
                k, peak = 0, s.values[0]
            else:
                k, peak = max(enumerate(s.values), key=lambda kv: kv[1], default=(0, 0.0))
            if peak > memory * factor:
                out.append(wire.Refusal("series", i, _WHERE.format(i=i, k=k), "beyond_capacity",
                    f"{s.metric} of user {s.labels['user']} is {peak:g} bytes, more than "
                    f"node {node}'s {memory:g} bytes of memory "
                    f"(AFMON_CAPACITY_SLACK {slack:g})"))  # fmt: skip
    return out


def _increases(
    s: wire.Series, prev_t: float | None, prev_v: float | None
) -> Iterator[tuple[int, float, float]]:
    """(sample index, increase, seconds it took) of a counter's samples: from the sample
    before (the stored newest when it is older), after a reset from the interval in which
    the counter restarted, and for a first sample with `created` from that time."""
    if prev_t is not None and s.times and s.times[0] <= prev_t:
        prev_t = prev_v = None  # a late record: judged on its own samples
    for k, (t, v) in enumerate(zip(s.times, s.values, strict=True)):
        if prev_t is None or prev_v is None:
            if s.created is not None and t > s.created:
                yield k, v, t - s.created
        elif v < prev_v:
            yield k, v, t - prev_t  # restarted after the sample before: at most this long
        else:
            yield k, v - prev_v, t - prev_t
        prev_t, prev_v = t, v
