"""`afmon agent-token`: per-agent credentials bound to a facility (stored hashed)."""

from __future__ import annotations

import argparse
import sys

from afmon.aggregator.cli.common import checked_database_url, settings_from_args


def cmd_agent_token(args: argparse.Namespace) -> int:
    from afmon.aggregator.auth.agent_tokens import (
        TokenError,
        create_token,
        list_tokens,
        revoke_token,
    )
    from afmon.aggregator.store.db import create_schema, make_engine

    settings = settings_from_args(args)
    engine = make_engine(checked_database_url(args, settings))
    create_schema(engine)
    try:
        if args.action == "create":
            token = create_token(engine, args.name, args.facility)
            print(token)
            print(
                f"agent token {args.name!r} for facility {args.facility!r} created; it is shown "
                "only now: give it to the agent as AFMON_TOKEN",
                file=sys.stderr,
            )
        elif args.action == "revoke":
            revoke_token(engine, args.name)
            print(f"agent token {args.name!r} revoked", file=sys.stderr)
        else:
            for t in list_tokens(engine):
                state = "active" if t.revoked is None else "revoked"
                print(f"{t.name}\t{t.facility}\t{state}")
    except TokenError as exc:
        print(f"afmon: {exc}", file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    tokens = sub.add_parser(
        "agent-token", help="per-agent credentials: create (printed once), list, revoke"
    )
    tokens.add_argument("--database-url", help="SQLAlchemy URL (AFMON_DATABASE_URL)")
    tokens_sub = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = tokens_sub.add_parser("create", help="create a token bound to a facility")
    create.add_argument("name", help="a unique name, e.g. the node's host name")
    create.add_argument("--facility", required=True, help="the facility the agent may write")
    revoke = tokens_sub.add_parser("revoke", help="revoke a token (takes effect within 5 s)")
    revoke.add_argument("name")
    tokens_sub.add_parser("list", help="list tokens (names, facilities, states; never secrets)")
    tokens.set_defaults(func=cmd_agent_token)
