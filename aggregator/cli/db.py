"""`afmon db`: database schema migrations (Alembic)."""

from __future__ import annotations

import argparse

from afmon.aggregator.cli.common import checked_database_url, settings_from_args


def cmd_db(args: argparse.Namespace) -> int:
    from afmon.aggregator.store import migrate

    settings = settings_from_args(args)
    url = checked_database_url(args, settings)
    if args.action == "upgrade":
        before, after = migrate.upgrade(url, args.revision)
        print(f"database schema: {before or 'empty'} -> {after}")
    else:
        from afmon.aggregator.store.db import make_engine

        engine = make_engine(url)
        print(migrate.current_revision(engine) or "none (not under migrations)")
        engine.dispose()
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    db = sub.add_parser("db", help="database schema migrations (Alembic): upgrade, current")
    db.add_argument("--database-url", help="SQLAlchemy URL (AFMON_DATABASE_URL)")
    db_sub = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = db_sub.add_parser("upgrade", help="migrate the schema (run before starting new workers)")
    up.add_argument("revision", nargs="?", default="head", help="target revision (default head)")
    db_sub.add_parser("current", help="print the schema's revision")
    db.set_defaults(func=cmd_db)
