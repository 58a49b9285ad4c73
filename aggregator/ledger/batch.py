"""The ledger rule for batch jobs (`batch_job` events from the Slurm and HTCondor probes).

Per member and UTC hour the job ran in (docs/batch.md states this for users):

    batch_jobs                    1 in the hour the job started (its last run: a run ended
                                  by a requeue, attrs.requeued, counts its usage, not a job)
    batch_job_seconds             wall seconds, split over the hours it ran
    batch_wall_core_seconds       wall x allocated cores
    batch_cpu_seconds             CPU seconds (user + system), spread evenly over its run
    batch_gpu_seconds             wall x allocated GPUs
    batch_cpu_hs23_seconds        CPU x the node's HEPscore23 per core (WLCG normalisation)
    batch_wall_core_hs23_seconds  wall x cores x the node's HEPscore23 per core

and its queue wait (start - submit) in the latency histograms (kind `batch_queue_wait`,
profile = the partition or accounting group), in the hour the wait began. CPU efficiency,
CPU / (wall x cores), is derived by the query layer from the sums, never stored.

Every amount also goes, with the same key, to the breakdown by the scheduler's accounting
dimensions (`Increments.add_batch`, table `batch_usage`): attrs.account (Slurm's account,
HTCondor's AcctGroup), attrs.qos and attrs.partition, "" when absent, at most 64 characters.
One call adds both, so per member, resource and hour the breakdown sums to the ledger.

The run is [end - wall, end): wall time is `wall_seconds` when sent (HTCondor's
RemoteWallClockTime leaves out time between evictions), else end - start. The ingest gives
the rule the HEPscore23 per core of the job's node as `attrs["node_hepscore23_per_core"]`.

The rule registers itself for its event kind (`afmon.aggregator.ledger.base.event_rule`).
"""

from __future__ import annotations

import math

from afmon.aggregator.identity.accounts import MemberRef
from afmon.aggregator.ledger.base import AttrError, Increments, event_rule
from afmon.collectors import wire

HOUR = 3600
QUEUE_WAIT = "batch_queue_wait"
HEPSCORE_ATTR = "node_hepscore23_per_core"
# wall_seconds may exceed end - start by this much (schedulers round their clocks apart)
WALL_SLACK_SECONDS = 1.0
DIMENSIONS = ("account", "qos", "partition")  # the breakdown's key, in this order
DIMENSION_CHARS = 64  # a key value is cut to this length (a scheduler's names are short)


def _number(e: wire.Event, attr: str, default: float | None = None) -> float:
    """A finite, non-negative number attribute; AttrError naming it otherwise."""
    value = e.attrs.get(attr, default)
    if value is None:
        raise AttrError(attr, f"batch job {e.id} needs {attr}")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AttrError(attr, f"batch job {e.id}: {attr} must be a number, not {value!r}")
    if value < 0:
        raise AttrError(attr, f"batch job {e.id}: {attr} must not be negative ({value})")
    return float(value)


def dimensions(e: wire.Event) -> tuple[str, str, str]:
    """The job's (account, qos, partition): "" for an absent attribute."""
    values = (e.attrs.get(a) for a in DIMENSIONS)
    account, qos, partition = ("" if v is None else str(v)[:DIMENSION_CHARS] for v in values)
    return account, qos, partition


def _hour(t: float) -> int:
    return int(t // HOUR) * HOUR


def spread(start: float, end: float, total: float) -> list[tuple[int, float]]:
    """`total` split over the hours of [start, end) in proportion to the time in each; the
    last piece takes the remainder, so the pieces add up to `total` exactly. An empty run
    puts everything in the hour of `end`."""
    if end <= start:
        return [(_hour(end), total)]
    pieces: list[tuple[int, float]] = []
    t, left = start, total
    while t < end:
        stop = min(end, _hour(t) + HOUR)
        amount = left if stop >= end else total * (stop - t) / (end - start)
        pieces.append((_hour(t), amount))
        left -= amount
        t = stop
    return pieces


@event_rule("batch_job")
def account_batch_job(inc: Increments, facility: str, member: MemberRef, e: wire.Event) -> None:
    """The `batch_job` event rule (see the module docstring)."""
    assert e.end is not None
    cores = _number(e, "cores")
    if cores == 0:
        raise AttrError("cores", f"batch job {e.id}: cores must be at least 1")
    cpu = _number(e, "cpu_seconds")
    gpus = _number(e, "gpus", 0)
    hs23 = _number(e, HEPSCORE_ATTR)
    wall = _number(e, "wall_seconds", e.end - e.start)
    if wall > e.end - e.start + WALL_SLACK_SECONDS:
        raise AttrError(
            "wall_seconds",
            f"batch job {e.id}: wall_seconds {wall} is longer than the job's start-to-end "
            f"time ({e.end - e.start:g} s)",
        )
    if "queue_wait_seconds" in e.attrs:
        wait = _number(e, "queue_wait_seconds")
    else:
        wait = max(0.0, e.start - _number(e, "submit", e.start))
    profile = e.attrs.get("partition") or e.attrs.get("account") or "default"
    run_start = e.end - wall
    dims = dimensions(e)

    if e.attrs.get("requeued") is not True:  # jobs as sacct counts them, runs as `sacct -D`
        inc.add_batch(facility, member, dims, "batch_jobs", _hour(e.start), 1.0)
    for resource, total in (
        ("batch_job_seconds", wall),
        ("batch_wall_core_seconds", wall * cores),
        ("batch_cpu_seconds", cpu),
        ("batch_gpu_seconds", wall * gpus),
        ("batch_cpu_hs23_seconds", cpu * hs23),
        ("batch_wall_core_hs23_seconds", wall * cores * hs23),
    ):
        if total:
            for hour, amount in spread(run_start, e.end, total):
                inc.add_batch(facility, member, dims, resource, hour, amount)
    inc.observe(facility, member, QUEUE_WAIT, str(profile)[:64], _hour(e.start - wait), wait)
