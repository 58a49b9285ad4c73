"""Schema migrations with Alembic: `afmon db upgrade` (docs/scale.md).

A database that `create_schema` made before migrations existed (it has afmon's tables but no
`alembic_version`) is stamped at the baseline first, then upgraded.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from afmon.aggregator.store.db import make_engine

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001"


def alembic_config(url: str, engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade to `revision`; return (revision before, revision after)."""
    engine = make_engine(url)
    try:
        cfg = alembic_config(url, engine)
        before = current_revision(engine)
        if before is None and inspect(engine).has_table("applied_batch"):
            command.stamp(cfg, BASELINE)  # made by create_schema: the baseline's tables
            before = BASELINE
        command.upgrade(cfg, revision)
        return before, current_revision(engine)
    finally:
        engine.dispose()
