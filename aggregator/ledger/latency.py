"""The ledger's latency rules: the events that observe interactive-analysis waits (spawns,
Dask scale requests and computations) and Dask worker time. Kinds, buckets and SLOs are the
shared model in `afmon.aggregator.core.latency`; each rule registers itself for its event kind.
"""

from __future__ import annotations

from collections.abc import Sequence

from afmon.aggregator.core.latency import (
    DEFAULT_PROFILE,
    SPAWN_OUTCOMES,
    TIME_TO_FINISH,
    TIME_TO_FIRST_WORKER,
    TIME_TO_SCALE_UP,
    TIME_TO_SESSION,
)
from afmon.aggregator.identity.accounts import MemberRef
from afmon.aggregator.ledger.base import HOUR, AttrError, Increments, event_rule
from afmon.collectors import wire


def _profile(e: wire.Event) -> str:
    value = e.attrs.get("profile", DEFAULT_PROFILE)
    if not isinstance(value, str) or not value:
        raise AttrError("profile", f"{e.kind} {e.id}: profile must be a non-empty string")
    return value[:64]


def _int(e: wire.Event, attr: str, default: int | None = None, minimum: int = 0) -> int:
    value = e.attrs.get(attr, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise AttrError(attr, f"{e.kind} {e.id}: {attr} must be a whole number, not {value!r}")
    if value < minimum:
        raise AttrError(attr, f"{e.kind} {e.id}: {attr} must be at least {minimum}")
    return int(value)


def _choice(e: wire.Event, attr: str, choices: Sequence[str], default: str) -> str:
    value = e.attrs.get(attr, default)
    if value not in choices:
        raise AttrError(attr, f"{e.kind} {e.id}: {attr} must be one of {', '.join(choices)}")
    return str(value)


def _hour(t: float) -> int:
    return int(t // HOUR) * HOUR


def _wait(e: wire.Event) -> float:
    assert e.end is not None
    return e.end - e.start


@event_rule("spawn")
def spawn_rule(inc: Increments, facility: str, member: MemberRef, e: wire.Event) -> None:
    """A server start: its wait when it became ready, else one failure."""
    outcome = _choice(e, "outcome", SPAWN_OUTCOMES, "ok")
    profile = _profile(e)
    if outcome == "ok":
        inc.observe(facility, member, TIME_TO_SESSION, profile, _hour(e.start), _wait(e))
    else:
        inc.add(facility, member, "spawn_failures", _hour(e.start), 1.0)


@event_rule("dask_scale")
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


@event_rule("dask_worker")
def dask_worker_rule(inc: Increments, facility: str, member: MemberRef, e: wire.Event) -> None:
    """A worker's lifetime: worker-seconds, and x its threads, worker core-seconds."""
    assert e.end is not None
    threads = _int(e, "nthreads", minimum=1)
    inc.add_interval(facility, member, "dask_worker_seconds", e.start, e.end)
    inc.add_interval(facility, member, "dask_worker_core_seconds", e.start, e.end, float(threads))


@event_rule("dask_computation")
def dask_computation_rule(inc: Increments, facility: str, member: MemberRef, e: wire.Event) -> None:
    """A computation (one update_graph) whose keys are all done: its time-to-finish."""
    outcome = _choice(e, "outcome", ("ok", "erred", "cancelled"), "ok")
    if outcome == "ok":
        inc.observe(facility, member, TIME_TO_FINISH, _profile(e), _hour(e.start), _wait(e))
