"""Rule files are data validated against a schema; bad ones get errors naming rule and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from afmon.alerts.rules import RuleError, load_rules, parse_duration, parse_rules

GOOD = """
rules:
  - name: AfmonAgentSilent
    signal: agent_silence_seconds
    op: ">"
    threshold: 600
    clear: 120
    for: 2m
    severity: critical
    summary: "silent {{ $labels.node }}"
    description: "for {{ $value }} s"
    prometheus: "time() - afmon_agent_last_seen_timestamp_seconds"
"""


def test_packaged_rules_cover_the_issue() -> None:
    rules = {r.name: r for r in load_rules()}
    assert set(rules) == {
        "AfmonTimeToSessionSLO",
        "AfmonTimeToFirstWorkerSLO",
        "AfmonTimeToScaleUpSLO",
        "AfmonGpuIdleButHeld",
        "AfmonGpuHoarding",
        "AfmonAgentSilent",
        "AfmonAgentSpoolGrowing",
        "AfmonIngestRejections",
        "AfmonIngestWriteFailing",
        "AfmonUnmappedUsage",
        "AfmonTsdbOutboxBehind",
        "AfmonFederationStale",
        "AfmonGpuHeldTooLong",
    }
    assert rules["AfmonTimeToSessionSLO"].threshold == 10  # the seed's O(seconds) target
    assert rules["AfmonGpuIdleButHeld"].for_seconds == 1800
    # exported as the live-state gauge of afmon's own evaluation (per facility, no users)
    assert rules["AfmonGpuHoarding"].prometheus == "max by (facility) (afmon_signal_gpu_hoarders)"
    behind = rules["AfmonTsdbOutboxBehind"]
    assert (behind.signal, behind.threshold, behind.clear_level, behind.for_seconds) == (
        "tsdb_outbox_age_seconds",
        600,
        120,
        600,
    )


def test_a_good_file_parses() -> None:
    [rule] = parse_rules(GOOD)
    assert (rule.for_seconds, rule.clear_level, rule.breached(601), rule.still_firing(121)) == (
        120.0,
        120.0,
        True,
        True,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("signal: agent_silence_seconds", "signal: nope"),
            "field signal: Value error, unknown signal 'nope'",
        ),
        (("for: 2m", "for: 2 minutes"), "field for: Value error, '2 minutes' is not a duration"),
        (("threshold: 600", "threshold: lots"), "field threshold: Input should be a valid number"),
        (("clear: 120", "clear: 700"), "clear 700.0 must be at or below the threshold 600.0"),
        (('op: ">"', 'op: "=>"'), "field op: Input should be '>', '>=', '<' or '<='"),
        (
            ("afmon_agent_last_seen_timestamp_seconds", "afmon_no_such_metric"),
            "uses metrics not in the catalog: afmon_no_such_metric",
        ),
        (("severity: critical", "severity: urgent"), "field severity"),
        (("    for: 2m\n", "    for: 2m\n    colour: red\n"), "field colour: Extra inputs"),
    ],
)
def test_bad_rules_are_named(change: tuple[str, str], message: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_rules(GOOD.replace(*change), "site.yaml")
    assert str(err.value).startswith("site.yaml: rule AfmonAgentSilent (rules[0])")
    assert message in str(err.value)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="not valid YAML"):
        parse_rules("rules: [", "x.yaml")
    with pytest.raises(RuleError, match="repeated: AfmonAgentSilent"):
        parse_rules(GOOD + GOOD.replace("rules:\n", ""), "x.yaml")
    with pytest.raises(RuleError, match="field rules: Field required"):
        parse_rules("{}", "x.yaml")
    with pytest.raises(RuleError, match="cannot read"):
        load_rules(tmp_path / "missing.yaml")


def test_durations() -> None:
    assert [parse_duration(d) for d in ("0s", "90s", "10m", "1h30m")] == [0, 90, 600, 5400]
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("")
