"""Cardinality limits: a producer inventing hosts, GPUs, series or labels is refused past the
limit with a named 4xx, counted, and /metrics stays bounded; silent nodes leave /metrics.
SQLite and PostgreSQL (the known nodes are read from the database)."""

from __future__ import annotations

import re
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


def test_a_producer_inventing_hosts_is_refused_past_the_limit(database_url: str) -> None:
    clock = [T0 + 60]
    client = _client(database_url, clock, limit_nodes_per_facility=5)
    for n in range(5):  # five real nodes, each with its agent
        r = client.post(
            "/api/v1/ingest", content=_node_batch(f"a{n}", 1, f"wn{n}", T0), headers=AUTH
        )
        assert r.status_code == 200, r.text
    r = client.post("/api/v1/ingest", content=_node_batch("a9", 1, "wn9", T0), headers=AUTH)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail["field"] == "$.series[0].labels.node"
    assert "facility 'af' has 5 nodes and this batch adds 1 ('wn9', ...)" in detail["message"]
    assert "AFMON_LIMIT_NODES_PER_FACILITY" in detail["message"]
    # line protocol: one request inventing 200 hosts is refused as a whole
    ns = int(T0 * 1e9)
    body = "\n".join(f"afmon,host=fake{h},user=u user_cpu_seconds=1 {ns}" for h in range(200))
    r = client.post("/api/v2/write?precision=ns", content=body, headers=AUTH)
    assert r.status_code == 422 and r.json()["code"] == "over limit", r.text
    assert "over the limit of 5" in r.json()["message"]
    # OTLP the same
    otlp = {"resourceMetrics": [{
        "resource": {"attributes": [{"key": "host.name", "value": {"stringValue": "otlp-host"}}]},
        "scopeMetrics": [{"metrics": [{"name": "node_cpu_cores", "unit": "{cpu}", "gauge": {
            "dataPoints": [{"timeUnixNano": str(ns), "asDouble": 4.0}]}}]}],
    }]}  # fmt: skip
    r = client.post("/v1/metrics", json=otlp, headers=AUTH)
    assert r.status_code == 422, r.text
    assert "AFMON_LIMIT_NODES_PER_FACILITY" in r.json()["message"]
    # known nodes go on as before, and every refusal was counted
    r = client.post("/api/v1/ingest", content=_node_batch("a0", 2, "wn0", T0 + 10), headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "applied"
    assert _outcome(client, "over_limit") == 3.0
    shown = _nodes_in_metrics(client)
    assert shown and all(nodes == {f"wn{n}" for n in range(5)} for nodes in shown.values())


def test_gpu_series_and_label_limits(database_url: str) -> None:
    clock = [T0 + 60]
    client = _client(database_url, clock, limit_gpus_per_facility=4, limit_series_per_batch=10,
                     limit_labels_per_series=3)  # fmt: skip
    ok = client.post("/api/v1/ingest", content=_node_batch("a", 1, "g1", T0, gpus=4), headers=AUTH)
    assert ok.status_code == 200, ok.text
    r = client.post("/api/v1/ingest", content=_node_batch("b", 1, "g2", T0, gpus=1), headers=AUTH)
    assert r.status_code == 422
    assert r.json()["detail"]["field"] == "$.series[2].labels.gpu"
    assert (
        "has 4 GPUs and this batch adds 1 ('GPU-g2-0' on 'g2', ...)"
        in r.json()["detail"]["message"]
    )
    r = client.post(
        "/api/v1/ingest", content=_node_batch("c", 1, "g1", T0 + 5, gpus=9), headers=AUTH
    )
    assert r.status_code == 422 and r.json()["detail"]["field"] == "$.series"
    assert "11 series in one batch, over the limit of 10" in r.json()["detail"]["message"]
    wide = wire.Series(metric="m", unit="u", kind="gauge", times=[T0], values=[1.0],
                       labels={"node": "g1", "a": "1", "b": "2", "c": "3"})  # fmt: skip
    batch = wire.Batch(version=1, agent_id="d", facility="af", node="g1", seq=1, sent_at=T0,
                       series=[wide])  # fmt: skip
    r = client.post("/api/v1/ingest", content=wire.encode(batch), headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"]["field"] == "$.series[0].labels"
    assert "has 4 labels, over the limit of 3" in r.json()["detail"]["message"]
    assert _outcome(client, "over_limit") == 3.0
    # nothing of a refused batch was written: its agent's next batch is its first
    r = client.post("/api/v1/ingest", content=_node_batch("b", 1, "g1", T0 + 9), headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "applied"


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
