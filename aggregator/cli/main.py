"""The `afmon` command. Its subcommands are plug-ins: each installed distribution names
them in the `afmon.commands` entry-point group (pyproject.toml) as a function that adds its
parser, so the aggregator's own commands, the report's and the alerts' register alike and
this module imports none of them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from afmon.aggregator import __version__

ENTRY_POINT_GROUP = "afmon.commands"


def build_parser(group: str = ENTRY_POINT_GROUP) -> argparse.ArgumentParser:
    # imported here: it needs the server's packages, which an agent-only install lacks
    from afmon.aggregator.cli.common import EPILOG

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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # before the commands load: works in an agent-only install
        print(f"afmon {__version__}")
        return 0
    try:
        parser = build_parser()
    except ModuleNotFoundError as exc:
        # `pip install afmon` (the agent alone) installs this command too
        print(
            f"afmon: this installation has the agent only ({exc.name} is missing); the "
            "server's commands need `pip install 'afmon[server]'` (README.md, Install)",
            file=sys.stderr,
        )
        return 2
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
