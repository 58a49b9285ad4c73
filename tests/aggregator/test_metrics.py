"""/metrics: parses with prometheus_client, passes promtool, carries no user label."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.metrics import catalog as metric_catalog
from afmon.aggregator.metrics.exporter import Family, render_families
from afmon.aggregator.store.tsdb import Outbox
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from afmon.collectors.simulator import FacilitySimulator, Poster, backfill

END = 1_790_006_400.0
ROOT = Path(__file__).resolve().parents[2]
SCRAPE_TOKEN = "scrape-token-of-the-test-prometheus-0123"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    tmp = tmp_path_factory.mktemp("metrics")
    sim = FacilitySimulator(
        facility="af", nodes=2, members_per_vo=2, seed=5, sessions_per_member_day=8
    )
    identity = tmp / "identity.toml"
    identity.write_text(sim.identity_toml())
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp}/m.sqlite",
        identity_file=identity,
        facility_tokens={"af": "t"},
        metrics_token=SCRAPE_TOKEN,
    )
    client = TestClient(create_app(settings, with_dashboard=False, clock=lambda: END))
    client.headers["Authorization"] = f"Bearer {SCRAPE_TOKEN}"  # as the scraper sends it
    backfill(sim, Poster("http://testserver", "t", client), END - 3 * 3600, END, report=None)
    return client


def test_exposition_parses_and_carries_bounded_labels(client: TestClient) -> None:
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    cpu = families["afmon_usage_cpu_seconds"]
    assert cpu.type == "counter"
    vos = {s.labels["vo"] for s in cpu.samples}
    assert vos == {"atlas", "cms", "lhcb", "unmapped"}
    assert sum(s.value for s in cpu.samples) > 0
    nodes = families["afmon_node_cpu_cores"].samples
    assert {(s.labels["node"], s.value) for s in nodes} == {
        ("sim-node001", 64.0),
        ("sim-node002", 64.0),
    }
    for family in families.values():
        for sample in family.samples:
            assert not {"user", "member", "member_id", "subject"} & set(sample.labels)


def test_openmetrics_by_content_negotiation(client: TestClient) -> None:
    r = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


def test_promtool_check_metrics_is_clean(client: TestClient) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus package"
    r = subprocess.run(
        [promtool, "check", "metrics"],
        input=client.get("/metrics").text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stdout + r.stderr


# -- the catalog and the fast renderer ----------------------------------------------------


def _gpu_batch(seq: int, t: float) -> wire.Batch:
    """What a GPU node's agent sends: device busy ratios and who holds which GPU."""

    def series(metric: str, labels: dict[str, str], value: float) -> wire.Series:
        unit, kind = wire.KNOWN_METRICS[metric]
        return wire.Series(metric, unit, kind, labels, [t], [value])

    return wire.Batch(
        version=wire.WIRE_VERSION,
        agent_id="gpu-agent",
        facility="af",
        node="gpu-node1",
        seq=seq,
        sent_at=t,
        series=[
            series("gpu_utilization_ratio", {"node": "gpu-node1", "gpu": "GPU-a"}, 0.75),
            series("gpu_utilization_ratio", {"node": "gpu-node1", "gpu": "GPU-b"}, 0.0),
            series("gpu_held", {"node": "gpu-node1", "gpu": "GPU-a", "user": "atlas001"}, 1),
            series("gpu_held", {"node": "gpu-node1", "gpu": "GPU-b", "user": "atlas001"}, 0),
            series("gpu_held", {"node": "gpu-node1", "gpu": "GPU-b", "user": "cms001"}, 1),
            series("agent_spool_batches", {"node": "gpu-node1"}, 3),
        ],
    )


@pytest.fixture(scope="module")
def gpu_client(client: TestClient) -> TestClient:
    Poster("http://testserver", "t", client).post(_gpu_batch(1, END - 60))
    client.app.state.services.registry.ledger.invalidate()
    return client


def test_gpu_and_spool_families_carry_no_user(gpu_client: TestClient) -> None:
    families = {f.name: f for f in text_string_to_metric_families(gpu_client.get("/metrics").text)}
    held = {(s.labels["gpu"], s.value) for s in families["afmon_gpu_held"].samples}
    assert held == {("GPU-a", 1.0), ("GPU-b", 1.0)}  # GPU-b: released by one, held by another
    util = {(s.labels["gpu"], s.value) for s in families["afmon_gpu_utilization_ratio"].samples}
    assert util == {("GPU-a", 0.75), ("GPU-b", 0.0)}
    spool = families["afmon_agent_spool_batches"].samples
    assert [(s.labels, s.value) for s in spool] == [({"facility": "af", "node": "gpu-node1"}, 3)]


def _outbox_values(exposition: str) -> dict[str, tuple[dict[str, str], float]]:
    return {
        f.name: (s.labels, s.value)
        for f in text_string_to_metric_families(exposition)
        if f.name.startswith("afmon_tsdb_outbox_")
        for s in f.samples
    }


def test_outbox_families_count_the_staged_rows(gpu_client: TestClient) -> None:
    """Rows staged by the ingest's own Outbox (as with AFMON_TSDB_URL and the store down) are
    counted without labels; an empty outbox reads 0 and has no oldest timestamp."""
    services = gpu_client.app.state.services
    assert _outbox_values(gpu_client.get("/metrics").text) == {
        "afmon_tsdb_outbox_batches": ({}, 0.0),
        "afmon_tsdb_outbox_samples": ({}, 0.0),
    }
    head = "afmon,facility=af,node=n1 node_cpu_busy_ratio="
    outbox = Outbox(services.engine)
    try:
        with services.engine.begin() as conn:
            outbox.stage(conn, [(head, [END - 130, END - 120], [0.5, 0.25])], 2, END - 100)
            outbox.stage(conn, [(head, [END - 70, END - 60, END - 50], [0.5, 0.5, 0.5])], 3, END)
        services.registry.ledger.invalidate()
        exposition = gpu_client.get("/metrics").text
        assert _outbox_values(exposition) == {
            "afmon_tsdb_outbox_batches": ({}, 2.0),
            "afmon_tsdb_outbox_samples": ({}, 5.0),
            "afmon_tsdb_outbox_oldest_timestamp_seconds": ({}, END - 100),
        }
        assert "\nafmon_tsdb_outbox_batches 2.0\n" in exposition  # no `{}` without labels
        om = gpu_client.get("/metrics", headers={"Accept": "application/openmetrics-text"}).text
        assert _om_samples(om) == _om_samples(openmetrics_latest(services.registry).decode())
    finally:
        with services.engine.begin() as conn:
            conn.execute(text("DELETE FROM tsdb_outbox"))
        services.registry.ledger.invalidate()


def _samples(exposition: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for f in text_string_to_metric_families(exposition)
        for s in f.samples
    }


def _om_samples(exposition: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for f in om_parse(exposition)
        for s in f.samples
    }


def test_fast_render_equals_prometheus_client_on_the_same_registry(gpu_client: TestClient) -> None:
    registry = gpu_client.app.state.services.registry
    ours = gpu_client.get("/metrics").text
    assert _samples(ours) == _samples(generate_latest(registry).decode())
    om = gpu_client.get("/metrics", headers={"Accept": "application/openmetrics-text"}).text
    assert _om_samples(om) == _om_samples(openmetrics_latest(registry).decode())
    assert om.count("# EOF") == 1


def test_every_exposed_family_is_a_live_catalog_entry(gpu_client: TestClient) -> None:
    exposed = {f.name for f in text_string_to_metric_families(gpu_client.get("/metrics").text)}
    assert exposed <= {s.name for s in metric_catalog.live()}
    assert {"afmon_usage_cpu_seconds", "afmon_gpu_held", "afmon_ingest_batches"} <= exposed
    for spec in metric_catalog.CATALOG.values():
        assert not set(spec.labels) & metric_catalog.FORBIDDEN_LABELS, spec.name
        assert spec.name.startswith("afmon_") and not spec.name.endswith("_total")


def test_render_escapes_label_values() -> None:
    fam = Family(metric_catalog.spec("afmon_node_cpu_cores"), [(('a"f', "n\\1\nx"), 2.0)])
    text = render_families([fam])
    [sample] = [s for f in text_string_to_metric_families(text) for s in f.samples]
    assert sample.labels == {"facility": 'a"f', "node": "n\\1\nx"} and sample.value == 2.0


def test_docs_show_the_current_catalog() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    assert metric_catalog.render_doc(doc) == doc, (
        "docs/metrics.md is stale: run `python -m afmon.aggregator.metrics.catalog docs/metrics.md`"
    )
