"""The `afmon` command. Its subcommands are plug-ins: each installed distribution names
them in the `afmon.commands` entry-point group (pyproject.toml) as a function that adds its
parser, so the aggregator's own commands, the report's and the alerts' register alike and
this module imports none of them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from importlib.metadata import entry_points

from afmon.aggregator import __version__
from afmon.aggregator.cli.common import EPILOG

ENTRY_POINT_GROUP = "afmon.commands"


def build_parser(group: str = ENTRY_POINT_GROUP) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="afmon",
        description="afmon: monitoring and accounting for HEP Analysis Facilities, per VO member.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"afmon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for ep in sorted(entry_points(group=group), key=lambda ep: ep.name):
        ep.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
