"""Receiving publications from facility afmons (the upstream side of docs/federation.md).

A facility authenticates with its credential (AFMON_FEDERATION_PEERS) and may publish its
own ledger only. Each hour of a publication replaces this server's rows of (facility, hour,
the VOs published) in one transaction, the daily rollup of that day is recomputed from the
hours, and the answer lists the (hour, version) pairs stored: the facility records them as
sent only then. The received rows are ledger rows like the ingest's, so the dashboard, the
API, the reports and /metrics read them, scoped as always (a VO manager sees the VO across
facilities, a member themself).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, text

from afmon.aggregator.federation.messages import Publication
from afmon.aggregator.store.rollup import DAY
from afmon.aggregator.store.schema import RESOURCES

MEMBER_FIELDS = ("id", "iss", "sub", "vo", "grp", "name", "groups", "inst")  # a MemberRow


class PublicationError(ValueError):
    """A publication refused as a whole: `status` is the HTTP answer (400 or 403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def peer_facility(authorization: str, peers: dict[str, Any]) -> str | None:
    """The facility whose federation credential this Authorization header carries."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    found = None
    for facility, secret in peers.items():
        if hmac.compare_digest(token.strip().encode(), secret.get_secret_value().encode()):
            found = facility
    return found


def check(pub: Publication, facility: str) -> None:
    """What a decoder cannot say: the facility is the credential's, units are the schema's,
    each hour appears once."""
    if pub.facility != facility:
        raise PublicationError(403, f"this credential publishes {facility!r}, not "
                               f"{pub.facility!r}")  # fmt: skip
    seen: set[int] = set()
    for h in pub.hours:
        if h.hour in seen:
            raise PublicationError(400, f"hour {h.hour} appears twice")
        seen.add(h.hour)
        for row in h.usage:
            resource, unit = row[3], row[5]
            known = RESOURCES.get(resource)
            if known is None:
                raise PublicationError(400, f"hour {h.hour}: unknown resource {resource!r}")
            if unit != known.unit:
                raise PublicationError(400, f"hour {h.hour}: {resource} is in "
                                       f"{known.unit!r}, not {unit!r}")  # fmt: skip
            if pub.vos is not None and row[0] not in pub.vos:
                raise PublicationError(400, f"hour {h.hour}: VO {row[0]!r} is not among "
                                       f"the published {pub.vos}")  # fmt: skip


def store(conn: Connection, pub: Publication, now: float) -> list[tuple[int, int]]:
    """Replace the publication's hours; returns the (hour, version) pairs stored."""
    vo_where, binds = "", []
    params: dict[str, Any] = {"f": pub.facility}
    if pub.vos is not None:
        vo_where, binds = " AND vo IN :vos", [bindparam("vos", expanding=True)]
        params["vos"] = list(pub.vos) or [""]
    if pub.members:
        conn.execute(
            text(
                "INSERT INTO member (id, issuer, subject, vo, grp, display_name, groups, "
                "institution) VALUES (:id, :iss, :sub, :vo, :grp, :name, :groups, :inst) "
                "ON CONFLICT DO NOTHING"
            ),
            [dict(zip(MEMBER_FIELDS, m, strict=True)) for m in pub.members],
        )
    days: set[int] = set()
    for h in pub.hours:
        p = {**params, "h": h.hour}
        for table in ("usage", "latency"):
            conn.execute(
                text(f"DELETE FROM {table} WHERE facility = :f AND hour = :h{vo_where}")
                .bindparams(*binds),
                p,
            )  # fmt: skip
        if h.usage:
            conn.execute(
                text(
                    "INSERT INTO usage (facility, vo, grp, member_id, resource, hour, amount, "
                    "unit) VALUES (:f, :vo, :grp, :mid, :res, :h, :amount, :unit)"
                ),
                [
                    {
                        "f": pub.facility,
                        "h": h.hour,
                        "vo": vo,
                        "grp": grp,
                        "mid": mid,
                        "res": res,
                        "amount": amount,
                        "unit": unit,
                    }
                    for vo, grp, mid, res, amount, unit in h.usage
                ],  # fmt: skip
            )
        if h.latency:
            conn.execute(
                text(
                    "INSERT INTO latency (facility, vo, grp, member_id, kind, profile, hour, le, "
                    "count, sum_seconds) VALUES (:f, :vo, :grp, :mid, :kind, :profile, :h, :le, "
                    ":count, :secs)"
                ),
                [
                    {
                        "f": pub.facility,
                        "h": h.hour,
                        "vo": vo,
                        "grp": grp,
                        "mid": mid,
                        "kind": kind,
                        "profile": profile,
                        "le": le,
                        "count": count,
                        "secs": secs,
                    }
                    for vo, grp, mid, kind, profile, le, count, secs in h.latency
                ],  # fmt: skip
            )
        days.add(h.hour // DAY * DAY)
    for day in sorted(days):
        _roll_up_day(conn, {**params, "d": day, "end": day + DAY}, vo_where, binds)
    hours = [h.hour for h in pub.hours]
    if hours:
        _note_source(conn, pub.facility, max(hours), len(hours), now)
    return [(h.hour, h.version) for h in pub.hours]


def _roll_up_day(conn: Connection, p: dict[str, Any], vo_where: str, binds: list[Any]) -> None:
    """The daily rollup of (facility, day, VOs) recomputed from its hours."""
    conn.execute(
        text(f"DELETE FROM usage_day WHERE facility = :f AND day = :d{vo_where}").bindparams(
            *binds
        ),
        p,
    )
    conn.execute(
        text(
            "INSERT INTO usage_day (facility, vo, grp, member_id, resource, day, amount, unit) "
            "SELECT facility, vo, grp, member_id, resource, :d, SUM(amount), MIN(unit) "
            f"FROM usage WHERE facility = :f AND hour >= :d AND hour < :end{vo_where} "
            "GROUP BY facility, vo, grp, member_id, resource"
        ).bindparams(*binds),
        p,
    )


def _note_source(conn: Connection, facility: str, last: int, n: int, now: float) -> None:
    conn.execute(
        text(
            "INSERT INTO federation_source (facility, last_hour, received_at, hours) "
            "VALUES (:f, :last, :now, :n) ON CONFLICT (facility) DO UPDATE SET "
            "last_hour = CASE WHEN federation_source.last_hour IS NULL "
            "OR excluded.last_hour > federation_source.last_hour THEN excluded.last_hour "
            "ELSE federation_source.last_hour END, "
            "received_at = excluded.received_at, hours = federation_source.hours + excluded.hours"
        ),
        {"f": facility, "last": last, "now": now, "n": n},
    )


def sources(conn: Connection) -> Sequence[Any]:
    """(facility, last_hour, received_at, hours) of the facilities that publish here."""
    return conn.execute(
        text(
            "SELECT facility, last_hour, received_at, hours FROM federation_source "
            "ORDER BY facility"
        )
    ).all()
