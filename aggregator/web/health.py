"""Health that tells the truth: liveness (`/healthz`: the process answers and the database
can be read) is not readiness (`/readyz`: data sent now would be stored), and a failed write
is a 503 the agent retries, counted by reason, never a 500 (docs/quickstart.md)."""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

# Less free space than this next to a SQLite database: not ready (a write may fail half-way).
MIN_FREE_BYTES = 64 * 1024 * 1024

_REASONS = (  # (words in the driver's message, reason); the first match wins
    (("database is locked", "could not obtain lock", "deadlock detected", "lock timeout"),
     "locked"),
    (("disk is full", "no space left", "could not extend file", "disk full"), "disk_full"),
    (("readonly database", "read-only", "read only"), "read_only"),
    (("connection refused", "could not connect", "server closed the connection",
      "terminating connection", "connection is closed", "unable to open database",
      "the database system is", "timeout expired"), "unavailable"),
)  # fmt: skip


def write_failure_reason(exc: BaseException) -> str | None:
    """The reason code of a database failure (locked, disk_full, read_only, unavailable,
    other), or None when `exc` is not a database failure."""
    if not isinstance(exc, DBAPIError):
        return None
    return _reason_of(str(exc.orig if exc.orig is not None else exc))


def _reason_of(message: str) -> str:
    text = message.lower()
    for words, reason in _REASONS:
        if any(w in text for w in words):
            return reason
    return "other"


@dataclass
class Readiness:
    ready: bool = True
    checks: dict[str, str] = field(default_factory=dict)

    def fail(self, check: str, why: str) -> None:
        self.ready = False
        self.checks[check] = why


def readiness(
    engine: Engine, min_free_bytes: int = MIN_FREE_BYTES, lock_wait: float = 2.0
) -> Readiness:
    """Whether a batch posted now would be stored: the database takes a write transaction
    (not locked past its timeout, not read-only, not a standby) and, for SQLite, its disk has
    room."""
    out = Readiness()
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if path and path != ":memory:":
        # a connection of its own, outside the pool: a failed BEGIN must not leave a pooled
        # connection in a transaction, and readiness waits seconds, not ingest's 30 s
        try:
            conn = sqlite3.connect(path, timeout=lock_wait, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")  # takes the write lock, as ingest does
                conn.execute("ROLLBACK")
            finally:
                conn.close()
            out.checks["database"] = "writable"
        except sqlite3.Error as exc:
            out.fail("database", f"{_reason_of(str(exc))}: {exc}")
    elif engine.dialect.name != "sqlite":
        try:
            with engine.connect() as conn:
                read_only = conn.exec_driver_sql("SHOW transaction_read_only").scalar_one()
                standby = conn.exec_driver_sql("SELECT pg_is_in_recovery()").scalar_one()
            if read_only == "on" or standby:
                out.fail("database", "read-only (a standby or default_transaction_read_only)")
            else:
                out.checks["database"] = "writable"
        except DBAPIError as exc:
            out.fail("database", f"{write_failure_reason(exc)}: {exc.orig or exc}".splitlines()[0])
    if path and path != ":memory:":
        free = shutil.disk_usage(Path(path).resolve().parent).free
        if free < min_free_bytes:
            out.fail("disk", f"{free} bytes free next to the database (< {min_free_bytes})")
        else:
            out.checks["disk"] = f"{free} bytes free"
    return out
