"""`afmon identity check`: validate an identity map file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_identity_check(args: argparse.Namespace) -> int:
    from afmon.aggregator.identity.accounts import IdentityError, parse_identity_file

    try:
        data = parse_identity_file(Path(args.file))
    except IdentityError as exc:
        print(f"afmon: {exc}", file=sys.stderr)
        return 1
    accounts = sum(len(m.accounts) for m in data.members)
    print(f"{args.file}: {len(data.vos)} VOs, {len(data.members)} members, {accounts} accounts: OK")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ident = sub.add_parser("identity", help="identity map tools")
    ident_sub = ident.add_subparsers(dest="identity_command", required=True, metavar="ACTION")
    check = ident_sub.add_parser("check", help="validate an identity map file")
    check.add_argument("file")
    check.set_defaults(func=cmd_identity_check)
