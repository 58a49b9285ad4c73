"""The rules as Prometheus alerting rules, for sites that run Alertmanager.

Only rules with a `prometheus` expression are exported. Signals computed from the
database are read from their `afmon_signal_*` gauges, which /metrics computes as
afmon's evaluator does, so that both judge the same numbers on the same data; the
ingest signals are increase() over counters that exist at 0 from the start.
Prometheus has no resolve level, so the export fires on `threshold` and
resolves as soon as the value is back (no `clear` hysteresis there).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from afmon.alerts.rules import Rule

GROUP = "afmon"


def prometheus_rule(rule: Rule) -> dict[str, Any]:
    assert rule.prometheus is not None
    expr = " ".join(rule.prometheus.split())
    out: dict[str, Any] = {
        "alert": rule.name,
        "expr": f"({expr}) {rule.op} {rule.threshold:g}",
    }
    if rule.for_seconds:
        out["for"] = rule.for_
    out["labels"] = {"severity": rule.severity}
    out["annotations"] = {"summary": rule.summary, "description": rule.description}
    return out


def exportable(rules: Iterable[Rule]) -> list[Rule]:
    return [r for r in rules if r.prometheus is not None]


def export_prometheus(rules: Iterable[Rule], interval: str = "1m") -> str:
    """A Prometheus rule file (YAML) with one group."""
    doc = {
        "groups": [
            {
                "name": GROUP,
                "interval": interval,
                "rules": [prometheus_rule(r) for r in exportable(rules)],
            }
        ]
    }
    return yaml.safe_dump(doc, sort_keys=False, width=100)
