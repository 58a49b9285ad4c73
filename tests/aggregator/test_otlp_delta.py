"""Delta temporality (OTLP's delta sums, the wire's `temporality: "delta"`) accounted exactly:
each delta is added to the series' stored total (aggregator/ingest/delta.py), so the ledger
holds the sum of the deltas, the store a cumulative counter, whatever the order of exports
that keep time order, their retries and one bad record among good ones."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
import msgspec
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import Counter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from afmon.collectors import wire
from tests.aggregator.test_lineprotocol import ALICE, IDENTITY, ledger

T0 = 1_790_006_400.0


def _server(server_factory, tmp_path: Path):
    identity = tmp_path / "identity.toml"
    identity.write_text(IDENTITY)
    return server_factory(identity_file=identity, dashboard="false")


def _samples(db: Path, metric: str) -> list[tuple[float, float]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT p.time, p.value FROM sample p JOIN series s ON s.id = p.series_id "
            "WHERE s.metric = ? ORDER BY p.time",
            (metric,),
        ).fetchall()


def test_sdk_delta_exporter_is_accounted_as_the_sum_of_its_deltas(
    server_factory, tmp_path: Path
) -> None:
    server = _server(server_factory, tmp_path)
    exporter = OTLPMetricExporter(
        endpoint=f"{server.url}/v1/metrics",
        headers={"Authorization": f"Bearer {server.token}"},
        preferred_temporality={Counter: AggregationTemporality.DELTA},
        timeout=10,
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(
        resource=Resource.create({"host.name": "wn07"}), metric_readers=[reader]
    )
    try:
        cpu = provider.get_meter("afmon-test").create_counter("user_cpu_seconds", unit="s")
        for amount in (12.5, 7.5, 0.25):
            cpu.add(amount, {"user": "alice"})
            assert provider.force_flush(10_000)
    finally:
        provider.shutdown()
    db = tmp_path / "server.sqlite"
    assert ledger(db)[(ALICE, "cpu_seconds")] == 20.25  # the first delta counts in full
    values = [v for _t, v in _samples(db, "user_cpu_seconds")]
    assert values[:3] == [12.5, 20.0, 20.25]  # stored as the running total
    assert values == sorted(values)


def _batch(seq: int, *series: wire.Series) -> bytes:
    return msgspec.json.encode(
        wire.Batch(
            version=wire.WIRE_VERSION,
            agent_id="delta-agent",
            facility="test-af",
            node="wn08",
            seq=seq,
            sent_at=T0 + 3600,
            series=list(series),
        )
    )


def _cpu(times: list[float], values: list[float], node: str = "wn08") -> wire.Series:
    return wire.Series(
        metric="user_cpu_seconds",
        unit="seconds",
        kind="counter",
        labels={"user": "alice", "node": node},
        times=times,
        values=values,
        temporality="delta",
    )


def test_wire_delta_series_repeats_out_of_order_and_bad_records(
    server_factory, tmp_path: Path
) -> None:
    server = _server(server_factory, tmp_path)
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": wire.CONTENT_TYPE}
    gauge = wire.Series(
        metric="user_memory_rss_bytes",
        unit="bytes",
        kind="gauge",
        labels={"user": "alice", "node": "wn08"},
        times=[T0],
        values=[1e9],
        temporality="delta",
    )
    with httpx.Client(base_url=server.url, timeout=10) as client:

        def post(seq: int, *series: wire.Series) -> dict[str, object]:
            r = client.post("/api/v1/ingest", content=_batch(seq, *series), headers=headers)
            assert r.status_code in (200, 202), r.text
            return r.json()

        assert post(1, _cpu([T0 + 10, T0 + 20], [3.0, 4.0]))["status"] == "applied"
        # a retry of the last delta with a new one: the repeat is dropped, the new one added
        assert post(2, _cpu([T0 + 20, T0 + 30], [4.0, 1.5]))["stale_samples"] == 1
        # one good series and three bad ones in one batch: each bad one refused on its own
        answer = post(
            3,
            _cpu([T0 + 25], [9.0]),  # before the newest stored delta: cannot be placed
            _negative(),
            gauge,
            _cpu([T0 + 40, T0 + 50], [0.5, 2.0], node="wn09"),
        )
    assert answer["status"] == "partial"
    reasons = [(r["field"], r["reason"]) for r in answer["refused"]]  # type: ignore[union-attr]
    assert sorted(reasons) == [
        ("$.series[0].times", "too_old"),
        ("$.series[1].values", "negative_counter"),
        ("$.series[2].temporality", "wrong_kind"),
    ]
    db = tmp_path / "server.sqlite"
    assert ledger(db)[(ALICE, "cpu_seconds")] == 3.0 + 4.0 + 1.5 + 0.5 + 2.0
    # the node's series stays at its running total; wn09's starts from zero
    assert _samples(db, "user_cpu_seconds") == [
        (T0 + 10, 3.0),
        (T0 + 20, 7.0),
        (T0 + 30, 8.5),
        (T0 + 40, 0.5),
        (T0 + 50, 2.5),
    ]
    with sqlite3.connect(db) as conn:
        kept = conn.execute("SELECT reason, record FROM quarantine ORDER BY field").fetchall()
    assert [r for r, _ in kept] == ["too_old", "negative_counter", "wrong_kind"]
    # the quarantine keeps the record as sent: deltas, so that a replay converts it again
    assert json.loads(kept[0][1])["temporality"] == "delta"
    assert json.loads(kept[0][1])["values"] == [9.0]


def _negative() -> wire.Series:
    return wire.Series(
        metric="user_cpu_seconds",
        unit="seconds",
        kind="counter",
        labels={"user": "alice", "node": "wn10"},
        times=[T0 + 40],
        values=[-1.0],
        temporality="delta",
    )
