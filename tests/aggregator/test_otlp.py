"""OTLP/HTTP metrics from a real opentelemetry-sdk exporter into a real afmon server."""

from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from tests.aggregator.test_lineprotocol import ALICE, IDENTITY, ledger

T0_NS = 1767225600 * 1_000_000_000


def _server(server_factory, tmp_path: Path):
    identity = tmp_path / "identity.toml"
    identity.write_text(IDENTITY)
    return server_factory(identity_file=identity, dashboard="false")


def test_sdk_meter_provider_reports_into_the_ledger(server_factory, tmp_path: Path) -> None:
    server = _server(server_factory, tmp_path)
    exporter = OTLPMetricExporter(
        endpoint=f"{server.url}/v1/metrics",
        headers={"Authorization": f"Bearer {server.token}"},
        compression=Compression.Gzip,
        timeout=10,
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(
        resource=Resource.create({"host.name": "wn02", "service.name": "site-exporter"}),
        metric_readers=[reader],
    )
    rss = [2_000_000.0]

    def observe(_options: CallbackOptions) -> list[Observation]:
        return [Observation(rss[0], {"user": "alice"})]

    try:
        meter = provider.get_meter("afmon-test")
        cpu = meter.create_counter("user_cpu_seconds", unit="s")
        meter.create_observable_gauge("user_memory_rss_bytes", [observe], unit="By")
        cpu.add(12.5, {"user": "alice"})
        assert provider.force_flush(10_000)
        cpu.add(7.5, {"user": "alice"})
        rss[0] = 3_000_000.0
        assert provider.force_flush(10_000)
    finally:
        provider.shutdown()
    db = tmp_path / "server.sqlite"
    usage = ledger(db)
    # the counter's start time is its `created`: the first export counts in full
    assert usage[(ALICE, "cpu_seconds")] == 20.0
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT s.labels, p.time, p.value FROM sample p JOIN series s ON s.id = p.series_id "
            "WHERE s.metric = 'user_memory_rss_bytes' ORDER BY p.time"
        ).fetchall()
    # two flushes and the final export at shutdown
    assert {r[0] for r in rows} == {
        json.dumps({"node": "wn02", "user": "alice"}, separators=(",", ":"))
    }
    assert [r[2] for r in rows] == [2_000_000.0, 3_000_000.0, 3_000_000.0]
    expected = sum(a[2] * (b[1] - a[1]) for a, b in zip(rows, rows[1:], strict=False))
    assert usage[(ALICE, "memory_byte_seconds")] == pytest.approx(expected, rel=1e-12)


def _kv(key: str, value: str | int) -> dict[str, object]:
    kind = "intValue" if isinstance(value, int) else "stringValue"
    return {"key": key, "value": {kind: str(value) if kind == "intValue" else value}}


# OTLP/JSON as the spec shows it: semantic-convention process metrics of one process
SEMCONV = {
    "resourceMetrics": [
        {
            "resource": {
                "attributes": [
                    _kv("host.name", "wn03"),
                    _kv("process.owner", "alice"),
                    _kv("process.pid", 777),
                ]
            },
            "scopeMetrics": [
                {
                    "scope": {"name": "hostmetrics"},
                    "metrics": [
                        {
                            "name": "process.cpu.time",
                            "unit": "s",
                            "sum": {
                                "aggregationTemporality": 2,
                                "isMonotonic": True,
                                "dataPoints": [
                                    {
                                        "attributes": [_kv("cpu.mode", mode)],
                                        "startTimeUnixNano": str(T0_NS),
                                        "timeUnixNano": str(T0_NS + 60 * 10**9),
                                        "asDouble": value,
                                    }
                                    for mode, value in (
                                        ("user", 40.0),
                                        ("system", 5.0),
                                        ("wait", 100.0),
                                    )
                                ],
                            },
                        },
                        {
                            "name": "process.threads",
                            "unit": "{thread}",
                            "sum": {
                                "aggregationTemporality": 2,
                                "dataPoints": [{"timeUnixNano": str(T0_NS), "asInt": "4"}],
                            },
                        },
                    ],
                }
            ],
        }
    ]
}


def test_otlp_json_semantic_conventions_and_errors(server_factory, tmp_path: Path) -> None:
    server = _server(server_factory, tmp_path)
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        r = client.post("/v1/metrics", content=json.dumps(SEMCONV), headers=headers)
        assert r.status_code == 200, r.text
        # OTLP's warning: nothing rejected, a message naming what afmon does not map
        assert r.json() == {
            "partialSuccess": {
                "errorMessage": "ignored 1 point of metrics afmon does not map "
                "(process.threads); docs/scale.md lists what it maps"
            }
        }
        # a boolean attribute is a label spelled as OpenTelemetry does: `true`
        flagged = {
            "resourceMetrics": [{
                "resource": {"attributes": [_kv("host.name", "wn03")]},
                "scopeMetrics": [{"metrics": [{
                    "name": "user_processes", "unit": "1",
                    "gauge": {"dataPoints": [{
                        "attributes": [_kv("user", "alice"),
                                       {"key": "interactive", "value": {"boolValue": True}}],
                        "timeUnixNano": str(T0_NS), "asInt": "3",
                    }]},
                }]}],
            }]
        }  # fmt: skip
        r = client.post("/v1/metrics", content=json.dumps(flagged), headers=headers)
        assert r.status_code == 200 and r.json() == {}, r.text
        r = client.post("/v1/metrics", content=json.dumps(SEMCONV), headers=headers)
        assert r.status_code == 200  # the same body again: a duplicate, applied once
        delta = copy.deepcopy(SEMCONV)  # an UpDownCounter's deltas: no running total
        delta["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"].update(
            aggregationTemporality=1, isMonotonic=False
        )
        # a metric that cannot be mapped as sent is refused on its own (OTLP partial
        # success), quarantined; the rest of the request is applied
        memory = {
            "name": "process.memory.usage",
            "unit": "By",
            "gauge": {
                "dataPoints": [
                    {"timeUnixNano": str(T0_NS + 60 * 10**9), "asDouble": v} for v in (1.5e9, "NaN")
                ]
            },
        }
        memory["gauge"]["dataPoints"][1]["timeUnixNano"] = str(T0_NS + 70 * 10**9)
        delta["resourceMetrics"][0]["scopeMetrics"][0]["metrics"].append(memory)
        r = client.post("/v1/metrics", content=json.dumps(delta), headers=headers)
        assert r.status_code == 200, r.text
        partial = r.json()["partialSuccess"]
        assert partial["rejectedDataPoints"] == "4"  # the 3 delta points and the NaN one
        assert "metrics[0] (process.cpu.time): a non-monotonic delta Sum" in partial["errorMessage"]
        assert "1 point: value nan is not a finite number" in partial["errorMessage"]
        wrong_unit = copy.deepcopy(SEMCONV)
        wrong_unit["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["unit"] = "ms"
        r = client.post("/v1/metrics", content=json.dumps(wrong_unit), headers=headers)
        assert r.status_code == 200, r.text
        assert "unit must be 's'" in r.json()["partialSuccess"]["errorMessage"]
        r = client.post(
            "/v1/metrics",
            content=b"\x01\x02",
            headers={**headers, "Content-Type": "application/x-protobuf"},
        )
        assert r.status_code == 400
        r = client.post("/v1/metrics", content=b"{}", headers={**headers, "Authorization": "x"})
        assert r.status_code == 401
    # user + system (not wait), counted in full from its start time, on the process's series
    assert ledger(tmp_path / "server.sqlite")[(ALICE, "cpu_seconds")] == 45.0
    with sqlite3.connect(tmp_path / "server.sqlite") as conn:
        kept = conn.execute("SELECT kind, reason, field FROM quarantine ORDER BY id").fetchall()
        memory = conn.execute(
            "SELECT x.value FROM sample x JOIN series s ON s.id = x.series_id "
            "WHERE s.metric = 'user_memory_rss_bytes'"
        ).fetchall()
    where = "resource_metrics[0].scope_metrics[0].metrics"
    assert kept == [
        ("metric", "unsupported", f"{where}[0] (process.cpu.time)"),
        ("metric", "non_finite", f"{where}[2] (process.memory.usage).data_points[1]"),
        ("metric", "wrong_unit", f"{where}[0] (process.cpu.time)"),
    ]
    assert memory == [(1.5e9,)]  # the finite point of the request that carried the delta
    with sqlite3.connect(tmp_path / "server.sqlite") as conn:
        [(labels,)] = conn.execute("SELECT labels FROM series WHERE metric = 'user_processes'")
    assert json.loads(labels) == {"interactive": "true", "node": "wn03", "user": "alice"}
    with sqlite3.connect(tmp_path / "server.sqlite") as conn:
        labels = conn.execute("SELECT labels FROM series WHERE metric = 'user_cpu_seconds'")
        assert [json.loads(x[0]) for x in labels] == [
            {"node": "wn03", "pid": "777", "user": "alice"}
        ]


def test_histograms_are_reported_as_rejected_or_ignored(server_factory, tmp_path: Path) -> None:
    """A histogram cannot be an afmon series: under an afmon name it is refused (counted in
    `rejectedDataPoints`, quarantined), under another name ignored with a warning; the gauge
    beside them is applied."""

    def histogram(name: str) -> dict[str, object]:
        return {
            "name": name,
            "unit": "s",
            "histogram": {
                "aggregationTemporality": 2,
                "dataPoints": [
                    {
                        "attributes": [_kv("user", "alice")],
                        "startTimeUnixNano": str(T0_NS),
                        "timeUnixNano": str(T0_NS + i * 10**9),
                        "count": "3",
                        "sum": 4.5,
                        "bucketCounts": ["1", "2"],
                        "explicitBounds": [1.0],
                    }
                    for i in (1, 2)
                ],
            },
        }

    gauge = {
        "name": "user_processes",
        "unit": "1",
        "gauge": {
            "dataPoints": [
                {"attributes": [_kv("user", "alice")], "timeUnixNano": str(T0_NS), "asInt": "2"}
            ]
        },
    }
    body = {
        "resourceMetrics": [
            {
                "resource": {"attributes": [_kv("host.name", "wn04")]},
                "scopeMetrics": [
                    {"metrics": [histogram("user_cpu_seconds"), histogram("rpc.duration"), gauge]}
                ],
            }
        ]
    }
    server = _server(server_factory, tmp_path)
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    r = httpx.post(f"{server.url}/v1/metrics", content=json.dumps(body), headers=headers)
    assert r.status_code == 200, r.text
    partial = r.json()["partialSuccess"]
    assert partial["rejectedDataPoints"] == "2"  # the afmon-named histogram's two points
    message = partial["errorMessage"]
    assert "metrics[0] (user_cpu_seconds): a histogram cannot map onto an afmon series" in message
    assert "ignored 2 points of metrics afmon does not map (rpc.duration)" in message
    with sqlite3.connect(tmp_path / "server.sqlite") as conn:
        kept = conn.execute("SELECT kind, reason FROM quarantine").fetchall()
        applied = conn.execute(
            "SELECT x.value FROM sample x JOIN series s ON s.id = x.series_id "
            "WHERE s.metric = 'user_processes'"
        ).fetchall()
    assert kept == [("metric", "unsupported")]
    assert applied == [(2.0,)]
