"""The push loop against a real HTTP server on 127.0.0.1: answering 200/401/422/503, or down."""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from afmon.collectors import wire
from afmon.collectors.probes.base import ProbeOutput, sample
from afmon.collectors.push import PushLoop
from afmon.collectors.spool import Spool

from .ingest_server import REJECT_DETAIL, IngestServer

TOKEN = "s3cret-agent-token"
WALL = itertools.count(1_700_000_000, 15)  # wall clock shared by every loop: never goes back


class Ticks:
    """A probe whose n-th collection reports the gauge test_tick = n, to trace every batch."""

    name = "ticks"
    state = "ready"

    def __init__(self) -> None:
        self.n = 0

    def collect(self, now: float) -> ProbeOutput:
        out = ProbeOutput(
            [sample("test_tick", {"node": "n1"}, now, self.n, unit="1", kind="gauge")]
        )
        self.n += 1
        return out


class Boom:
    name = "boom"
    state = "ready"

    def collect(self, now: float) -> ProbeOutput:
        raise RuntimeError("the probe's source went away")


class Disabled:
    name = "gpu"
    state = "no NVML library"

    def collect(self, now: float) -> ProbeOutput:
        raise AssertionError("a probe that is not ready must not be called")


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=2.0) as c:
        yield c


def make_loop(
    spool_dir: Path, server: IngestServer, client: httpx.Client, probes: list[object], **kw: object
) -> PushLoop:
    return PushLoop(
        probes=probes,  # type: ignore[arg-type]
        spool=Spool(spool_dir),
        client=client,
        server_url=server.url,
        token=TOKEN,
        facility="test-af",
        node="n1",
        clock=lambda: float(next(WALL)),
        rng=random.Random(7),
        **kw,  # type: ignore[arg-type]
    )


def series_value(batch: wire.Batch, metric: str) -> float:
    [s] = [s for s in batch.series if s.metric == metric]
    return s.values[0]


def test_outage_and_restart_lose_nothing_and_seq_increases(
    tmp_path: Path, ingest_server: IngestServer, client: httpx.Client
) -> None:
    ticks = Ticks()
    loop = make_loop(tmp_path, ingest_server, client, [ticks])
    for _ in range(2):
        assert loop.run_once().sent == 1
    ingest_server.stop()  # the aggregator goes down
    for pending in (1, 2, 3):
        result = loop.run_once()
        assert (result.sent, result.pending) == (0, pending)
        assert result.error is not None and "cannot reach" in result.error

    # the agent restarts during the outage: a new loop on the same spool directory
    again = make_loop(tmp_path, ingest_server, client, [ticks])
    assert again.spool.agent_id == loop.spool.agent_id
    ingest_server.start()
    result = again.run_once()
    assert (result.sent, result.rejected, result.pending) == (4, 0, 0)

    got = ingest_server.batches
    assert [b.seq for b in got] == [0, 1, 2, 3, 4, 5]
    assert {b.agent_id for b in got} == {loop.spool.agent_id}
    assert [series_value(b, "test_tick") for b in got] == [0, 1, 2, 3, 4, 5]
    assert [series_value(b, "agent_spool_batches") for b in got] == [0, 0, 0, 1, 2, 3]
    assert [b.sent_at for b in got] == sorted(b.sent_at for b in got)
    assert all(b.facility == "test-af" and b.node == "n1" for b in got)
    headers = ingest_server.requests[-1].headers
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Content-Type"] == wire.CONTENT_TYPE
    assert headers["Content-Encoding"] == "gzip"
    assert ingest_server.requests[-1].path == "/api/v1/ingest"
    assert list((tmp_path / "batches").iterdir()) == []


def test_422_goes_to_rejected_and_the_next_batch_is_sent(
    tmp_path: Path,
    ingest_server: IngestServer,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = make_loop(tmp_path, ingest_server, client, [Ticks()])
    ingest_server.mode = "422"
    with caplog.at_level(logging.ERROR):
        result = loop.run_once()
    assert (result.sent, result.rejected, result.pending) == (0, 1, 0)
    message = f"{REJECT_DETAIL['field']}: {REJECT_DETAIL['message']}"
    assert message in caplog.text
    rejected = tmp_path / "rejected" / "000000000000-3.json.gz"
    assert wire.decode(rejected.read_bytes()).seq == 0
    assert (tmp_path / "rejected" / (rejected.name + ".reason")).read_text() == (
        f"HTTP 422: {message}\n"
    )

    ingest_server.mode = "ok"
    assert loop.run_once().sent == 1
    assert ingest_server.seqs() == [1]


def test_503_backs_off_exponentially_with_jitter_and_keeps_the_spool(
    tmp_path: Path, ingest_server: IngestServer, client: httpx.Client
) -> None:
    mono = FakeClock()
    loop = make_loop(tmp_path, ingest_server, client, [Ticks()], monotonic=mono, backoff_max=20.0)
    ingest_server.mode = "503"
    result = loop.run_once()
    assert result.pending == 1 and "HTTP 503" in (result.error or "")
    delays = [loop.next_attempt - mono.t]
    assert len(ingest_server.requests) == 1

    skipped = loop.flush()  # inside the backoff: no request at all
    assert (skipped.error, skipped.pending) == ("backing off", 1)
    assert len(ingest_server.requests) == 1

    for _ in range(6):
        mono.t = loop.next_attempt
        assert loop.flush().error is not None
        delays.append(loop.next_attempt - mono.t)
    assert len(ingest_server.requests) == 7
    for n, delay in enumerate(delays):
        full = min(20.0, 1.0 * 2**n)
        assert full / 2 <= delay <= full
    assert delays[-1] <= 20.0 and delays[3] > delays[0]

    ingest_server.mode = "ok"
    mono.t = loop.next_attempt
    assert loop.flush().sent == 1
    assert loop.failures == 0
    assert ingest_server.seqs() == [0]


def test_401_keeps_the_spool_and_says_so(
    tmp_path: Path,
    ingest_server: IngestServer,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = make_loop(tmp_path, ingest_server, client, [Ticks()])
    ingest_server.mode = "401"
    with caplog.at_level(logging.ERROR):
        assert loop.run_once().pending == 1
    assert "refused the agent's token (HTTP 401: unknown agent token)" in caplog.text
    assert list((tmp_path / "rejected").iterdir()) == []
    ingest_server.mode = "ok"
    assert loop.run_once().sent == 2
    assert ingest_server.seqs() == [0, 1]


def test_duplicate_answer_deletes_the_batch(
    tmp_path: Path, ingest_server: IngestServer, client: httpx.Client
) -> None:
    loop = make_loop(tmp_path, ingest_server, client, [Ticks()])
    item = loop.spool_batch()
    copy = item.path.read_bytes()
    assert loop.flush().sent == 1
    item.path.write_bytes(copy)  # as if the agent died after the send, before the delete
    result = loop.flush()
    assert (result.sent, result.pending) == (1, 0)
    assert ingest_server.seqs() == [0]
    assert len(ingest_server.requests) == 2


def test_failing_probe_is_logged_and_the_others_carry_on(
    tmp_path: Path,
    ingest_server: IngestServer,
    client: httpx.Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        loop = make_loop(tmp_path, ingest_server, client, [Boom(), Disabled(), Ticks()])
        assert loop.run_once().sent == 1
    assert "probe gpu is not ready (no NVML library)" in caplog.text
    assert "probe boom failed" in caplog.text and "source went away" in caplog.text
    [batch] = ingest_server.batches
    assert series_value(batch, "test_tick") == 0


def test_dropped_samples_are_reported_in_the_next_batch(
    tmp_path: Path, ingest_server: IngestServer, client: httpx.Client
) -> None:
    ingest_server.stop()
    loop = make_loop(tmp_path, ingest_server, client, [Ticks()])
    first = loop.spool_batch()
    loop.spool.max_bytes = first.size  # room for one batch: each new one drops the older
    loop.spool_batch()
    assert loop.spool.dropped_samples == first.samples == 3
    ingest_server.start()
    loop.spool.max_bytes = 2**20
    assert loop.run_once().sent == 2
    got = ingest_server.batches
    assert [b.seq for b in got] == [1, 2]
    assert series_value(got[-1], "agent_spool_dropped_samples") == 3
    [dropped] = [s for s in got[-1].series if s.metric == "agent_spool_dropped_samples"]
    assert dropped.created == loop.spool.created
    assert (dropped.unit, dropped.kind) == ("1", "counter")


def test_a_batch_that_cannot_be_spooled_is_counted_and_reported(
    tmp_path: Path,
    ingest_server: IngestServer,
    client: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full disk (ENOSPC on the batch's write): the batch's samples count as dropped, in
    memory even when state.json cannot be written either, and the next batch that can be
    spooled carries the count."""
    import errno

    from afmon.collectors import spool as spool_module

    loop = make_loop(tmp_path, ingest_server, client, [Ticks()])
    real_write = spool_module._write_durably

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module, "_write_durably", full)
    with pytest.raises(OSError, match="No space left"):
        loop.spool_batch()
    assert loop.spool.dropped_samples == 3  # test_tick + the agent's own two series
    assert not list((tmp_path / "batches").glob(".*.tmp"))
    monkeypatch.setattr(spool_module, "_write_durably", real_write)
    assert loop.run_once().sent == 1
    [batch] = ingest_server.batches
    assert series_value(batch, "agent_spool_dropped_samples") == 3
    assert Spool(tmp_path).dropped_samples == 3  # saved once the disk had room


def test_run_forever_keeps_the_interval_backs_off_and_flushes_on_stop(
    tmp_path: Path, ingest_server: IngestServer, client: httpx.Client
) -> None:
    mono = FakeClock()
    stop = threading.Event()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        mono.t += seconds
        if mono.t >= 1059.0:
            ingest_server.mode = "ok"
            stop.set()

    ingest_server.mode = "503"
    loop = make_loop(
        tmp_path, ingest_server, client, [Ticks()], monotonic=mono, sleep=sleep, interval=15.0
    )
    loop.run_forever(stop)
    # collections at 1000, 1015, 1030, 1045; retries only when the backoff allows
    assert ingest_server.seqs() == [0, 1, 2, 3]
    assert all(0 <= s <= 15.0 for s in sleeps)
    failed = len(ingest_server.requests) - 4
    assert 4 <= failed <= 8  # 1 s, 2 s, 4 s, ... apart: not one try per wake-up
    assert loop.spool.pending() == []


def test_run_forever_stops_promptly_in_real_time(
    tmp_path: Path, ingest_server: IngestServer, client: httpx.Client
) -> None:
    loop = make_loop(tmp_path, ingest_server, client, [Ticks()], interval=0.05)
    loop.clock = time.time
    stop = threading.Event()
    thread = threading.Thread(target=loop.run_forever, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 5
    while len(ingest_server.batches) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    seqs = ingest_server.seqs()
    assert len(seqs) >= 3 and seqs == list(range(len(seqs)))
    assert loop.spool.pending() == []
