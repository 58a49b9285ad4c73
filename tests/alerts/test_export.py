"""The exported Prometheus rules pass promtool, and promtool's unit tests fire and resolve each."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from afmon.alerts.evaluate import render
from afmon.alerts.export import exportable
from afmon.alerts.rules import load_rules

HERE = Path(__file__).resolve().parent
UNIT_TESTS = HERE / "prometheus_rules_test.yaml"


def _promtool() -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus package"
    return promtool


def _export(tmp_path: Path) -> Path:
    out = subprocess.run(
        [sys.executable, "-m", "afmon.aggregator.cli", "alerts", "export-prometheus"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    path = tmp_path / "rules.yml"
    path.write_text(out)
    return path


def test_export_passes_promtool_check_rules(tmp_path: Path) -> None:
    path = _export(tmp_path)
    r = subprocess.run(
        [_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 13 rules found" in r.stdout
    exported = {r["alert"]: r for r in yaml.safe_load(path.read_text())["groups"][0]["rules"]}
    rules = {r.name: r for r in exportable(load_rules())}
    assert set(exported) == set(rules)
    silent = exported["AfmonAgentSilent"]
    assert silent["expr"] == (
        "(time() - max by (facility, node) (afmon_agent_last_seen_timestamp_seconds)) > 600"
    )
    assert silent["labels"] == {"severity": "critical"} and "for" not in silent
    assert exported["AfmonGpuIdleButHeld"]["for"] == "30m"
    # one alert for the server, however many workers (instances) report the outbox
    assert exported["AfmonTsdbOutboxBehind"]["expr"] == (
        "((time() - min(afmon_tsdb_outbox_oldest_timestamp_seconds)) or vector(0)) > 600"
    )
    # signals from the database are read as afmon computes them, never from ledger totals
    assert exported["AfmonTimeToScaleUpSLO"]["expr"] == (
        "(max by (facility) (afmon_signal_time_to_scale_up_p95_seconds)) > 300"
    )
    assert not any("_bucket" in r["expr"] or "afmon_usage_" in r["expr"] for r in exported.values())


def test_promtool_unit_tests_fire_and_resolve_every_exported_alert(tmp_path: Path) -> None:
    _export(tmp_path)
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    r = subprocess.run(
        [_promtool(), "test", "rules", str(tmp_path / UNIT_TESTS.name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    tested = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    checks = [c for t in tested for c in t["alert_rule_test"]]
    fired = {c["alertname"] for c in checks if c["exp_alerts"]}
    resolved = {c["alertname"] for c in checks if not c["exp_alerts"]}
    names = {r.name for r in exportable(load_rules())}
    assert fired == names and resolved == names


def test_afmon_renders_annotations_as_prometheus_did() -> None:
    """The in-process notifier text equals what promtool expected for the same value."""
    rules = {r.name: r for r in load_rules()}
    silent = rules["AfmonAgentSilent"]
    labels = (("facility", "af"), ("node", "n1"))
    assert render(silent.description, labels, 1200.0) == (
        "The agent on n1 (af) has delivered nothing for 20m 0s."
    )
    unmapped = rules["AfmonUnmappedUsage"]
    assert render(unmapped.description, (("facility", "af"),), 0.25).startswith("25% of")
    behind = rules["AfmonTsdbOutboxBehind"]  # no labels: the outbox is the server's
    assert render(behind.description, (), 1500.0).startswith(
        "The oldest batch in the time-series outbox has waited 25m 0s: "
    )
