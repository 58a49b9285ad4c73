"""Publishing ledger hours to upstream afmons, exactly once and resumable.

The ingest bumps the version of every (facility, hour) it adds to (`ledger_change`). An hour
is due for an upstream once it has closed and its version is newer than the one that
upstream acknowledged (`federation_sent`, the durable cursor). The publisher sends the due
hours, oldest first, as whole row sets; the upstream replaces its rows of those hours and
answers the (hour, version) pairs it stored; only then are they recorded as sent. So a
publisher or upstream that stops at any point sends those hours again, which replaces them
again: nothing is lost or counted twice, and a late sample that changes a closed hour makes
it due again (the upstream replaces, never adds). `resend` forgets what an upstream
acknowledged: everything is sent again.

Only the facilities that report to this server are published (received ledgers are not
passed on): `ledger_change` is written by the ingest alone.
"""

from __future__ import annotations

import gzip
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
from sqlalchemy import Connection, Engine, bindparam, text

from afmon.aggregator.core.upstreams import Upstream
from afmon.aggregator.federation.messages import (
    FED_CONTENT_TYPE,
    Acknowledged,
    HourRows,
    LatencyRow,
    MemberRow,
    Publication,
    UsageRow,
)

log = logging.getLogger(__name__)
HOUR = 3600
HOURS_PER_REQUEST = 24
GROUP_ISSUER = "afmon:group"


class PublishError(RuntimeError):
    """An upstream that did not store a publication (unreachable, refused, answered wrong)."""


@dataclass(frozen=True)
class Due:
    facility: str
    hour: int
    version: int


def due_hours(conn: Connection, upstream: str, now: float, limit: int) -> list[Due]:
    """The closed hours whose version `upstream` has not acknowledged, oldest first."""
    rows = conn.execute(
        text(
            "SELECT c.facility, c.hour, c.version FROM ledger_change c "
            "LEFT JOIN federation_sent s ON s.upstream = :u AND s.facility = c.facility "
            "AND s.hour = c.hour WHERE (s.version IS NULL OR s.version < c.version) "
            "AND c.hour + :hour <= :now ORDER BY c.hour, c.facility LIMIT :limit"
        ),
        {"u": upstream, "now": now, "hour": HOUR, "limit": limit},
    )
    return [Due(f, h, v) for f, h, v in rows]


def due_count(conn: Connection, upstream: str, now: float) -> tuple[int, int | None]:
    """How many closed hours are due for `upstream`, and the oldest of them."""
    n, oldest = conn.execute(
        text(
            "SELECT COUNT(*), MIN(c.hour) FROM ledger_change c "
            "LEFT JOIN federation_sent s ON s.upstream = :u AND s.facility = c.facility "
            "AND s.hour = c.hour WHERE (s.version IS NULL OR s.version < c.version) "
            "AND c.hour + :hour <= :now"
        ),
        {"u": upstream, "now": now, "hour": HOUR},
    ).one()
    return int(n), oldest


def _vo_filter(upstream: Upstream) -> tuple[str, dict[str, Any], list[Any]]:
    if not upstream.vos:
        return "", {}, []
    return " AND vo IN :vos", {"vos": list(upstream.vos)}, [bindparam("vos", expanding=True)]


def build_publication(
    conn: Connection, upstream: Upstream, facility: str, due: list[Due]
) -> Publication:
    """The rows of the `due` hours of `facility` that `upstream` receives."""
    where, params, binds = _vo_filter(upstream)
    hours: list[HourRows] = []
    member_ids: dict[str, tuple[str, str]] = {}  # id -> (vo, grp)
    for d in due:
        p = {"f": facility, "h": d.hour, **params}
        usage = conn.execute(
            text(
                "SELECT vo, grp, member_id, resource, amount, unit FROM usage "
                f"WHERE facility = :f AND hour = :h{where} "
                "ORDER BY vo, grp, member_id, resource"
            ).bindparams(*binds),
            p,
        ).all()
        latency = conn.execute(
            text(
                "SELECT vo, grp, member_id, kind, profile, le, count, sum_seconds FROM latency "
                f"WHERE facility = :f AND hour = :h{where} "
                "ORDER BY vo, grp, member_id, kind, profile, le"
            ).bindparams(*binds),
            p,
        ).all()
        u: list[UsageRow] = [tuple(r) for r in usage]  # type: ignore[misc]
        lat: list[LatencyRow] = [tuple(r) for r in latency]  # type: ignore[misc]
        if upstream.level == "group":
            u, lat = _per_group(u, lat)
        member_ids.update((r[2], (r[0], r[1])) for r in u)
        member_ids.update((r[2], (r[0], r[1])) for r in lat)
        hours.append(HourRows(d.hour, d.version, u, lat))
    members: list[MemberRow] = []
    if upstream.level == "member" and member_ids:
        rows = conn.execute(
            text(
                "SELECT id, issuer, subject, vo, grp, display_name, groups, institution "
                "FROM member "
                "WHERE id IN :ids ORDER BY id"
            ).bindparams(bindparam("ids", expanding=True)),
            {"ids": sorted(member_ids)},
        )
        members = [tuple(r) for r in rows]  # type: ignore[misc]
    else:
        members = [
            (mid, GROUP_ISSUER, grp, vo, grp, f"group {grp}", "[]", "")
            for mid, (vo, grp) in sorted(member_ids.items())
        ]
    return Publication(
        facility=facility,
        level=upstream.level,
        vos=list(upstream.vos) or None,
        hours=hours,
        members=members,
    )


def group_member_id(grp: str) -> str:
    """The member id under which a group-level publication sums a group's members."""
    return f"{GROUP_ISSUER}|{grp}"


def _per_group(
    usage: list[UsageRow], latency: list[LatencyRow]
) -> tuple[list[UsageRow], list[LatencyRow]]:
    """Rows summed per accounting group: no member identity in them."""
    amounts: dict[tuple[str, str, str, str], float] = defaultdict(float)
    for vo, grp, _mid, resource, amount, unit in usage:
        amounts[(vo, grp, resource, unit)] += amount
    counts: dict[tuple[str, str, str, str, float], list[float]] = {}
    for vo, grp, _mid, kind, profile, le, count, seconds in latency:
        slot = counts.setdefault((vo, grp, kind, profile, le), [0, 0.0])
        slot[0] += count
        slot[1] += seconds
    u = [(vo, grp, group_member_id(grp), r, a, unit)
         for (vo, grp, r, unit), a in sorted(amounts.items())]  # fmt: skip
    lat = [(vo, grp, group_member_id(grp), k, p, le, int(c), s)
           for (vo, grp, k, p, le), (c, s) in sorted(counts.items())]  # fmt: skip
    return u, lat  # type: ignore[return-value]


class Publisher:
    """Publishes the due hours of this server's facilities to one upstream."""

    def __init__(
        self,
        engine: Engine,
        upstream: Upstream,
        client: httpx.Client | None = None,
        hours_per_request: int = HOURS_PER_REQUEST,
    ) -> None:
        self._engine = engine
        self.upstream = upstream
        self._client = client or httpx.Client(timeout=60)
        self._per_request = hours_per_request
        self.sent_hours = 0  # hours acknowledged since start

    def publish(self, now: float) -> int:
        """Send every due hour; returns how many were acknowledged. Raises PublishError when
        the upstream does not store one (what it acknowledged so far stays recorded)."""
        total = 0
        while True:
            with self._engine.connect() as conn:
                due = due_hours(conn, self.upstream.url, now, self._per_request)
                if not due:
                    return total
                per_facility: dict[str, list[Due]] = defaultdict(list)
                for d in due:
                    per_facility[d.facility].append(d)
                publications = [
                    build_publication(conn, self.upstream, f, ds)
                    for f, ds in sorted(per_facility.items())
                ]
            for pub in publications:
                acked = self._post(pub)
                self._record(pub.facility, acked)
                total += len(acked)
                self.sent_hours += len(acked)

    def _post(self, pub: Publication) -> list[tuple[int, int]]:
        body = gzip.compress(msgspec.json.encode(pub), compresslevel=5)
        try:
            r = self._client.post(
                f"{self.upstream.url}/api/v1/federation/ledger",
                content=body,
                headers={
                    "Authorization": f"Bearer {self.upstream.token.get_secret_value()}",
                    "Content-Type": FED_CONTENT_TYPE,
                    "Content-Encoding": "gzip",
                },
            )
        except httpx.HTTPError as exc:
            raise PublishError(f"{self.upstream.url} unreachable: {exc}") from None
        if r.status_code != 200:
            raise PublishError(f"{self.upstream.url} answered {r.status_code}: {r.text[:300]}")
        try:
            answer = msgspec.json.decode(r.content, type=Acknowledged)
        except msgspec.ValidationError as exc:
            raise PublishError(f"{self.upstream.url} answered no acknowledgement: {exc}") from None
        sent = {(h.hour, h.version) for h in pub.hours}
        acked = [(h, v) for h, v in answer.hours if (h, v) in sent]
        if len(acked) != len(sent):
            raise PublishError(
                f"{self.upstream.url} acknowledged {len(acked)} of {len(sent)} hours of "
                f"{pub.facility}"
            )
        return acked

    def _record(self, facility: str, acked: Iterable[tuple[int, int]]) -> None:
        rows = [{"u": self.upstream.url, "f": facility, "h": h, "v": v} for h, v in acked]
        if not rows:
            return
        with self._engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO federation_sent (upstream, facility, hour, version) "
                    "VALUES (:u, :f, :h, :v) ON CONFLICT (upstream, facility, hour) "
                    "DO UPDATE SET version = excluded.version "
                    "WHERE excluded.version > federation_sent.version"
                ),
                rows,
            )

    def close(self) -> None:
        self._client.close()


def resend(engine: Engine, upstream: str | None = None) -> int:
    """Forget what `upstream` (or every upstream) acknowledged: everything is due again.
    Returns how many acknowledged hours were forgotten."""
    with engine.begin() as conn:
        if upstream is None:
            return conn.execute(text("DELETE FROM federation_sent")).rowcount
        return conn.execute(
            text("DELETE FROM federation_sent WHERE upstream = :u"), {"u": upstream.rstrip("/")}
        ).rowcount


def federation_loop(services: Any, stop: threading.Event) -> None:
    """The server's publishing job: every AFMON_FEDERATION_INTERVAL_SECONDS, each upstream
    gets its due hours; an upstream that fails is retried at the next round."""
    settings = services.settings
    if not settings.federation_upstreams:
        return
    publishers = [Publisher(services.engine, u) for u in settings.federation_upstreams]
    clock: Callable[[], float] = services.clock
    try:
        while True:
            for p in publishers:
                try:
                    n = p.publish(clock())
                    if n:
                        log.info("federation: %d hours published to %s", n, p.upstream.url)
                except PublishError as exc:
                    log.warning("federation: %s (retried in %g s)", exc,
                                settings.federation_interval_seconds)  # fmt: skip
                except Exception:  # noqa: BLE001  (publishing must never stop the server)
                    log.exception("federation: publishing to %s failed", p.upstream.url)
            if stop.wait(settings.federation_interval_seconds):
                return
    finally:
        for p in publishers:
            p.close()
