"""What the exported rules read on /metrics: every alert signal as a gauge equal to what
afmon's evaluator computes, and the ingest counters at 0 for every known facility and
outcome/reason before the first event (so that increase() sees the first one)."""

from __future__ import annotations

import ast
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.metrics.catalog import (
    INGEST_OUTCOMES,
    REFUSAL_REASONS,
    SIGNAL_GAUGES,
    WRITE_FAILURE_REASONS,
    signal_metric_name,
)
from afmon.aggregator.metrics.exporter import IngestMetrics
from afmon.aggregator.query.signals import SIGNALS, compute
from afmon.aggregator.web.app import create_app
from afmon.alerts.export import exportable
from afmon.alerts.rules import load_rules
from afmon.collectors.simulator import FacilitySimulator, Poster, backfill

ROOT = Path(__file__).resolve().parents[2]
END = 1_790_006_400.0


# Ages of a timestamp: their rules read time() minus the timestamp's gauge instead.
AGES = {
    "agent_silence_seconds": "afmon_agent_last_seen_timestamp_seconds",
    "tsdb_outbox_age_seconds": "afmon_tsdb_outbox_oldest_timestamp_seconds",
    "federation_staleness_seconds": "afmon_federation_source_last_hour_timestamp_seconds",
}


def test_every_database_signal_is_exported_as_afmon_computes_it() -> None:
    gauges = [name for name, *_ in SIGNAL_GAUGES]
    assert gauges == [s for s in SIGNALS if s not in AGES]
    for rule in exportable(load_rules()):
        assert rule.prometheus is not None
        if rule.signal in gauges:
            assert signal_metric_name(rule.signal) in rule.prometheus, rule.name
        elif rule.signal in AGES:
            assert "time() - " in rule.prometheus and AGES[rule.signal] in rule.prometheus
        else:  # the process signals: increase() over the ingest counters
            assert "increase(afmon_ingest_" in rule.prometheus, rule.name


def _reasons_in(path: Path) -> set[str]:
    """Reason codes written in a module: a Refusal's 4th argument, an OtlpError's 3rd, a
    `reason=` keyword, and the middle of a (field, reason, message) problem triple."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            at = {"Refusal": 3, "OtlpError": 2}.get(name)
            args = list(node.args)
            if at is not None and len(args) > at and isinstance(args[at], ast.Constant):
                out.add(args[at].value)
            for kw in node.keywords:
                if kw.arg == "reason" and isinstance(kw.value, ast.Constant):
                    out.add(kw.value.value)
        elif isinstance(node, ast.Tuple) and len(node.elts) == 3:
            first, middle, _ = node.elts
            if isinstance(first, ast.JoinedStr) and isinstance(middle, ast.Constant):
                out.add(middle.value)
    return {r for r in out if isinstance(r, str)}


def test_every_refusal_reason_in_the_code_is_listed() -> None:
    files = [ROOT / "collectors/wire.py", *sorted((ROOT / "aggregator/ingest").glob("*.py"))]
    found = set().union(*map(_reasons_in, files))
    assert {"malformed", "wrong_unit", "beyond_capacity", "no_user"} <= found  # the scan works
    assert found <= set(REFUSAL_REASONS), sorted(found - set(REFUSAL_REASONS))


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[str, ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.values()))): s.value
        for m in registry.collect()
        for s in m.samples
    }


def test_ingest_counters_start_at_zero_for_every_known_combination() -> None:
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry, ["af"])
    metrics.prime(["af", "bf"])  # twice for af: nothing changes
    got = _samples(registry)
    for f in ("af", "bf"):
        for outcome in INGEST_OUTCOMES:
            assert got[("afmon_ingest_batches_total", tuple(sorted((f, outcome))))] == 0
        for reason in REFUSAL_REASONS:
            assert got[("afmon_ingest_refused_records_total", tuple(sorted((f, reason))))] == 0
        for reason in WRITE_FAILURE_REASONS:
            assert got[("afmon_ingest_write_failures_total", tuple(sorted((f, reason))))] == 0
        assert got[("afmon_ingest_samples_total", (f,))] == 0
    assert got[("afmon_ingest_batches_total", ("unauthorized", "unknown"))] == 0


def test_metrics_show_the_signals_and_zeros_of_a_facility_in_the_database(
    tmp_path: Path,
) -> None:
    sim = FacilitySimulator(facility="af", nodes=2, members_per_vo=2, seed=3)
    identity = tmp_path / "identity.toml"
    identity.write_text(sim.identity_toml())
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path}/s.sqlite",
        identity_file=identity,
        facility_tokens={"af": "t"},
        local_mode=True,
    )
    app = create_app(settings, with_dashboard=False, clock=lambda: END)
    with TestClient(app) as client:
        backfill(sim, Poster("http://testserver", "t", client), END - 2 * 3600, END, report=None)
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        engine = app.state.services.engine
    refused = {
        s.labels["reason"]: s.value for s in families["afmon_ingest_refused_records"].samples
    }
    assert set(refused) == set(REFUSAL_REASONS) and set(refused.values()) == {0.0}
    outcomes = {s.labels["outcome"] for s in families["afmon_ingest_batches"].samples}
    assert outcomes >= set(INGEST_OUTCOMES)
    expected = compute(engine, END)
    for name, _unit, labels, _meaning in SIGNAL_GAUGES:
        family = families.get(signal_metric_name(name))
        got = {
            tuple(s.labels[lab] for lab in labels): s.value
            for s in (family.samples if family else [])
        }
        want = {tuple(dict(o.labels)[lab] for lab in labels): o.value for o in expected[name]}
        assert got == want, name
    assert families[signal_metric_name("unmapped_usage_ratio")].samples  # not all empty
