"""`afmon downtime`: declare, list and remove planned downtimes of a facility's services, so
that availability tells planned from unplanned down time (docs/availability.md)."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

from afmon.aggregator.cli.common import EPILOG, settings_from_args


def parse_time(value: str) -> float:
    """ISO 8601 (UTC unless an offset is given) or epoch seconds."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        d = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a time: give ISO 8601 (2026-12-07T08:00Z) or epoch seconds"
        ) from None
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def cmd_downtime(args: argparse.Namespace) -> int:
    from sqlalchemy import text

    from afmon.aggregator.store.db import create_schema, make_engine

    settings = settings_from_args(args)
    engine = make_engine(settings.database_url)
    create_schema(engine)
    try:
        if args.action == "add":
            if args.end <= args.start:
                print("afmon downtime add: --end must be after --start", file=sys.stderr)
                return 2
            with engine.begin() as conn:
                conn.execute(
                    text(
                        'INSERT INTO planned_downtime (facility, service, start, "end", reason, '
                        "created) VALUES (:f, :s, :a, :b, :r, :now)"
                    ),
                    {
                        "f": args.facility,
                        "s": args.service,
                        "a": args.start,
                        "b": args.end,
                        "r": args.reason or "",
                        "now": time.time(),
                    },  # fmt: skip
                )
            print(f"planned downtime of {args.service} at {args.facility}: {_utc(args.start)} "
                  f"to {_utc(args.end)}")  # fmt: skip
            return 0
        if args.action == "remove":
            with engine.begin() as conn:
                n = conn.execute(
                    text("DELETE FROM planned_downtime WHERE id = :i"), {"i": args.id}
                ).rowcount
            if not n:
                print(f"afmon downtime remove: no planned downtime #{args.id}", file=sys.stderr)
                return 1
            print(f"removed planned downtime #{args.id}")
            return 0
        cond, params = ("WHERE facility = :f", {"f": args.facility}) if args.facility else ("", {})
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    f'SELECT id, facility, service, start, "end", reason FROM planned_downtime '
                    f"{cond} ORDER BY start"
                ),
                params,
            ).all()
        if not rows:
            print("no planned downtime")
        for i, f, s, a, b, reason in rows:
            print(f"#{i} {f} {s}: {_utc(a)} to {_utc(b)}" + (f" ({reason})" if reason else ""))
        return 0
    finally:
        engine.dispose()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dt = sub.add_parser(
        "downtime",
        help="planned downtimes of services: add, list, remove",
        description="Declare when a service (as the agents' AFMON_SERVICE_CHECKS name it) is "
        "down on purpose: availability then reports that down time as planned.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dt.add_argument("--database-url", help="SQLAlchemy URL (AFMON_DATABASE_URL)")
    actions = dt.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="declare a planned downtime")
    add.add_argument("--facility", required=True)
    add.add_argument("--service", required=True, help="e.g. jupyterhub, xrootd")
    add.add_argument("--start", required=True, type=parse_time, help="ISO 8601 or epoch")
    add.add_argument("--end", required=True, type=parse_time, help="ISO 8601 or epoch")
    add.add_argument("--reason", help="shown with it")
    listing = actions.add_parser("list", help="the planned downtimes")
    listing.add_argument("--facility", help="only this facility")
    remove = actions.add_parser("remove", help="remove one by its number")
    remove.add_argument("id", type=int)
    dt.set_defaults(func=cmd_downtime)
