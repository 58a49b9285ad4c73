"""The pure evaluate(): every packaged rule fires on a simulated breach and resolves after."""

from __future__ import annotations

import pytest

from afmon.aggregator.query.signals import Observation
from afmon.alerts.evaluate import evaluate, render, transitions
from afmon.alerts.rules import Rule, load_rules

RULES = load_rules()
T0 = 1_790_000_000.0
LABELS = {"facility": "af", "node": "n1"}


def _levels(rule: Rule) -> tuple[float, float, float]:
    """A breaching value, one between clear and threshold (or the threshold), one cleared."""
    step = max(1.0, abs(rule.threshold)) * 0.5
    breach = rule.threshold + step
    clear = rule.clear_level - step
    middle = (rule.threshold + rule.clear_level) / 2
    return breach, middle, clear


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_each_rule_fires_after_for_and_resolves_below_clear(rule: Rule) -> None:
    breach, middle, clear = _levels(rule)

    def step(state: dict, value: float, t: float) -> tuple[dict, list]:
        signals = {rule.signal: [Observation.of(value, **LABELS)]}
        new = evaluate([rule], signals, state, t)
        return new, transitions(state, new)

    # breach starts: pending (or firing at once when `for` is 0)
    state, changed = step({}, breach, T0)
    [alert] = state.values()
    if rule.for_seconds:
        assert alert.status == "pending" and changed == []
        state, changed = step(state, breach, T0 + rule.for_seconds / 2)
        assert [a.status for a in state.values()] == ["pending"] and changed == []
        state, changed = step(state, breach, T0 + rule.for_seconds)
        [alert] = state.values()
    assert alert.status == "firing" and alert.fired_at == T0 + rule.for_seconds
    assert alert.active_since == T0 and [a.status for a in changed] == ["firing"]
    assert alert.label_dict() == {"alertname": rule.name, "severity": rule.severity, **LABELS}
    assert "{{" not in alert.summary + alert.description
    # hysteresis: between clear and threshold it keeps firing, without a new notification
    if rule.clear is not None:
        state, changed = step(state, middle, T0 + rule.for_seconds + 60)
        assert [a.status for a in state.values()] == ["firing"] and changed == []
    state, changed = step(state, breach, T0 + rule.for_seconds + 90)
    assert [a.status for a in state.values()] == ["firing"] and changed == []
    # cleared: resolved once, then gone
    state, changed = step(state, clear, T0 + rule.for_seconds + 120)
    [alert] = state.values()
    assert alert.status == "resolved" and alert.resolved_at == T0 + rule.for_seconds + 120
    assert [a.status for a in changed] == ["resolved"]
    state, changed = step(state, clear, T0 + rule.for_seconds + 180)
    assert state == {} and changed == []


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_no_data_never_fires(rule: Rule) -> None:
    state = evaluate([rule], {rule.signal: []}, {}, T0)
    assert evaluate([rule], {}, state, T0 + 86400) == {}


def test_a_short_breach_never_fires_and_each_label_set_is_its_own_alert() -> None:
    rule = next(r for r in RULES if r.name == "AfmonGpuIdleButHeld")
    idle = [Observation.of(1, facility="af", node="n1", gpu="a")]
    both = idle + [Observation.of(1, facility="af", node="n1", gpu="b")]
    state = evaluate([rule], {rule.signal: both}, {}, T0)
    assert len(state) == 2
    state = evaluate([rule], {rule.signal: idle}, state, T0 + 600)  # b is busy again (no obs)
    state = evaluate([rule], {rule.signal: idle}, state, T0 + 1800)
    assert [(dict(a.labels)["gpu"], a.status) for a in state.values()] == [("a", "firing")]


def test_a_firing_alert_whose_series_vanishes_resolves() -> None:
    rule = next(r for r in RULES if r.name == "AfmonAgentSilent")
    state = evaluate([rule], {rule.signal: [Observation.of(900, **LABELS)]}, {}, T0)
    new = evaluate([rule], {rule.signal: []}, state, T0 + 60)
    assert [(a.status, a.resolved_at) for a in transitions(state, new)] == [("resolved", T0 + 60)]


def test_templates_render_as_prometheus_does() -> None:
    labels = (("node", "n1"),)
    assert render("{{ $labels.node }} at {{$value}} {{ $labels.gpu }}", labels, 1200.0) == (
        "n1 at 1200 "
    )
    assert [
        render("{{ $value | humanize }}", (), v) for v in (1200.0, 29.000000000000004, 0.25)
    ] == ["1.2k", "29", "250m"]
    assert render("{{ $value | humanizePercentage }}", (), 0.25) == "25%"
    assert [render("{{ $value|humanizeDuration }}", (), v) for v in (1200, 90061, 42, 0.25)] == [
        "20m 0s",
        "1d 1h 1m 1s",
        "42s",
        "250ms",
    ]
