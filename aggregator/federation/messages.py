"""What a facility sends upstream: the rows of whole ledger hours, replaced upstream as sets.

One publication carries some hours of one facility. For each hour, every usage and latency
row of the VOs it publishes to that upstream (all of them, not the change): the upstream
replaces its rows of (facility, hour, those VOs) by these, so that sending an hour again, or
a newer version of it after a late sample, never adds anything twice.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from afmon.collectors.wire import Name, Text

FED_CONTENT_TYPE = "application/vnd.afmon.federation+json"
Amount = Annotated[float, msgspec.Meta(ge=-1e300, le=1e300)]
Hour = Annotated[int, msgspec.Meta(ge=0, multiple_of=3600)]

# (vo, grp, member_id, resource, amount, unit)
UsageRow = tuple[Text, Text, Text, Name, Amount, Text]
# (vo, grp, member_id, kind, profile, le, count, sum_seconds)
LatencyRow = tuple[Text, Text, Text, Name, str, float, Annotated[int, msgspec.Meta(ge=0)], Amount]
# (id, issuer, subject, vo, grp, display_name, groups as JSON, institution)
MemberRow = tuple[Text, Text, Text, Text, Text, str, str, str]


class HourRows(msgspec.Struct, forbid_unknown_fields=True):
    hour: Hour
    version: int
    usage: list[UsageRow] = []
    latency: list[LatencyRow] = []


class Publication(msgspec.Struct, forbid_unknown_fields=True):
    facility: Name
    level: Literal["member", "group"]
    vos: list[Text] | None  # None: every VO of the facility
    hours: list[HourRows]
    members: list[MemberRow] = []


class Acknowledged(msgspec.Struct):
    """The upstream's answer: the (hour, version) pairs it stored."""

    hours: list[tuple[int, int]]
