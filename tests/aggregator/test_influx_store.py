"""Raw samples into a real VictoriaMetrics through its InfluxDB v2 write API, via the outbox."""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from afmon.aggregator.metrics.exporter import LedgerCollector
from afmon.aggregator.query import signals
from afmon.aggregator.store.db import make_engine
from afmon.collectors import wire
from tests.conftest import free_port


@dataclass
class VictoriaMetrics:
    port: int
    data: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("victoria-metrics")
        if binary is None:
            pytest.fail("victoria-metrics is needed (Debian package victoria-metrics; make test)")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"-storageDataPath={self.data}",
                    f"-httpListenAddr=127.0.0.1:{self.port}",
                    "-dedup.minScrapeInterval=1ms",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"victoria-metrics exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        pytest.fail("victoria-metrics not healthy in 20 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def export(self) -> dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]:
        """Every afmon series: sorted labels -> [(ms timestamp, value)]."""
        httpx.get(f"{self.url}/internal/force_flush", timeout=5)
        r = httpx.post(
            f"{self.url}/api/v1/export", data={"match[]": '{__name__=~"afmon_.*"}'}, timeout=10
        )
        r.raise_for_status()
        out = {}
        for line in r.text.splitlines():
            row = json.loads(line)
            key = tuple(sorted(row["metric"].items()))
            out[key] = sorted(zip(row["timestamps"], row["values"], strict=True))
        return out


@pytest.fixture
def vm_factory(tmp_path: Path) -> Iterator[Callable[[int | None], VictoriaMetrics]]:
    made: list[VictoriaMetrics] = []

    def make(port: int | None = None) -> VictoriaMetrics:
        vm = VictoriaMetrics(port or free_port(), tmp_path / "vm-data", tmp_path / "vm.log")
        made.append(vm)
        return vm

    yield make
    for vm in made:
        vm.stop()


def _batch(seq: int, t0: float) -> wire.Batch:
    return wire.Batch(
        version=1,
        agent_id="agent-1",
        facility="test-af",
        node="wn01",
        seq=seq,
        sent_at=t0 + 30,
        series=[
            wire.Series(
                metric="user_cpu_seconds",
                unit="seconds",
                kind="counter",
                labels={"user": "alice", "node": "wn01"},
                times=[t0, t0 + 10.5],
                values=[12.5, 20.25 + seq],
            ),
            wire.Series(
                metric="node_memory_bytes",
                unit="bytes",
                kind="gauge",
                labels={"node": "wn01"},
                times=[t0 + 0.001],
                values=[16643522560.0],
            ),
        ],
    )


def _expected(batches: list[wire.Batch]) -> dict[tuple[tuple[str, str], ...], list]:
    out: dict[tuple[tuple[str, str], ...], list] = {}
    for b in batches:
        for s in b.series:
            labels = {"__name__": f"afmon_{s.metric}", "facility": b.facility, **s.labels}
            key = tuple(sorted(labels.items()))
            out.setdefault(key, []).extend(
                (round(t * 1000), v) for t, v in zip(s.times, s.values, strict=True)
            )
    return {k: sorted(v) for k, v in out.items()}


def _post(server, batch: wire.Batch) -> dict:
    r = httpx.post(
        f"{server.url}/api/v1/ingest",
        content=wire.encode(batch),
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


OUTBOX_GAUGES = (
    "afmon_tsdb_outbox_batches",
    "afmon_tsdb_outbox_samples",
    "afmon_tsdb_outbox_oldest_timestamp_seconds",
)
# How long a worker's /metrics serves its cached ledger families (LedgerCollector's default).
LEDGER_TTL: float = inspect.signature(LedgerCollector).parameters["ttl"].default


def _outbox(url: str) -> list[tuple[float, int]]:
    """(created, samples) of the rows waiting in the outbox, oldest first."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT created, samples FROM tsdb_outbox ORDER BY id"))
            return [(float(c), int(n)) for c, n in rows]
    finally:
        engine.dispose()


def _outbox_gauges(server) -> dict[str, float]:
    """The outbox families of one scrape of /metrics (a family left out is absent here)."""
    r = httpx.get(f"{server.url}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    out = {}
    for family in text_string_to_metric_families(r.text):
        if family.name in OUTBOX_GAUGES:
            [sample] = family.samples
            assert family.type == "gauge" and sample.labels == {}
            out[family.name] = sample.value
    return out


def _settled_scrapes(server, changed: float, scrapes: int = 6) -> list[dict[str, float]]:
    """Scrapes once every worker's cache is older than the outbox's last change (at
    time.monotonic() `changed`): whichever worker answers, it read the database since."""
    time.sleep(max(0.0, changed + LEDGER_TTL + 0.2 - time.monotonic()))
    return [_outbox_gauges(server) for _ in range(scrapes)]


def _outbox_age(url: str, now: float) -> list[signals.Observation]:
    engine = make_engine(url)
    try:
        return signals.compute(engine, now, {"tsdb_outbox_age_seconds"})["tsdb_outbox_age_seconds"]
    finally:
        engine.dispose()


def test_samples_are_read_back_exactly(server_factory, vm_factory, database_url: str) -> None:
    """On SQLite and on PostgreSQL (where workers claim outbox rows with SKIP LOCKED)."""
    vm = vm_factory(None)
    vm.start()
    server = server_factory(
        database_url, tsdb_url=vm.url, tsdb_flush_seconds="0.2", dashboard="false"
    )
    t0 = float(int(time.time()) - 600)
    batches = [_batch(0, t0), _batch(1, t0 + 20)]
    for b in batches:
        assert _post(server, b)["status"] == "applied"
    assert _post(server, batches[0])["status"] == "duplicate"  # not written twice
    expected = _expected(batches)
    _wait_for(lambda: vm.export() == expected, "the samples in VictoriaMetrics")
    assert _outbox(database_url) == []


def test_store_down_ingest_acknowledges_then_outbox_drains(
    server_factory, vm_factory, database_url: str
) -> None:
    """The store is down: ingest acknowledges, the outbox holds the batches and /metrics (from
    every worker: two on PostgreSQL) shows them; once the store is up the outbox drains into
    it and the gauges read empty."""
    port = free_port()
    server = server_factory(
        database_url,
        tsdb_url=f"http://127.0.0.1:{port}",
        tsdb_flush_seconds="0.2",
        dashboard="false",
        workers=1 if database_url.startswith("sqlite") else 2,
    )
    empty = {"afmon_tsdb_outbox_batches": 0.0, "afmon_tsdb_outbox_samples": 0.0}
    assert _outbox_gauges(server) == empty  # no oldest row: no timestamp
    t0 = float(int(time.time()) - 900)
    batches = [_batch(i, t0 + 100 * i) for i in range(3)]
    before = time.time()
    answers = [_post(server, b) for b in batches]  # the store is down: acknowledged at once
    after = time.time()
    posted = time.monotonic()
    assert [(a["status"], a["samples"]) for a in answers] == [("applied", 3)] * 3
    rows = _outbox(database_url)
    assert [n for _created, n in rows] == [3, 3, 3]  # a row per batch, its fresh samples
    oldest = rows[0][0]
    assert before <= oldest <= after
    engine = create_engine(database_url)
    with engine.connect() as conn:  # the ledger committed meanwhile
        assert conn.execute(text("SELECT COUNT(*) FROM sample")).scalar_one() == 9
    engine.dispose()
    waiting = {
        "afmon_tsdb_outbox_batches": 3.0,
        "afmon_tsdb_outbox_samples": 9.0,
        "afmon_tsdb_outbox_oldest_timestamp_seconds": oldest,
    }
    assert _settled_scrapes(server, posted) == [waiting] * 6
    # the alert signal: the oldest row's wait; AfmonTsdbOutboxBehind fires above 600 s
    [age] = _outbox_age(database_url, oldest + 700)
    assert age.labels == () and age.value == pytest.approx(700.0)

    vm = vm_factory(port)
    vm.start()
    _wait_for(lambda: _outbox(database_url) == [], "the outbox to drain", timeout=60)
    drained = time.monotonic()
    _wait_for(lambda: vm.export() == _expected(batches), "the samples in VictoriaMetrics")
    assert _settled_scrapes(server, drained) == [empty] * 6
    assert _outbox_age(database_url, oldest + 700) == []  # no data: the alert resolves


def _raw_only_batch(t0: float) -> wire.Batch:
    """Per-user and node series and the read-back ones; values written in exponent form (within
    what VictoriaMetrics stores exactly: about 12 significant digits per block of a series)."""

    def series(metric: str, unit: str, kind: str, labels: dict, values: list[float]) -> wire.Series:
        times = [t0 + 10.0 * i for i in range(len(values))]
        return wire.Series(
            metric=metric,
            unit=unit,
            kind=kind,
            labels=labels,
            times=times,
            values=values,
            created=t0 - 60 if kind == "counter" else None,
        )

    node = {"node": "wn01"}
    return wire.Batch(
        version=1,
        agent_id="agent-1",
        facility="test-af",
        node="wn01",
        seq=1,
        sent_at=t0 + 60,
        series=[
            series(
                "user_cpu_seconds",
                "seconds",
                "counter",
                {**node, "user": "alice"},
                [1.5, 7.25, 20.0],
            ),
            series(
                "user_memory_rss_bytes",
                "bytes",
                "gauge",
                {**node, "user": "alice"},
                [1.5e16, 2.5e16, 3e16],
            ),
            series(
                "xrootd_server_read_bytes",
                "bytes",
                "counter",
                {**node, "server": "xrd1:1094", "source": "local"},
                [100.0, 350.0],
            ),
            series("gpu_utilization_ratio", "ratio", "gauge", {**node, "gpu": "0"}, [1.5e-07, 0.5]),
            series("agent_spool_batches", "1", "gauge", node, [2.0, 5.0]),
            series("node_cpu_busy_ratio", "ratio", "gauge", node, [0.25, 0.75]),
        ],
    )


def test_raw_only_keeps_raw_samples_in_the_store(
    server_factory, vm_factory, database_url: str
) -> None:
    """AFMON_TSDB_RAW_ONLY: every sample reaches VictoriaMetrics exactly; the database keeps
    only the series afmon reads back and the accounted ones (late samples are placed among
    them), and the readers still answer."""
    from afmon.aggregator.ingest.apply import READ_BACK_METRICS, kept_when_raw_only
    from afmon.aggregator.query.reads import LOCAL_ADMIN, SERVER_METRICS, Query
    from afmon.aggregator.query.signals import agent_spool_growth_batches
    from afmon.aggregator.store.db import make_engine, read_connection

    assert set(SERVER_METRICS) <= READ_BACK_METRICS  # a new reader of `sample` needs its metric
    vm = vm_factory(None)
    vm.start()
    server = server_factory(
        database_url,
        tsdb_url=vm.url,
        tsdb_raw_only="true",
        tsdb_flush_seconds="0.2",
        dashboard="false",
    )
    t0 = float(int(time.time()) - 600)
    batch = _raw_only_batch(t0)
    assert _post(server, batch) == {
        "status": "applied",
        "facility": server.facility,
        "seq": 1,
        "samples": 14,
        "stale_samples": 0,
        "events": 0,
    }
    _wait_for(lambda: vm.export() == _expected([batch]), "the samples in VictoriaMetrics")
    engine = make_engine(database_url)
    try:
        with read_connection(engine) as conn:
            kept = conn.execute(
                text(
                    "SELECT s.metric, x.time, x.value FROM sample x JOIN series s "
                    "ON s.id = x.series_id ORDER BY s.metric, x.time"
                )
            ).all()
            cpu = conn.execute(
                text("SELECT SUM(amount) FROM usage WHERE resource = 'cpu_seconds'")
            ).scalar_one()
            spool = agent_spool_growth_batches(conn, t0 + 60)
        servers = Query(engine).data_servers(LOCAL_ADMIN, t0 - 1, t0 + 60)
    finally:
        engine.dispose()
    assert kept == sorted(
        (s.metric, t, v)
        for s in batch.series
        if kept_when_raw_only(s)
        for t, v in zip(s.times, s.values, strict=True)
    )
    assert {"user_cpu_seconds", "agent_spool_batches"} <= {m for m, _t, _v in kept}
    assert "node_cpu_cores" not in {m for m, _t, _v in kept}
    assert cpu == 20.0  # the ledger is kept as ever (the counter started at `created`)
    assert [o.value for o in spool] == [3.0]
    assert servers["read_bytes"].tolist() == [350.0]


def test_drainer_writes_staged_points_and_rows_of_older_versions(tmp_path: Path) -> None:
    """Rows staged before migration 0004 carry line protocol in `lines`; both kinds drain."""
    from afmon.aggregator.store.db import create_schema, make_engine
    from afmon.aggregator.store.tsdb import Drainer, Outbox, line_protocol, series_head

    engine = make_engine(f"sqlite:///{tmp_path}/outbox.sqlite")
    create_schema(engine)
    batch = _raw_only_batch(1_790_000_000.0)
    points = [(series_head(batch, s), s.times, s.values) for s in batch.series]
    legacy = "afmon,facility=old,node=wn00 user_cpu_seconds=2.5 1789999999000"
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO tsdb_outbox (created, lines, samples) VALUES (0, :l, 1)"),
            {"l": legacy},
        )
        Outbox(engine).stage(conn, points, 14, 0.0)
    written: list[bytes] = []
    drainer = Drainer(engine, type("W", (), {"write": lambda _self, b: written.append(b)})())
    assert drainer.drain_once() == 2 and drainer.pending() == 0
    assert written == [legacy.encode() + b"\n" + line_protocol(points)]
    first = line_protocol(points).split(b"\n")[0]
    assert (
        first == b"afmon,facility=test-af,node=wn01,user=alice user_cpu_seconds=1.5 1790000000000"
    )
    engine.dispose()
