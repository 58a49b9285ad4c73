"""/metrics is protected outside demo mode: a real Prometheus scrapes it with the scrape
configs of docs/security.md (bearer token from a file, basic auth); anonymous and wrong
credentials are refused; what it exposes can be limited to operational families."""

from __future__ import annotations

import base64
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.metrics.catalog import spec
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from tests.prometheus_server import running_prometheus


def _targets(url: str) -> dict[str, dict[str, Any]]:
    """Prometheus' own record of each scrape job: health and last error (any answer is
    tolerated while it starts)."""
    try:
        r = httpx.get(f"{url}/api/v1/targets", timeout=10)
        body = r.json() if r.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}
    active = body.get("data", {}).get("activeTargets", []) if isinstance(body, dict) else []
    return {t["labels"]["job"]: t for t in active}


def test_a_real_prometheus_scrapes_with_the_documented_configs(
    server_factory, tmp_path: Path
) -> None:
    token, password = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    server = server_factory(
        local_mode="false",
        dashboard="false",
        metrics_token=token,
        metrics_username="prometheus",
        metrics_password=password,
    )
    now = time.time()
    batch = wire.Batch(version=1, agent_id="a", facility=server.facility, node="wn01", seq=1,
                       sent_at=now)  # fmt: skip
    r = httpx.post(f"{server.url}/api/v1/ingest", content=wire.encode(batch),
                   headers={"Authorization": f"Bearer {server.token}"})  # fmt: skip
    assert r.status_code == 200
    (tmp_path / "scrape-token").write_text(token)
    (tmp_path / "scrape-password").write_text(password)
    target = {"static_configs": [{"targets": [server.url.removeprefix("http://")]}]}
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            {"job_name": "bearer", **target,
             "authorization": {"credentials_file": str(tmp_path / "scrape-token")}},
            {"job_name": "basic", **target,
             "basic_auth": {"username": "prometheus",
                            "password_file": str(tmp_path / "scrape-password")}},
            {"job_name": "anonymous", **target},
            {"job_name": "wrong-token", **target,
             "authorization": {"credentials": "not-the-token"}},
        ],
    }  # fmt: skip
    with running_prometheus(tmp_path, config) as prom:
        deadline = time.monotonic() + 90
        jobs: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            prom.alive()
            jobs = _targets(prom.url)
            if len(jobs) == 4 and all(t["health"] != "unknown" for t in jobs.values()):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"Prometheus did not scrape every job within 90 s: {jobs}")
        assert jobs["bearer"]["health"] == "up", jobs["bearer"]["lastError"]
        assert jobs["basic"]["health"] == "up", jobs["basic"]["lastError"]
        for refused in ("anonymous", "wrong-token"):
            assert jobs[refused]["health"] == "down"
            assert "401" in jobs[refused]["lastError"], jobs[refused]["lastError"]
        # the scraped samples are afmon's: the ingest counter of the batch above
        expr = 'afmon_ingest_batches_total{job="bearer",outcome="applied"}'
        deadline = time.monotonic() + 30
        result: list[Any] = []
        while not result and time.monotonic() < deadline:
            result = _query(prom.url, expr)
            time.sleep(0.5)
        assert [float(x["value"][1]) for x in result] == [1.0]


def _query(url: str, expr: str) -> list[Any]:
    """An instant query's result, or [] on any other answer (Prometheus starting up)."""
    try:
        r = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
        return r.json().get("data", {}).get("result", []) if r.status_code == 200 else []
    except (httpx.HTTPError, ValueError):
        return []


def _app(tmp_path: Path, **settings: Any) -> TestClient:
    s = ServerSettings(database_url=f"sqlite:///{tmp_path}/s.sqlite", **settings)
    return TestClient(create_app(s, with_dashboard=False))


def test_refusals_say_what_to_configure(tmp_path: Path) -> None:
    client = _app(tmp_path)  # outside demo mode, nothing configured: closed
    r = client.get("/metrics")
    assert r.status_code == 401 and "AFMON_METRICS_TOKEN" in r.json()["detail"]
    assert client.get("/healthz").status_code == 200  # the probe stays open
    client = _app(tmp_path, metrics_username="p", metrics_password="pw-of-the-scraper")
    basic = base64.b64encode(b"p:wrong").decode()
    r = client.get("/metrics", headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 401 and r.json()["detail"] == "wrong scrape username or password"
    assert r.headers["www-authenticate"].startswith("Basic")
    r = client.get("/metrics", headers={"Authorization": "Basic !!!"})
    assert r.status_code == 401 and r.json()["detail"] == "malformed basic credentials"
    good = base64.b64encode(b"p:pw-of-the-scraper").decode()
    assert client.get("/metrics", headers={"Authorization": f"Basic {good}"}).status_code == 200
    assert _app(tmp_path, local_mode=True).get("/metrics").status_code == 200  # the demo
    assert _app(tmp_path, metrics_public=True).get("/metrics").status_code == 200
    with pytest.raises(ValueError, match="go together"):
        ServerSettings(metrics_username="p")


def test_operational_only_leaves_out_every_per_vo_family(tmp_path: Path) -> None:
    now = time.time()
    series = wire.Series(metric="user_cpu_seconds", unit="seconds", kind="counter",
                         labels={"user": "alice", "node": "wn01"}, times=[now - 60, now - 30],
                         values=[0.0, 30.0], created=now - 60)  # fmt: skip
    events = [wire.Event("spawn", "s1", "alice", now - 50, now - 40)]
    batch = wire.Batch(version=1, agent_id="a", facility="af", node="wn01", seq=1,
                       sent_at=now, series=[series], events=events)  # fmt: skip
    names: dict[bool, set[str]] = {}
    for per_vo in (True, False):
        client = _app(tmp_path / str(per_vo), facility_tokens={"af": "t"}, metrics_public=True,
                      metrics_per_vo=per_vo)  # fmt: skip
        r = client.post("/api/v1/ingest", content=wire.encode(batch),
                        headers={"Authorization": "Bearer t"})  # fmt: skip
        assert r.status_code == 200
        text = client.get("/metrics").text
        names[per_vo] = {f.name for f in text_string_to_metric_families(text)}
        if not per_vo:
            assert 'vo="' not in text
    assert {n for n in names[True] if n.startswith("afmon_usage_")}  # present by default
    per_vo_families = {n for n in names[True] if "vo" in spec(n).labels}
    assert {"afmon_time_to_session_seconds", "afmon_usage_cpu_seconds"} <= per_vo_families
    assert names[False] == names[True] - per_vo_families
    assert "afmon_agent_last_seen_timestamp_seconds" in names[False]
