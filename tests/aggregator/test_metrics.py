"""/metrics: parses with prometheus_client, passes promtool, carries no user label."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from aggregator.app import create_app
from aggregator.settings import ServerSettings
from collectors.simulator import FacilitySimulator, Poster, backfill

END = 1_790_006_400.0


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
    )
    client = TestClient(create_app(settings, with_dashboard=False, clock=lambda: END))
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
