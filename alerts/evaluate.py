"""The pure alert evaluation: rules + signals + previous state + now -> new state.

An alert is one (rule, label set). Its life:
  inactive -> pending   when the value breaches the threshold,
  pending  -> firing    once the breach has lasted the rule's `for`,
  pending  -> inactive  when the breach ends before that,
  firing   -> resolved  when the value no longer passes `op clear` (hysteresis)
                        or the signal has no data for it any more,
  resolved -> inactive  at the next evaluation (a new breach starts a new alert).
No I/O and no clock: the same inputs give the same state.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from afmon.aggregator.query.signals import Labels, Observation
from afmon.alerts.rules import Rule

Status = Literal["pending", "firing", "resolved"]
Key = tuple[str, Labels]
_TEMPLATE = re.compile(
    r"\{\{\s*\$(?:labels\.([A-Za-z_][A-Za-z0-9_]*)|value(?:\s*\|\s*"
    r"(humanize|humanizeDuration|humanizePercentage))?)\s*\}\}"
)


@dataclass(frozen=True)
class Alert:
    rule: str
    labels: Labels
    status: Status
    severity: str
    value: float
    active_since: float
    fired_at: float | None = None
    resolved_at: float | None = None
    summary: str = ""
    description: str = ""

    @property
    def key(self) -> Key:
        return (self.rule, self.labels)

    def label_dict(self) -> dict[str, str]:
        return {"alertname": self.rule, "severity": self.severity, **dict(self.labels)}


State = dict[Key, Alert]


def _g(v: float) -> str:
    """Go's %.4g."""
    return f"{v:.4g}"


def humanize(v: float) -> str:
    """Prometheus' `humanize`: SI prefixes, 4 significant digits."""
    if v == 0 or math.isnan(v) or math.isinf(v):
        return _g(v)
    prefix = ""
    if abs(v) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000:
                break
            prefix, v = p, v / 1000
    else:
        for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
            if abs(v) >= 1:
                break
            prefix, v = p, v * 1000
    return _g(v) + prefix


def humanize_duration(v: float) -> str:
    """Prometheus' `humanizeDuration`: '1d 2h 3m 4s', '20m 0s', '42s', '250ms'."""
    if math.isnan(v) or math.isinf(v):
        return _g(v)
    sign = "-" if v < 0 else ""
    v = abs(v)
    if v < 1:
        if v == 0:
            return f"{sign}0s"
        for unit, factor in (("ms", 1e3), ("us", 1e6), ("ns", 1e9), ("ps", 1e12)):
            if v * factor >= 1 or unit == "ps":
                return f"{sign}{_g(v * factor)}{unit}"
    whole = int(v)
    seconds, minutes = whole % 60, (whole // 60) % 60
    hours, days = (whole // 3600) % 24, whole // 86400
    if days:
        return f"{sign}{days}d {hours}h {minutes}m {seconds}s"
    if hours:
        return f"{sign}{hours}h {minutes}m {seconds}s"
    if minutes:
        return f"{sign}{minutes}m {seconds}s"
    return f"{sign}{_g(v)}s"


FUNCTIONS: dict[str, Callable[[float], str]] = {
    "": lambda v: repr(float(v)).removesuffix(".0"),  # Go's %v
    "humanize": humanize,
    "humanizeDuration": humanize_duration,
    "humanizePercentage": lambda v: _g(v * 100) + "%",
}


def render(template: str, labels: Labels, value: float) -> str:
    """Expand Prometheus-style `{{ $labels.x }}` and `{{ $value }}` (optionally piped into
    humanize, humanizeDuration or humanizePercentage), as Prometheus would."""
    lab = dict(labels)

    def sub(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            return lab.get(m.group(1), "")
        return FUNCTIONS[m.group(2) or ""](value)

    return _TEMPLATE.sub(sub, template)


def evaluate(
    rules: Iterable[Rule],
    signals: Mapping[str, list[Observation]],
    previous: Mapping[Key, Alert],
    now: float,
) -> State:
    """The new state: pending, firing, and just-resolved alerts (see the module doc)."""
    new: State = {}
    for rule in rules:
        seen: set[Labels] = set()
        for obs in signals.get(rule.signal, []):
            seen.add(obs.labels)
            alert = _step(rule, previous.get((rule.name, obs.labels)), obs, now)
            if alert is not None:
                new[alert.key] = alert
        for key, prev in previous.items():
            if key[0] == rule.name and key[1] not in seen and prev.status == "firing":
                new[key] = replace(prev, status="resolved", resolved_at=now)  # no data
    return new


def _step(rule: Rule, prev: Alert | None, obs: Observation, now: float) -> Alert | None:
    if prev is not None and prev.status == "resolved":
        prev = None
    text = {
        "summary": render(rule.summary, obs.labels, obs.value),
        "description": render(rule.description, obs.labels, obs.value),
    }
    if prev is None or prev.status == "pending":
        if not rule.breached(obs.value):
            return None
        since = now if prev is None else prev.active_since
        firing = now - since >= rule.for_seconds
        return Alert(
            rule.name,
            obs.labels,
            "firing" if firing else "pending",
            rule.severity,
            obs.value,
            since,
            fired_at=now if firing else None,
            **text,
        )
    if rule.still_firing(obs.value):
        return replace(prev, value=obs.value, **text)
    return replace(prev, status="resolved", value=obs.value, resolved_at=now, **text)


def transitions(previous: Mapping[Key, Alert], new: Mapping[Key, Alert]) -> list[Alert]:
    """Alerts to notify: those that started firing or were resolved in this step."""
    out = []
    for key, alert in new.items():
        before = previous.get(key)
        was_firing = before is not None and before.status == "firing"
        if (alert.status == "firing" and not was_firing) or (
            alert.status == "resolved" and was_firing
        ):
            out.append(alert)
    return sorted(out, key=lambda a: a.key)
