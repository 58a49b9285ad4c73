"""`afmon report weekly`: build the weekly report from the database and write its files."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from afmon.aggregator.cli.common import progress_bar, settings_from_args
from afmon.aggregator.report.files import FORMATS


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    report = sub.add_parser("report", help="accounting reports (weekly: CSV, JSON, HTML, APEL)")
    report_sub = report.add_subparsers(dest="report_command", required=True, metavar="REPORT")
    weekly = report_sub.add_parser(
        "weekly",
        help="the weekly accounting report of one ISO week",
        description="Build the weekly accounting report (see docs/report.md) from the "
        "database in AFMON_DATABASE_URL and write its files.",
    )
    weekly.add_argument("--week", help="ISO week like 2026-W47 (default: the last complete week)")
    weekly.add_argument("--facility", help="only this facility")
    weekly.add_argument("--vo", help="only this VO")
    weekly.add_argument("--out", default=".", help="output directory (default: .)")
    weekly.add_argument(
        "--format",
        default=",".join(FORMATS),
        help=f"comma-separated formats: {', '.join(FORMATS)} (default: all)",
    )
    weekly.add_argument("--database-url", help="SQLAlchemy URL (AFMON_DATABASE_URL)")
    weekly.set_defaults(func=cmd_report_weekly)


def cmd_report_weekly(args: argparse.Namespace, clock: Callable[[], float] = time.time) -> int:
    from afmon.aggregator.report.files import FormatError, parse_formats, write_files
    from afmon.aggregator.report.run import ReportInputError, build_files, open_query
    from afmon.aggregator.report.week import Week, WeekError

    try:
        formats = parse_formats(args.format)
        week = Week.parse(args.week) if args.week else Week.last_complete(clock())
        week.check_ended(clock())
    except (FormatError, WeekError) as exc:
        print(f"afmon report weekly: {exc}", file=sys.stderr)
        return 2
    settings = settings_from_args(args)
    try:
        query = open_query(settings.database_url)
        files = build_files(
            query, None, settings, week, formats, args.facility, args.vo, progress_bar("report")
        )
    except ReportInputError as exc:
        print(f"afmon report weekly: {exc}", file=sys.stderr)
        return 1
    for path in write_files(files, Path(args.out)):
        print(path)
    return 0
