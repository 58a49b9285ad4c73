"""`afmon federation`: what this afmon publishes upstream and receives from facilities, and a
full re-send on demand (docs/federation.md)."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

from afmon.aggregator.cli.common import EPILOG, settings_from_args


def _utc(t: float | None) -> str:
    return "never" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def cmd_federation(args: argparse.Namespace) -> int:
    from afmon.aggregator.federation.publish import due_count, resend
    from afmon.aggregator.federation.receive import sources
    from afmon.aggregator.store.db import create_schema, make_engine

    settings = settings_from_args(args)
    engine = make_engine(settings.database_url)
    create_schema(engine)
    try:
        if args.action == "resend":
            known = [u.url for u in settings.federation_upstreams]
            target = args.upstream.rstrip("/") if args.upstream else None
            if target is not None and target not in known:
                print(f"afmon federation resend: {target} is not in AFMON_FEDERATION_UPSTREAMS "
                      f"({', '.join(known) or 'none configured'})", file=sys.stderr)  # fmt: skip
                return 2
            n = resend(engine, target)
            print(f"forgot {n} acknowledged hours: every closed hour is sent again "
                  f"to {target or 'every upstream'} at the next round")  # fmt: skip
            return 0
        now = time.time()
        with engine.connect() as conn:
            if not settings.federation_upstreams:
                print("publishing: no upstream (AFMON_FEDERATION_UPSTREAMS)")
            for u in settings.federation_upstreams:
                due, oldest = due_count(conn, u.url, now)
                vos = ", ".join(u.vos) or "every VO"
                print(f"publishing to {u.url} ({vos}, {u.level} level): {due} hours due"
                      + (f", the oldest {_utc(oldest)}" if oldest is not None else ""))  # fmt: skip
            rows = sources(conn)
        if not rows:
            print("receiving: no facility has published here (AFMON_FEDERATION_PEERS)")
        for facility, last_hour, received_at, hours in rows:
            print(f"receiving from {facility}: newest hour {_utc(last_hour)}, last publication "
                  f"{_utc(received_at)}, {hours} hours received")  # fmt: skip
        return 0
    finally:
        engine.dispose()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    fed = sub.add_parser(
        "federation",
        help="federated accounting: what is published upstream and received; re-send",
        description="A facility afmon publishes its closed ledger hours to the upstream "
        "afmons of AFMON_FEDERATION_UPSTREAMS; an upstream receives from the facilities of "
        "AFMON_FEDERATION_PEERS. `status` shows both sides; `resend` makes every closed hour "
        "due again (the upstream replaces, never adds).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fed.add_argument("--database-url", help="SQLAlchemy URL (AFMON_DATABASE_URL)")
    actions = fed.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("status", help="hours due per upstream; freshness per publishing facility")
    again = actions.add_parser("resend", help="send every closed hour again")
    again.add_argument("--upstream", help="only this upstream's URL (default: every upstream)")
    fed.set_defaults(func=cmd_federation)
