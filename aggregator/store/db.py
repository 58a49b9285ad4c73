"""Database engine: SQLite (embedded default) or PostgreSQL, and its schema."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, LargeBinary, create_engine, event, inspect
from sqlmodel import SQLModel

from afmon.aggregator.store import schema  # noqa: F401  (registers the tables)

READONLY = "afmon_readonly"


def read_connection(engine: Engine) -> Connection:
    """A connection for readers: on SQLite it does not take the write lock."""
    return engine.connect().execution_options(**{READONLY: True})


SQLITE_CACHE_KIB = 65536  # per connection, an upper bound: pages are only cached when read


def make_engine(url: str) -> Engine:
    """Create the engine; for SQLite: WAL, FULL sync, and write transactions
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
            # FULL: a batch is acknowledged only once its commit is on disk (WAL fsync)
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            # 64 MiB of page cache (default 2 MiB): a month of the ledger's index pages stays
            # in memory for the dashboard's range reads (~20 % faster, docs/benchmarks.md)
            cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # Writers take the write lock at once; readers must not, or every dashboard
            # read would queue behind ingest (and block it) for nothing.
            readonly = conn.get_execution_options().get(READONLY, False)
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def create_schema(engine: Engine) -> None:
    """Create missing tables, and bring a database that an older afmon made forward where a
    migration would: the daily rollup gets its days (0003), the outbox its `points` (0004)."""
    from afmon.aggregator.store.rollup import backfill_daily

    SQLModel.metadata.create_all(engine)
    with engine.begin() as conn:
        backfill_daily(conn)
        if "points" not in {c["name"] for c in inspect(conn).get_columns("tsdb_outbox")}:
            blob = LargeBinary().compile(dialect=conn.dialect)
            exists = " IF NOT EXISTS" if conn.dialect.name == "postgresql" else ""
            conn.exec_driver_sql(f"ALTER TABLE tsdb_outbox ADD COLUMN{exists} points {blob}")
        if "institution" not in {c["name"] for c in inspect(conn).get_columns("member")}:  # 0009
            conn.exec_driver_sql(
                "ALTER TABLE member ADD COLUMN institution VARCHAR NOT NULL DEFAULT ''"
            )


def insert_rows(
    conn: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Bulk insert inside the connection's transaction, straight through the driver: COPY on
    PostgreSQL (psycopg 3), `executemany` on SQLite. `rows` may be a lazy iterator (the ingest
    hot path passes one, so that no list of row tuples is built)."""
    driver = conn.connection.driver_connection
    cols = ", ".join(columns)
    if conn.dialect.name == "postgresql":
        with driver.cursor() as cur, cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
            write = copy.write_row
            for row in rows:
                write(row)
        return
    marks = ", ".join("?" * len(columns))
    driver.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)


def placeholder(engine: Engine) -> str:
    """The DBAPI parameter marker of the engine's driver, for executemany hot paths."""
    return "?" if engine.dialect.name == "sqlite" else "%s"
