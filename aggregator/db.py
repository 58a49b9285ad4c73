"""Database engine: SQLite (embedded default) or PostgreSQL, and its schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlmodel import SQLModel

from aggregator import schema  # noqa: F401  (registers the tables)


def make_engine(url: str) -> Engine:
    """Create the engine; for SQLite: WAL, NORMAL sync, and write transactions
    that take the write lock at BEGIN (no lock upgrades, no deadlocks)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def create_schema(engine: Engine) -> None:
    SQLModel.metadata.create_all(engine)


def placeholder(engine: Engine) -> str:
    """The DBAPI parameter marker of the engine's driver, for executemany hot paths."""
    return "?" if engine.dialect.name == "sqlite" else "%s"
