"""Alerts: rules as data, a pure `evaluate()`, notifiers, and the Prometheus rule export."""

from alerts.evaluate import Alert, evaluate, transitions
from alerts.rules import Rule, RuleError, load_rules, parse_rules

__all__ = [
    "Alert",
    "Rule",
    "RuleError",
    "evaluate",
    "load_rules",
    "parse_rules",
    "transitions",
]
