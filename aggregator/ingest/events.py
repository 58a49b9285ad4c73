"""Applying a batch's events: each accounted once, when its end is first known.

An event's row is written (or its end added) and its ledger rule (`EVENT_RULES`) run in the
ingest transaction. The rule runs first, on increments of its own: an event whose attributes
do not suit its kind's rule (a batch job without cores, a negative CPU time) is refused on its
own (reason `bad_attribute`, quarantined with the other refused records) and nothing of it is
written, while the rest of the batch is applied.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec
from sqlalchemy import Connection

from afmon.aggregator.identity.accounts import MemberRef
from afmon.aggregator.ledger.base import EVENT_RULES, AttrError, Increments
from afmon.aggregator.store.schema import UNMAPPED_ISSUER
from afmon.collectors import wire

Resolve = Callable[[str, str, float], MemberRef]
"""(facility, local user, time) -> the member, remembered for `ensure_unmapped`."""


def apply_events(
    conn: Connection,
    p: str,
    for_update: str,
    batch: wire.Batch,
    inc: Increments,
    resolve: Resolve,
    hepscore: dict[str, float],
    default_hepscore: float,
) -> tuple[int, list[wire.Refusal]]:
    """Record the batch's events and add the ended ones' increments to `inc`; returns how many
    were new or newly ended, and the refused ones."""
    applied = 0
    refused: list[wire.Refusal] = []
    for i, e in enumerate(batch.events):
        row = conn.exec_driver_sql(
            f'SELECT "end" FROM event WHERE facility = {p} AND kind = {p} AND id = {p}{for_update}',
            (batch.facility, e.kind, e.id),
        ).first()
        if row is not None and row[0] is not None:
            continue  # already ended and accounted: a repeat changes nothing
        if row is not None and e.end is None:
            continue  # still open, already recorded: nothing changes
        ref = resolve(batch.facility, e.user, e.start)
        if e.end is not None:
            # the rule sees the HEPscore23 per core of the event's node (attrs.node, else the
            # batch's node; the default when that node has not reported one)
            hs = hepscore.get(str(e.attrs.get("node") or batch.node), default_hepscore)
            judged = msgspec.structs.replace(e, attrs={**e.attrs, "node_hepscore23_per_core": hs})
            own = Increments()
            try:
                EVENT_RULES[e.kind](own, batch.facility, ref, judged)
            except AttrError as exc:
                refused.append(wire.Refusal("event", i, f"$.events[{i}].attrs.{exc.attr}",
                                            "bad_attribute", exc.message))  # fmt: skip
                continue
            inc.merge(own)
        attrs = json.dumps(e.attrs, sort_keys=True)
        if row is None:
            conn.exec_driver_sql(
                "INSERT INTO event (facility, kind, id, node, local_user, member_id, start, "
                f'"end", attrs) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})',
                (batch.facility, e.kind, e.id, batch.node, e.user, ref.id, e.start, e.end, attrs),
            )
        else:
            conn.exec_driver_sql(
                f'UPDATE event SET "end" = {p}, attrs = {p} '
                f"WHERE facility = {p} AND kind = {p} AND id = {p}",
                (e.end, attrs, batch.facility, e.kind, e.id),
            )
        applied += 1
    return applied, refused


def ensure_unmapped(conn: Connection, p: str, members: dict[str, MemberRef]) -> None:
    """The member rows of the facilities' unmapped members the increments name."""
    rows: list[tuple[Any, ...]] = []
    for ref in members.values():
        issuer, _, subject = ref.id.partition("|")
        if issuer == UNMAPPED_ISSUER:
            rows.append((ref.id, issuer, subject, ref.vo, ref.grp,
                         f"unmapped accounts at {subject}", "[]", ""))  # fmt: skip
    if rows:
        conn.exec_driver_sql(  # institution: '' (unknown), a NOT NULL column without default
            "INSERT INTO member (id, issuer, subject, vo, grp, display_name, groups, institution) "
            f"VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}) ON CONFLICT DO NOTHING",
            rows,
        )
