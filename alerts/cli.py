"""`afmon alerts ...`: check a rule file, export the rules for Prometheus."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_check(args: argparse.Namespace) -> int:
    from afmon.alerts.export import exportable
    from afmon.alerts.rules import RuleError, load_rules

    try:
        rules = load_rules(Path(args.file) if args.file else None)
    except RuleError as exc:
        print(f"afmon: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.file or 'packaged rules'}: {len(rules)} rules, "
        f"{len(exportable(rules))} exportable to Prometheus: OK"
    )
    return 0


def cmd_export_prometheus(args: argparse.Namespace) -> int:
    from afmon.alerts.export import export_prometheus
    from afmon.alerts.rules import RuleError, load_rules

    try:
        rules = load_rules(Path(args.rules) if args.rules else None)
    except RuleError as exc:
        print(f"afmon: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(export_prometheus(rules, interval=args.interval))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    alerts = sub.add_parser("alerts", help="alert rules: check a file, export for Prometheus")
    actions = alerts.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate a rule file (default: the packaged one)")
    check.add_argument("file", nargs="?", help="YAML rule file (AFMON_ALERT_RULES_FILE)")
    check.set_defaults(func=cmd_check)
    export = actions.add_parser(
        "export-prometheus", help="print the rules as a Prometheus alerting rule file"
    )
    export.add_argument("--rules", help="YAML rule file (default: the packaged one)")
    export.add_argument("--interval", default="1m", help="evaluation interval of the group")
    export.set_defaults(func=cmd_export_prometheus)
