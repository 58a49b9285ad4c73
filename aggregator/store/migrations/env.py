"""Alembic environment: the URL comes from the caller's Config (aggregator/store/migrate.py)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from afmon.aggregator.store import schema  # noqa: F401  (registers the tables)
from afmon.aggregator.store.db import make_engine

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine") or make_engine(
        config.get_main_option("sqlalchemy.url") or ""
    )
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("afmon migrations run online only: afmon db upgrade")
run_migrations_online()
