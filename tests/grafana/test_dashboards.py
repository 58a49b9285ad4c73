"""The shipped Grafana dashboards: valid dashboard models on catalog metrics only, in sync
with grafana/make_dashboards.py, and every PromQL expression answered with data by a real
Prometheus that scrapes a live afmon fed by the simulator."""

from __future__ import annotations

import importlib.util
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from afmon.aggregator.metrics.catalog import series_names
from afmon.alerts.export import exportable
from afmon.alerts.rules import load_rules
from afmon.collectors.simulator import FacilitySimulator, Poster, backfill
from tests.conftest import free_port
from tests.prometheus_server import running_prometheus

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
METRIC = re.compile(r"\b(afmon_[a-zA-Z0-9_]+)")
VARIABLES = {
    "$facility": ".*",
    "$vo": ".*",
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
}


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _targets() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr) of every target of every shipped dashboard."""
    return [
        (d["uid"], p["title"], t["expr"])
        for d in map(_load, DASHBOARDS)
        for p in d["panels"]
        for t in p["targets"]
    ]


def substitute(expr: str) -> str:
    for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def test_the_five_dashboards_are_shipped_and_in_sync_with_their_script() -> None:
    spec = importlib.util.spec_from_file_location("make_dashboards", GRAFANA / "make_dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered = module.render_all()
    assert sorted(rendered) == [p.name for p in DASHBOARDS]
    for path in DASHBOARDS:
        assert path.read_text() == rendered[path.name], (
            f"{path.name} is stale: run python grafana/make_dashboards.py"
        )
    titles = {d["title"] for d in map(_load, DASHBOARDS)}
    assert titles == {
        "afmon / Facility overview",
        "afmon / Interactive SLOs",
        "afmon / GPUs",
        "afmon / Data access",
        "afmon / VO accounting",
    }


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_each_dashboard_is_a_valid_grafana_model(path: Path) -> None:
    d = _load(path)
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"]) and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert set(variables) == {"datasource", "facility", "vo"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("facility", "vo"):
        assert variables[name]["type"] == "query" and variables[name]["includeAll"]
        assert variables[name]["allValue"] == ".*"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and d["panels"]
    known = series_names()
    for p in d["panels"]:
        where = f"{d['uid']} / {p['title']}"
        assert p["type"] in {"timeseries", "stat", "table", "bargauge", "gauge"}, where
        assert p["description"].strip(), f"{where}: no description"
        assert p["fieldConfig"]["defaults"]["unit"], f"{where}: no unit"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert set(p["gridPos"]) == {"h", "w", "x", "y"}, where
        assert p["targets"], f"{where}: no targets"
        for t in p["targets"]:
            assert t["refId"] and t["datasource"] == p["datasource"], where
            used = set(METRIC.findall(t["expr"]))
            assert used and used <= set(known), f"{where}: not in the catalog: {used - set(known)}"
            assert known[next(iter(used))].status == "live", where
            # every family with a facility label is filtered by the dashboard's facility
            if any("facility" in known[m].labels for m in used):
                assert 'facility=~"$facility"' in t["expr"], where


# Grafana's unit ids that the dashboards may use (grafana/packages/grafana-data valueFormats);
# anything else must be a custom unit, `si:<symbol>` or `suffix:<symbol>`.
GRAFANA_UNITS = {"short", "none", "percentunit", "bytes", "decbytes", "Bps", "reqps", "s", "h"}


def test_panels_have_grafana_units_that_fit_their_quantity() -> None:
    for d in map(_load, DASHBOARDS):
        for p in d["panels"]:
            unit = p["fieldConfig"]["defaults"]["unit"]
            where = f"{d['uid']} / {p['title']}: {unit}"
            assert unit in GRAFANA_UNITS or re.fullmatch(r"(si|suffix):\S+", unit), where
            exprs = " ".join(t["expr"] for t in p["targets"])
            if "byte_seconds" in exprs:  # byte-seconds are not a size
                assert unit not in {"bytes", "decbytes"}, where
            if "GPU hours" in p["title"]:
                assert unit == "h" and all("/ 3600" in t["expr"] for t in p["targets"]), where
            if "hs23" in exprs:
                assert "HS23" in unit, where


def test_provisioning_points_at_the_dashboards_datasource() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/afmon.yaml").read_text())
    [prom] = ds["datasources"]
    assert prom["type"] == "prometheus" and prom["uid"] == "afmon-prometheus"
    for d in map(_load, DASHBOARDS):
        [var] = [v for v in d["templating"]["list"] if v["name"] == "datasource"]
        assert var["current"]["value"] == prom["uid"]
    text = (GRAFANA / "provisioning/datasources/afmon.yaml").read_text()
    assert "type: influxdb" in text  # the InfluxDB-API store, commented until configured
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/afmon.yaml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


# -- a real Prometheus scraping a live afmon -----------------------------------------------


@pytest.fixture
def prometheus(
    tmp_path: Path, server_factory: Callable[..., Any]
) -> Iterator[tuple[str, list[str]]]:
    """A live afmon fed with 2 h of the demo's simulated facility (rich: GPUs, Dask, XRootD,
    spools), nothing added by hand, scraped every second by Prometheus."""
    # (this seed has Dask clusters scaling up in the last hour: the latency rules have data)
    sim = FacilitySimulator(facility="test-af", nodes=2, members_per_vo=3, seed=11,
                            sessions_per_member_day=24, rich=True)  # fmt: skip
    identity = tmp_path / "identity.toml"
    identity.write_text(sim.identity_toml())
    server = server_factory(identity_file=identity, alert_interval_seconds="0")
    poster = Poster(server.url, server.token)
    now = time.time()
    backfill(sim, poster, now - 2 * 3600, now - 30, report=None)
    host = server.url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "afmon", "static_configs": [{"targets": [host]}]}],
    }
    with running_prometheus(tmp_path, config) as prom:
        deadline = time.monotonic() + 90
        last = "no answer yet"
        while time.monotonic() < deadline:
            prom.alive()
            # two scrapes or more in the last minute, so that rate() has two samples
            expr = 'count_over_time(up{job="afmon"}[1m]) >= 3 and up == 1'
            ready, last = _try_query(prom.url, expr)
            if ready:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"Prometheus did not scrape afmon 3 times within 90 s; last: {last}")
        yield prom.url, [server.facility]


def _try_query(url: str, expr: str) -> tuple[list[dict[str, Any]], str]:
    """A readiness probe: (the result, or [] while Prometheus is not ready, and what it
    answered). Any answer is tolerated, a refused connection, a 503 "Service Unavailable"
    while it starts, a body that is not JSON or not a success, so that the caller polls on
    until its deadline."""
    try:
        r = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    except httpx.HTTPError as exc:
        return [], f"{type(exc).__name__}: {exc}"
    seen = f"HTTP {r.status_code}: {r.text[:200]!r}"
    if r.status_code != 200:
        return [], seen
    try:
        body = r.json()
        result = body["data"]["result"] if body.get("status") == "success" else []
    except (ValueError, TypeError, KeyError, AttributeError):
        return [], seen
    return (result if isinstance(result, list) else []), seen


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def test_the_readiness_probe_tolerates_any_answer() -> None:
    """What a starting Prometheus may answer (503 "Service Unavailable", a body that is not
    JSON, an error status, nothing at all) is "not ready yet", never an exception."""
    import http.server
    import threading

    answers = [
        (503, "text/plain", b"Service Unavailable"),
        (200, "text/html", b"<html>starting</html>"),
        (200, "application/json", b'{"status": "error", "error": "not ready"}'),
        (200, "application/json", b'{"status": "success", "data": {"result": [{"v": 1}]}}'),
    ]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            code, kind, body = answers.pop(0)
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    assert _try_query(f"http://127.0.0.1:{free_port()}", "up")[0] == []  # connection refused
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        seen = [_try_query(url, "up") for _ in range(4)]
    finally:
        server.shutdown()
        server.server_close()
    assert [r for r, _ in seen] == [[], [], [], [{"v": 1}]]
    assert "503" in seen[0][1] and "Service Unavailable" in seen[0][1]


def test_every_dashboard_and_rule_expression_returns_data(
    prometheus: tuple[str, list[str]],
) -> None:
    """The demo's simulator alone feeds every panel and every exported alert rule."""
    url, facilities = prometheus
    empty = []
    for uid, title, expr in _targets():
        result = _query(url, substitute(expr))
        if not result:
            empty.append(f"{uid} / {title}: {expr}")
    for rule in exportable(load_rules()):
        assert rule.prometheus is not None
        if not _query(url, rule.prometheus):
            empty.append(f"rule {rule.name}: {rule.prometheus}")
    assert not empty, "no data for:\n" + "\n".join(empty)
    # the template variables' own queries find the facility and the VOs
    for d in map(_load, DASHBOARDS):
        for v in d["templating"]["list"]:
            if v["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.*), (\w+)\)", v["definition"])
            assert m, v["definition"]
            r = httpx.get(
                f"{url}/api/v1/label/{m.group(2)}/values",
                params={"match[]": substitute(m.group(1))},
                timeout=10,
            ).json()
            values = set(r["data"])
            if v["name"] == "facility":
                assert values == set(facilities)
            else:  # the VOs that used CPU in the simulated hours
                assert len(values) >= 2 and values <= {"atlas", "cms", "lhcb", "unmapped"}
