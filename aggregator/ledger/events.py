"""The ledger's general event rules: sessions and Dask clusters by duration and count, and
idle-but-held GPUs by duration x share."""

from __future__ import annotations

from afmon.aggregator.identity.accounts import MemberRef
from afmon.aggregator.ledger.base import AttrError, Increments, event_rule, hour_of
from afmon.collectors import wire


@event_rule("session", "dask_cluster")
def duration_and_count(inc: Increments, facility: str, member: MemberRef, e: wire.Event) -> None:
    """The default event rule: `<kind>_seconds` over the hours it ran, `<kind>s` at its start."""
    assert e.end is not None
    inc.add_interval(facility, member, f"{e.kind}_seconds", e.start, e.end)
    inc.add(facility, member, f"{e.kind}s", hour_of(e.start), 1.0)


@event_rule("gpu_idle")
def gpu_idle(inc: Increments, facility: str, member: MemberRef, e: wire.Event) -> None:
    """An idle-but-held GPU: its duration x the member's share of the GPU (`share`)."""
    assert e.end is not None
    share = e.attrs.get("share", 1.0)
    if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
        raise AttrError("share", f"must be a number in (0, 1], not {share!r}")
    inc.add_interval(facility, member, "gpu_idle_seconds", e.start, e.end, float(share))
