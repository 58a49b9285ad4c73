"""`afmon db upgrade`: Alembic migrations that build exactly the models' schema."""

from __future__ import annotations

import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect
from sqlmodel import SQLModel

from afmon.aggregator.store.db import create_schema, make_engine


def _afmon(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "afmon.aggregator.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


HEAD = "0010"  # the newest migration


def _drift(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(ctx, SQLModel.metadata)
    finally:
        engine.dispose()


def test_upgrade_builds_the_models_schema(database_url: str) -> None:
    r = _afmon("db", "--database-url", database_url, "upgrade")
    assert r.returncode == 0, r.stderr
    assert f"empty -> {HEAD}" in r.stdout
    # a model change without a migration fails here: add one (docs/scale.md)
    assert _drift(database_url) == []
    r = _afmon("db", "--database-url", database_url, "current")
    assert r.stdout.strip() == HEAD
    r = _afmon("db", "--database-url", database_url, "upgrade")  # again: nothing to do
    assert r.returncode == 0 and f"{HEAD} -> {HEAD}" in r.stdout


def test_a_database_made_before_migrations_is_stamped(database_url: str) -> None:
    engine = make_engine(database_url)
    create_schema(engine)
    engine.dispose()
    r = _afmon("db", "--database-url", database_url, "upgrade")
    assert r.returncode == 0, r.stderr
    assert f"0001 -> {HEAD}" in r.stdout  # stamped at the baseline, then upgraded


def _outbox_columns(engine: Engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("tsdb_outbox")}


def test_an_outbox_from_before_0004_gets_its_points_column(database_url: str) -> None:
    """A database at 0003 (line protocol in the outbox) works at once: `create_schema` adds
    the column at start-up, and the migration then has nothing left to do."""
    r = _afmon("db", "--database-url", database_url, "upgrade", "0003")
    assert r.returncode == 0, r.stderr
    engine = make_engine(database_url)
    try:
        assert "points" not in _outbox_columns(engine)
        create_schema(engine)
        assert "points" in _outbox_columns(engine)
    finally:
        engine.dispose()
    r = _afmon("db", "--database-url", database_url, "upgrade")
    assert r.returncode == 0, r.stderr
    assert f"0003 -> {HEAD}" in r.stdout
    assert _drift(database_url) == []
