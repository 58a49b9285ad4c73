"""Alerts: rules as data, a pure `evaluate()`, notifiers, and the Prometheus rule export."""

from afmon.alerts.evaluate import Alert, evaluate, transitions
from afmon.alerts.rules import Rule, RuleError, load_rules, parse_rules

__all__ = [
    "Alert",
    "Rule",
    "RuleError",
    "evaluate",
    "load_rules",
    "parse_rules",
    "transitions",
]
