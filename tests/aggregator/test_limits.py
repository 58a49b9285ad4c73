"""Cardinality limits: a producer inventing hosts, GPUs or labels has those series refused past
the limit (quarantined, named, counted) while the rest applies, /metrics stays bounded, and a
replay after raising the limit lands each record once; too many series refuse a batch whole
(422); silent nodes leave /metrics. SQLite and PostgreSQL (known nodes come from the
database)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
TOKEN = "a-facility-token-for-the-limit-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _client(database_url: str, clock: list[float], **limits: Any) -> TestClient:
    settings = ServerSettings(
        database_url=database_url,
        facility_tokens={"af": TOKEN},
        metrics_public=True,
        ingest_rate_per_agent=1000.0,
        **limits,
    )
    return TestClient(create_app(settings, clock=lambda: clock[0], with_dashboard=False))


def _node_batch(agent: str, seq: int, node: str, t: float, gpus: int = 0) -> bytes:
    series = [
        wire.Series(metric="node_cpu_cores", unit="cores", kind="gauge",
                    labels={"node": node}, times=[t], values=[8.0]),
        wire.Series(metric="agent_spool_batches", unit="1", kind="gauge",
                    labels={"node": node}, times=[t], values=[0.0]),
    ] + [
        wire.Series(metric="gpu_utilization_ratio", unit="ratio", kind="gauge",
                    labels={"node": node, "gpu": f"GPU-{node}-{g}"}, times=[t], values=[0.5])
        for g in range(gpus)
    ]  # fmt: skip
    return wire.encode(
        wire.Batch(
            version=1, agent_id=agent, facility="af", node=node, seq=seq, sent_at=t, series=series
        )  # fmt: skip
    )


def _nodes_in_metrics(client: TestClient) -> dict[str, set[str]]:
    """Per-node family -> the nodes it shows."""
    out: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(client.get("/metrics").text):
        for s in fam.samples:
            if "node" in s.labels:
                out.setdefault(fam.name, set()).add(s.labels["node"])
    return out


def _outcome(client: TestClient, outcome: str) -> float:
    text = client.get("/metrics").text
    m = re.search(rf'afmon_ingest_batches_total{{facility="af",outcome="{outcome}"}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def _refused(client: TestClient, reason: str) -> float:
    text = client.get("/metrics").text
    m = re.search(
        rf'afmon_ingest_refused_records_total{{facility="af",reason="{reason}"}} (\S+)', text
    )
    return float(m.group(1)) if m else 0.0


def test_a_producer_inventing_hosts_is_refused_past_the_limit_then_replayed(
    database_url: str,
) -> None:
    clock = [T0 + 60]
    client = _client(database_url, clock, limit_nodes_per_facility=5)
    for n in range(5):  # five real nodes, each with its agent
        r = client.post(
            "/api/v1/ingest", content=_node_batch(f"a{n}", 1, f"wn{n}", T0), headers=AUTH
        )
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text
    r = client.post("/api/v1/ingest", content=_node_batch("a9", 1, "wn9", T0), headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "partial"
    first = r.json()["refused"][0]
    assert (first["field"], first["reason"]) == ("$.series[0].labels.node", "over_limit_nodes")
    assert (
        "node 'wn9' of series node_cpu_cores is new and facility 'af' already has 5"
        in (first["message"])
    )
    assert "AFMON_LIMIT_NODES_PER_FACILITY=5" in first["message"]
    # line protocol: one request inventing 200 hosts: every one of them refused
    ns = int(T0 * 1e9)
    body = "\n".join(f"afmon,host=fake{h},user=u user_cpu_seconds=1 {ns}" for h in range(200))
    r = client.post("/api/v2/write?precision=ns", content=body, headers=AUTH)
    assert r.status_code == 204 and r.headers["x-afmon-refused"] == "200", r.headers
    assert r.headers["x-afmon-refused-reason"].startswith("over_limit_nodes: $.series[")
    # OTLP: its own partial success
    otlp = {"resourceMetrics": [{
        "resource": {"attributes": [{"key": "host.name", "value": {"stringValue": "otlp-host"}}]},
        "scopeMetrics": [{"metrics": [{"name": "node_cpu_cores", "unit": "{cpu}", "gauge": {
            "dataPoints": [{"timeUnixNano": str(ns), "asDouble": 4.0}]}}]}],
    }]}  # fmt: skip
    r = client.post("/v1/metrics", json=otlp, headers=AUTH)
    assert r.status_code == 200, r.text
    partial = r.json()["partialSuccess"]
    assert partial["rejectedDataPoints"] == "1" and "otlp-host" in partial["errorMessage"]
    # known nodes go on as before; every refused record was counted; /metrics stays bounded
    r = client.post("/api/v1/ingest", content=_node_batch("a0", 2, "wn0", T0 + 10), headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "applied"
    assert _refused(client, "over_limit_nodes") == 2 + 200 + 1
    shown = _nodes_in_metrics(client)
    assert shown and all(nodes == {f"wn{n}" for n in range(5)} for nodes in shown.values())

    # the operator raises the limit and replays: every refused record lands, exactly once
    env = {**os.environ, "AFMON_DATABASE_URL": database_url,
           "AFMON_LIMIT_NODES_PER_FACILITY": "1000"}  # fmt: skip
    cli = [sys.executable, "-m", "afmon.aggregator.cli", "quarantine"]
    listed = subprocess.run([*cli, "list"], env=env, capture_output=True, text=True, check=True)
    assert re.search(r"af\s+over_limit_nodes\s+203", listed.stdout), listed.stdout
    done = subprocess.run([*cli, "replay", "--reason", "over_limit_nodes"], env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "replayed 203 records; 0 had been replayed before" in done.stdout
    again = subprocess.run([*cli, "replay"], env=env, capture_output=True, text=True, check=True)
    assert "replayed 0 records" in again.stdout
    client.app.state.services.registry.ledger.invalidate()
    with client.app.state.services.engine.connect() as conn:
        nodes = conn.exec_driver_sql("SELECT COUNT(DISTINCT node) FROM series").scalar_one()
        claims = conn.exec_driver_sql(
            "SELECT COUNT(*) FROM applied_batch WHERE agent_id = 'afmon/quarantine'"
        ).scalar_one()
    assert nodes == 5 + 1 + 200 + 1 and claims == 203
    assert set().union(*_nodes_in_metrics(client).values()) >= {"wn9", "otlp-host"}


def test_gpu_series_and_label_limits(database_url: str) -> None:
    clock = [T0 + 60]
    client = _client(database_url, clock, limit_gpus_per_facility=4, limit_series_per_batch=10,
                     limit_labels_per_series=3)  # fmt: skip
    ok = client.post("/api/v1/ingest", content=_node_batch("a", 1, "g1", T0, gpus=4), headers=AUTH)
    assert ok.status_code == 200 and ok.json()["status"] == "applied", ok.text
    r = client.post("/api/v1/ingest", content=_node_batch("b", 1, "g2", T0, gpus=1), headers=AUTH)
    assert r.json()["status"] == "partial"
    [refused] = r.json()["refused"]
    assert (refused["field"], refused["reason"]) == ("$.series[2].labels.gpu", "over_limit_gpus")
    assert "gpu 'GPU-g2-0' of series gpu_utilization_ratio is new" in refused["message"]
    # too many series: the one limit that refuses a batch whole
    r = client.post(
        "/api/v1/ingest", content=_node_batch("c", 1, "g1", T0 + 5, gpus=9), headers=AUTH
    )
    assert r.status_code == 422 and r.json()["detail"]["field"] == "$.series"
    assert "11 series in one batch, over the limit of 10" in r.json()["detail"]["message"]
    assert _outcome(client, "over_limit") == 1.0
    wide = wire.Series(metric="m", unit="u", kind="gauge", times=[T0], values=[1.0],
                       labels={"node": "g1", "a": "1", "b": "2", "c": "3"})  # fmt: skip
    batch = wire.Batch(version=1, agent_id="d", facility="af", node="g1", seq=1, sent_at=T0,
                       series=[wide])  # fmt: skip
    r = client.post("/api/v1/ingest", content=wire.encode(batch), headers=AUTH)
    assert r.json()["status"] == "partial"
    assert r.json()["refused"][0]["field"] == "$.series[0].labels"
    assert "has 4 labels, over the limit of 3" in r.json()["refused"][0]["message"]
    assert _refused(client, "too_many_labels") == 1.0
    # nothing of the batch refused whole was written: its agent's next batch is its first
    r = client.post("/api/v1/ingest", content=_node_batch("c", 1, "g1", T0 + 9), headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "applied"


def test_a_silent_node_frees_its_place(database_url: str) -> None:
    """The limit bounds the nodes active within AFMON_METRICS_NODE_SILENCE_SECONDS: cloud
    workers that come and go do not fill it up for ever."""
    clock = [T0 + 60]
    client = _client(database_url, clock, limit_nodes_per_facility=2,
                     metrics_node_silence_seconds=600)  # fmt: skip
    for n in range(2):
        r = client.post(
            "/api/v1/ingest", content=_node_batch(f"a{n}", 1, f"wn{n}", T0), headers=AUTH
        )
        assert r.json()["status"] == "applied"
    r = client.post("/api/v1/ingest", content=_node_batch("a2", 1, "wn2", T0 + 10), headers=AUTH)
    assert r.json()["status"] == "partial"  # two active nodes already
    clock[0] = T0 + 1000  # wn0 and wn1 silent for over 600 s
    r = client.post("/api/v1/ingest", content=_node_batch("a2", 2, "wn2", T0 + 990), headers=AUTH)
    assert r.json()["status"] == "applied", r.text
    r = client.post("/api/v1/ingest", content=_node_batch("a0", 2, "wn0", T0 + 995), headers=AUTH)
    assert r.json()["status"] == "applied"  # back: one of two places
    r = client.post("/api/v1/ingest", content=_node_batch("a3", 1, "wn3", T0 + 996), headers=AUTH)
    assert r.json()["status"] == "partial"  # wn0 and wn2 are active


def test_silent_nodes_leave_metrics(database_url: str) -> None:
    clock = [T0 + 60]
    client = _client(database_url, clock, metrics_node_silence_seconds=600)
    for node in ("old", "new"):
        r = client.post(
            "/api/v1/ingest", content=_node_batch(node, 1, node, T0, gpus=1), headers=AUTH
        )
        assert r.status_code == 200
    assert set().union(*_nodes_in_metrics(client).values()) == {"old", "new"}
    clock[0] = T0 + 900  # only "new" reports again
    r = client.post("/api/v1/ingest", content=_node_batch("new", 2, "new", T0 + 890, gpus=1),
                    headers=AUTH)  # fmt: skip
    assert r.status_code == 200
    client.app.state.services.registry.ledger.invalidate()
    shown = _nodes_in_metrics(client)
    assert {"afmon_node_cpu_cores", "afmon_agent_last_seen_timestamp_seconds",
            "afmon_agent_spool_batches", "afmon_gpu_utilization_ratio"} <= set(shown)  # fmt: skip
    assert all(nodes == {"new"} for nodes in shown.values()), shown
