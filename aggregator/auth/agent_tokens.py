"""Agent credentials: per-agent bearer tokens bound to a facility, stored hashed.

`afmon agent-token create` prints a new token once; only its SHA-256 is kept, so a
leaked database does not leak credentials. `revoke` takes effect within `cache_ttl`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine
from sqlalchemy import select as select_columns
from sqlmodel import Session, select

from afmon.aggregator.store.db import read_connection
from afmon.aggregator.store.schema import AgentToken


class TokenError(ValueError):
    pass


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    engine: Engine, name: str, facility: str, clock: Callable[[], float] = time.time
) -> str:
    """Create a credential and return the token (shown once, never stored)."""
    token = "afm_" + secrets.token_urlsafe(32)
    with Session(engine) as session:
        if session.exec(select(AgentToken).where(AgentToken.name == name)).first():
            raise TokenError(f"an agent token named {name!r} exists already")
        session.add(
            AgentToken(name=name, facility=facility, token_sha256=_digest(token), created=clock())
        )
        session.commit()
    return token


def revoke_token(engine: Engine, name: str, clock: Callable[[], float] = time.time) -> None:
    with Session(engine) as session:
        row = session.exec(select(AgentToken).where(AgentToken.name == name)).first()
        if row is None:
            raise TokenError(f"no agent token named {name!r}")
        if row.revoked is None:
            row.revoked = clock()
            session.add(row)
            session.commit()


def list_tokens(engine: Engine) -> list[AgentToken]:
    with Session(engine) as session:
        return list(session.exec(select(AgentToken).order_by(AgentToken.name)).all())


class AgentAuthenticator:
    """Maps an agent's bearer token to its facility (None: refused).

    Static tokens from settings (the demo's, or a simple site's) are compared in
    constant time; database credentials by hash, cached for `cache_ttl` seconds.
    """

    def __init__(
        self,
        engine: Engine,
        static_tokens: dict[str, str],
        cache_ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._static = static_tokens
        self._ttl = cache_ttl
        self._clock = clock
        self._cache: (
            dict[
                str,
                tuple[str, str],
            ]
            | None
        ) = None
        self._loaded = float("-inf")
        self._lock = threading.Lock()

    def facility(self, header: str) -> tuple[str, str] | None:
        """(facility, agent credential name) for an `Authorization` header, or None."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        for facility, expected in self._static.items():
            if hmac.compare_digest(token.encode(), expected.encode()):
                return facility, f"static:{facility}"
        return self._active().get(_digest(token))

    def _active(self) -> dict[str, tuple[str, str]]:
        with self._lock:
            now = self._clock()
            if self._cache is None or now - self._loaded > self._ttl:
                with read_connection(self._engine) as conn:
                    rows = conn.execute(
                        select_columns(
                            AgentToken.token_sha256, AgentToken.facility, AgentToken.name
                        ).where(
                            AgentToken.revoked.is_(None)  # type: ignore[union-attr]
                        )
                    ).all()
                self._cache = {r[0]: (r[1], r[2]) for r in rows}
                self._loaded = now
            return self._cache
