"""`afmon quarantine`: records refused at ingest; list them, replay them once the cause is
fixed, or drop them (docs/accounting.md)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from afmon.aggregator.cli.common import EPILOG, progress_bar, settings_from_args

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from afmon.aggregator.core.settings import ServerSettings
    from afmon.aggregator.ingest.quarantine import Selection
    from afmon.collectors import wire


def _selection(args: argparse.Namespace) -> Selection:
    from afmon.aggregator.ingest.quarantine import Selection

    return Selection(
        facility=args.facility,
        reason=args.reason,
        ids=tuple(args.id or ()),
        include_replayed=getattr(args, "replayed", False),
    )


def cmd_quarantine(args: argparse.Namespace) -> int:
    from afmon.aggregator.ingest import quarantine
    from afmon.aggregator.store.db import create_schema, make_engine

    settings = settings_from_args(args)
    engine = make_engine(settings.database_url)
    create_schema(engine)
    selection = _selection(args)
    try:
        if args.action == "list":
            if args.json:
                for row in quarantine.rows(engine, selection, args.limit):
                    row["record"] = json.loads(row["record"])
                    print(json.dumps(row, sort_keys=True))
                return 0
            counts = quarantine.summary(engine, selection)
            if not counts:
                print("the quarantine is empty" + (" for this selection" if args.facility or
                                                   args.reason or args.id else ""))  # fmt: skip
                return 0
            print(f"{'facility':<20} {'reason':<24} records")
            for facility, reason, n in counts:
                print(f"{facility:<20} {reason:<24} {n}")
            for row in quarantine.rows(engine, selection, args.limit):
                when = datetime.fromtimestamp(row["received_at"], UTC).strftime("%Y-%m-%d %H:%M")
                print(f"  #{row['id']} {when} {row['facility']} {row['agent_id']} "
                      f"seq {row['seq']} {row['field']}: {row['message']}")  # fmt: skip
            return 0
        if args.action == "drop":
            print(f"dropped {_records(quarantine.drop(engine, selection))} from the quarantine")
            return 0
        return _replay(settings, engine, selection)
    finally:
        engine.dispose()


def _replay(settings: ServerSettings, engine: Engine, selection: Selection) -> int:
    from afmon.aggregator.identity.accounts import IdentityMap
    from afmon.aggregator.ingest import quarantine
    from afmon.aggregator.ingest.apply import Ingestor

    ingestor = Ingestor(engine, IdentityMap(engine), settings)

    def apply(batch: wire.Batch, refused: Sequence[wire.Refusal]) -> str:
        return ingestor.apply(batch, refused, quarantine=False).status

    bar = progress_bar("replay")
    report = quarantine.replay(
        engine,
        ingestor.judge,
        apply,
        selection,
        now=time.time(),
        progress=lambda done, total: bar(f"{done}/{total} records", done, total),
    )
    print(f"replayed {_records(report.applied)}; {report.already} had been replayed before")
    for reason, n in sorted((report.still_refused or {}).items()):
        stay = "stays" if n == 1 else "stay"
        print(f"still refused ({reason}): {_records(n)} {stay} in the quarantine")
    return 1 if report.still_refused else 0


def _records(n: int) -> str:
    return f"{n} record" if n == 1 else f"{n} records"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    q = sub.add_parser(
        "quarantine",
        help="records refused at ingest: list, replay (after fixing the cause), drop",
        description="Series and events that ingest refused while applying the rest of their "
        "batch (a clock-skewed sample, a node past AFMON_LIMIT_NODES_PER_FACILITY, a reserved "
        "label, ...). Replay applies each record exactly once; a record refused again stays.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("--database-url", help="SQLAlchemy URL (AFMON_DATABASE_URL)")
    actions = q.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="count by facility and reason, then the records")
    replay = actions.add_parser("replay", help="apply the selected records (exactly once)")
    drop = actions.add_parser("drop", help="delete the selected records")
    for p in (listing, replay, drop):
        p.add_argument("--facility", help="only this facility")
        p.add_argument("--reason", help="only this reason (e.g. future, over_limit_nodes)")
        p.add_argument("--id", type=int, action="append", help="only this record (repeatable)")
    for p in (listing, drop):
        p.add_argument("--replayed", action="store_true", help="include replayed records")
    listing.add_argument("--limit", type=int, default=50, help="records shown (default 50)")
    listing.add_argument("--json", action="store_true", help="one JSON object per record")
    q.set_defaults(func=cmd_quarantine)
