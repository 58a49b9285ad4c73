"""The quarantine: records refused at ingest while the rest of their batch was applied.

A refused series or event is kept as sent, with its reason, in the ingest transaction that
applied the rest of its batch, so it is never lost silently and never half-applied. After the
cause is fixed (time has caught up with a skewed clock, a limit was raised) `afmon quarantine
replay` applies each record exactly once: a replay is a batch of its own whose id is the
quarantine row's (`agent_id` QUARANTINE_AGENT, `seq` the row id), claimed like any batch.
Kept rows are bounded per facility (the oldest go first). docs/accounting.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import Connection, Engine, text

from afmon.aggregator.store.db import placeholder, read_connection
from afmon.collectors import wire

QUARANTINE_AGENT = "afmon/quarantine"
_encoder = msgspec.json.Encoder()
_series = msgspec.json.Decoder(wire.Series)
_event = msgspec.json.Decoder(wire.Event)


def store(
    conn: Connection,
    batch: wire.Batch,
    refused: Sequence[wire.Refusal],
    now: float,
    keep: int,
) -> None:
    """Quarantine the refused records of `batch` (inside the ingest transaction), then drop
    the facility's oldest rows beyond `keep`."""
    p = placeholder(conn.engine)
    rows = [
        (
            batch.facility,
            batch.agent_id,
            batch.seq,
            batch.node,
            now,
            r.kind,
            r.reason,
            r.field,
            r.message,
            r.raw
            if r.raw is not None
            else _encoder.encode(
                batch.series[r.index] if r.kind == "series" else batch.events[r.index]
            ).decode(),
        )
        for r in refused
    ]
    conn.exec_driver_sql(
        "INSERT INTO quarantine (facility, agent_id, seq, node, received_at, kind, reason, "
        f"field, message, record) VALUES ({', '.join([p] * 10)})",
        rows,
    )
    count = conn.exec_driver_sql(
        f"SELECT COUNT(*) FROM quarantine WHERE facility = {p}", (batch.facility,)
    ).scalar_one()
    if count > keep:
        conn.exec_driver_sql(
            f"DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine WHERE facility = {p} "
            f"ORDER BY id LIMIT {p})",
            (batch.facility, count - keep),
        )


@dataclass(frozen=True)
class Selection:
    """Which quarantined rows a command acts on (every filter optional)."""

    facility: str | None = None
    reason: str | None = None
    ids: tuple[int, ...] = ()
    include_replayed: bool = False

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses, params = [], {}
        if self.facility is not None:
            clauses.append("facility = :facility")
            params["facility"] = self.facility
        if self.reason is not None:
            clauses.append("reason = :reason")
            params["reason"] = self.reason
        if self.ids:
            marks = ", ".join(f":id{i}" for i in range(len(self.ids)))
            clauses.append(f"id IN ({marks})")
            params.update({f"id{i}": v for i, v in enumerate(self.ids)})
        if not self.include_replayed:
            clauses.append("replayed_at IS NULL")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


COLUMNS = ("id", "facility", "agent_id", "seq", "node", "received_at", "kind", "reason",
           "field", "message", "record", "replayed_at")  # fmt: skip


def rows(engine: Engine, selection: Selection, limit: int | None = None) -> list[dict[str, Any]]:
    where, params = selection.where()
    sql = f"SELECT {', '.join(COLUMNS)} FROM quarantine{where} ORDER BY id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    with read_connection(engine) as conn:
        return [dict(zip(COLUMNS, r, strict=True)) for r in conn.execute(text(sql), params)]


def summary(engine: Engine, selection: Selection) -> list[tuple[str, str, int]]:
    """(facility, reason, records) of the selection."""
    where, params = selection.where()
    sql = (
        f"SELECT facility, reason, COUNT(*) FROM quarantine{where} "
        "GROUP BY facility, reason ORDER BY facility, reason"
    )
    with read_connection(engine) as conn:
        return [(f, r, int(n)) for f, r, n in conn.execute(text(sql), params)]


def drop(engine: Engine, selection: Selection) -> int:
    where, params = selection.where()
    with engine.begin() as conn:
        return conn.execute(text(f"DELETE FROM quarantine{where}"), params).rowcount


@dataclass
class ReplayReport:
    applied: int = 0
    already: int = 0  # replayed before (its batch id was claimed): nothing changed
    still_refused: dict[str, int] | None = None

    def refused(self, reason: str) -> None:
        self.still_refused = self.still_refused or {}
        self.still_refused[reason] = self.still_refused.get(reason, 0) + 1


def replay(
    engine: Engine,
    judge: Callable[[wire.Batch], list[wire.Refusal]],
    apply: Callable[[wire.Batch, Sequence[wire.Refusal]], str],
    selection: Selection,
    now: float,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    """Apply each selected record once, as a batch of its own: `judge(batch)` gives its
    refusals (as at ingest), `apply(batch, refusals)` returns the ingest status or raises
    `StillRefused` when the record is refused again (it stays quarantined, nothing of it
    written)."""
    report = ReplayReport()
    todo = rows(engine, selection)
    for n, row in enumerate(todo, 1):
        try:
            batch = _batch(row)
            status = apply(batch, judge(batch))
        except StillRefused as exc:
            report.refused(exc.refusals[0].reason)
        else:
            if status == "duplicate":
                report.already += 1
            else:
                report.applied += 1
            with engine.begin() as conn:
                conn.execute(
                    text("UPDATE quarantine SET replayed_at = :t WHERE id = :id"),
                    {"t": now, "id": row["id"]},
                )
        if progress is not None:
            progress(n, len(todo))
    return report


class StillRefused(Exception):
    """A replayed record was refused again; nothing of it was written."""

    def __init__(self, refusals: Sequence[wire.Refusal]) -> None:
        super().__init__(refusals[0].message)
        self.refusals = list(refusals)


def _batch(row: dict[str, Any]) -> wire.Batch:
    """The record as a batch of its own; StillRefused when it cannot be read (`malformed`:
    only its producer can fix it)."""
    record = row["record"].encode()
    if row["kind"] not in ("series", "event"):  # a line-protocol line that could not be read
        raise StillRefused([wire.Refusal(row["kind"], 0, row["field"], row["reason"],
                                         "only its producer can fix it")])  # fmt: skip
    try:
        series = [_series.decode(record)] if row["kind"] == "series" else []
        events = [_event.decode(record)] if row["kind"] == "event" else []
    except msgspec.DecodeError as exc:
        raise StillRefused(
            [wire.Refusal(row["kind"], 0, row["field"], "malformed", str(exc))]
        ) from None
    return wire.Batch(
        version=wire.WIRE_VERSION,
        agent_id=QUARANTINE_AGENT,
        facility=row["facility"],
        node=row["node"],
        seq=int(row["id"]),
        sent_at=float(row["received_at"]),
        series=series,
        events=events,
    )
