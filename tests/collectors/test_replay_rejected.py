"""`afmon-agent rejected list | requeue`: batches the server refused whole stay replayable.

With a real `afmon serve` and a real PushLoop/Spool: a batch over the server's series limit is
refused whole and lands in rejected/; once the limit is raised, a requeue through the command
line puts it back and the agent sends it, and the ledger has it exactly once (a second requeue
is answered `duplicate`). `--split N` puts it back as pieces under new seqs instead.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from afmon.collectors import spool as spooling
from afmon.collectors import wire
from afmon.collectors.probes.base import ProbeOutput, sample
from afmon.collectors.push import PushLoop
from afmon.collectors.spool import Spool

REPO = Path(__file__).resolve().parents[2]


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "afmon.collectors.agent", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=30,
    )


class Gauges:
    """`width` gauge series per collection (the push loop adds its own two)."""

    name = "gauges"
    state = "ready"

    def __init__(self, width: int) -> None:
        self.width = width
        self.n = 0

    def collect(self, now: float) -> ProbeOutput:
        self.n += 1
        return ProbeOutput(
            [
                sample(
                    "test_gauge", {"node": "wn1", "i": str(i)}, now, self.n, unit="1", kind="gauge"
                )
                for i in range(self.width)
            ]  # fmt: skip
        )


def make_loop(server, spool: Spool, client: httpx.Client, width: int = 1) -> PushLoop:
    return PushLoop(probes=[Gauges(width)], spool=spool, client=client, server_url=server.url,
                    token=server.token, facility=server.facility, node="wn1")  # fmt: skip


def ledger(db_path: Path, agent_id: str) -> tuple[list[int], int]:
    """The seqs the server claimed for this agent, and the test_gauge samples it stored."""
    db = sqlite3.connect(db_path)
    try:
        seqs = [
            s
            for (s,) in db.execute(
                "SELECT seq FROM applied_batch WHERE agent_id = ? ORDER BY seq", (agent_id,)
            )
        ]
        (samples,) = db.execute(
            "SELECT COUNT(*) FROM sample JOIN series ON series.id = sample.series_id "
            "WHERE series.metric = 'test_gauge'"
        ).fetchone()
    finally:
        db.close()
    return seqs, samples  # fmt: skip


def test_requeue_after_the_limit_is_raised_applies_it_exactly_once(
    server_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    strict = server_factory(dashboard="false", limit_series_per_batch="2")
    with httpx.Client(timeout=30) as client:
        refused = make_loop(strict, spool, client).run_once()  # 1 + the loop's 2 = 3 series
    assert (refused.sent, refused.rejected, refused.pending) == (0, 1, 0)
    assert [p.name for p in spool.rejected_dir.glob("*.json.gz")] == ["000000000000-3.json.gz"]
    strict.stop()

    listed = agent("rejected", "list", "--spool-dir", str(spool_dir))
    assert listed.returncode == 0, listed.stderr
    header, line = listed.stdout.splitlines()
    assert header.split() == ["SEQ", "SAMPLES", "SERIES", "REJECTED", "REASON"]
    assert line.split()[:3] == ["0", "3", "3"]
    assert "HTTP 422: $.series: 3 series in one batch" in line
    assert "AFMON_LIMIT_SERIES_PER_BATCH" in line
    backup = tmp_path / "backup"  # what a crash between requeue's link and unlink would leave
    shutil.copytree(spool.rejected_dir, backup)

    relaxed = server_factory(dashboard="false", limit_series_per_batch="100")
    with httpx.Client(timeout=30) as client:
        loop = make_loop(relaxed, spool, client)
        loop.spool_batch()  # seq 1, spooled after the refusal: sent after seq 0
        requeued = agent("rejected", "requeue", "0", "--spool-dir", str(spool_dir))
        assert requeued.returncode == 0, requeued.stderr
        assert requeued.stdout.strip() == "requeued seq 0 (3 samples)"
        assert list(spool.rejected_dir.iterdir()) == []
        assert [b.seq for b in spool.pending()] == [0, 1]
        with caplog.at_level(logging.DEBUG, logger="afmon.collectors.push"):
            sent = loop.flush(force=True)
        assert (sent.sent, sent.rejected, sent.pending) == (2, 0, 0)
        answers = [m for m in caplog.messages if m.startswith("batch seq ")]
        assert answers == ["batch seq 0 applied (3 samples)", "batch seq 1 applied (3 samples)"]
        assert ledger(tmp_path / "server.sqlite", spool.agent_id) == ([0, 1], 2)

        # requeued again (from the copy): the server's (agent_id, seq) claim answers duplicate
        for f in backup.iterdir():
            shutil.copy2(f, spool.rejected_dir / f.name)
        again = agent("rejected", "requeue", "--all", "--spool-dir", str(spool_dir))
        assert again.returncode == 0, again.stderr
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="afmon.collectors.push"):
            assert loop.flush(force=True).sent == 1
        assert [m for m in caplog.messages if m.startswith("batch seq ")] == [
            "batch seq 0 duplicate (3 samples)"
        ]
    assert ledger(tmp_path / "server.sqlite", spool.agent_id) == ([0, 1], 2)  # not twice


def test_split_puts_a_batch_over_the_limit_back_as_pieces_under_new_seqs(
    server_factory, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    server = server_factory(dashboard="false", limit_series_per_batch="2")
    with httpx.Client(timeout=30) as client:
        assert make_loop(server, spool, client, width=3).run_once().rejected == 1  # 5 series
        [refused] = spool.rejected_dir.glob("*.json.gz")
        original = wire.decode(gzip.decompress(refused.read_bytes()))

        running = Spool(spool_dir, lock=True)  # stands for a running agent
        busy = agent("rejected", "requeue", "--split", "2", "0", "--spool-dir", str(spool_dir))
        assert busy.returncode == 2
        assert "is in use by another agent (pid" in busy.stderr and "stop it" in busy.stderr
        assert len(list(spool.rejected_dir.glob("*.json.gz"))) == 1  # nothing moved
        os.close(running._lock_fd)  # the agent stops

        split = agent("rejected", "requeue", "--split", "2", "0", "--spool-dir", str(spool_dir))
        assert split.returncode == 0, split.stderr
        assert split.stdout.strip() == "requeued seq 0 (5 samples) as seq 1, 2, 3"
        assert list(spool.rejected_dir.iterdir()) == []

        restarted = Spool(spool_dir)  # the agent starts again: it sees the seqs the split used
        pieces = [wire.decode(gzip.decompress(b.path.read_bytes())) for b in restarted.pending()]
        assert [len(p.series) for p in pieces] == [2, 2, 1]
        assert [s for p in pieces for s in p.series] == original.series
        assert {(p.agent_id, p.facility, p.node, p.sent_at) for p in pieces} == {
            (original.agent_id, original.facility, original.node, original.sent_at)
        }
        assert restarted.allocate_seq() == 4

        result = make_loop(server, restarted, client).flush(force=True)
    assert (result.sent, result.rejected, result.pending) == (3, 0, 0)
    # the original seq was never applied; its 3 gauge samples are in the ledger once each
    assert ledger(tmp_path / "server.sqlite", spool.agent_id) == ([1, 2, 3], 3)


def _rejected_batch(spool: Spool, width: int) -> spooling.RejectedBatch:
    series = [
        wire.Series(metric="test_gauge", unit="1", kind="gauge", labels={"i": str(i)},
                    times=[1_700_000_000.0], values=[float(i)])
        for i in range(width)
    ]  # fmt: skip
    batch = wire.Batch(version=wire.WIRE_VERSION, agent_id=spool.agent_id, facility="test-af",
                       node="n1", seq=spool.allocate_seq(), sent_at=1_700_000_000.0,
                       series=series)  # fmt: skip
    spool.reject(spool.put(batch), "HTTP 422: $.series: too many")
    [item] = [r for r in spooling.rejected(spool.directory)[0] if r.seq == batch.seq]
    return item


def test_an_interrupted_split_is_finished_with_the_same_seqs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path, lock=True)
    item = _rejected_batch(spool, 5)
    real_put, calls = Spool.put, []

    def crash_after_one(self: Spool, batch: wire.Batch) -> spooling.SpooledBatch:
        if calls:
            raise OSError("power cut")
        calls.append(batch.seq)
        return real_put(self, batch)

    monkeypatch.setattr(Spool, "put", crash_after_one)
    with pytest.raises(OSError, match="power cut"):
        spooling.split(spool, item, 2)
    monkeypatch.undo()
    assert [b.seq for b in spool.pending()] == [1]  # one piece written, the original kept
    [again] = spooling.rejected(tmp_path)[0]
    assert spooling.split_marker(again) == (2, range(1, 4))
    assert "split 2 into seqs 1-3" in again.reason
    with pytest.raises(spooling.RequeueError, match="interrupted"):
        spooling.requeue(tmp_path, again)  # never sent whole beside its pieces

    pieces = spooling.split(spool, again, 3)  # the recorded split wins over a new N
    assert [p.seq for p in pieces] == [1, 2, 3]
    assert [p.samples for p in spool.pending()] == [2, 2, 1]
    assert spooling.rejected(tmp_path) == ([], [])
    assert spool.allocate_seq() == 4


def test_requeue_errors_are_clear_and_move_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    good = _rejected_batch(spool, 1)
    corrupt = _rejected_batch(spool, 1)
    corrupt.path.write_bytes(b"\x1f\x8b not gzip")
    (spool.rejected_dir / "notes.txt").write_text("moved aside: not a batch name")

    listed = agent("rejected", "list", "--spool-dir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [ln.split()[:3] for ln in lines[1:3]] == [["0", "1", "1"], ["1", "1", "?"]]
    assert "1 other files in rejected/ are not batches: notes.txt" in lines[3]

    result = agent("rejected", "requeue", "1", "7", "--spool-dir", str(tmp_path))
    assert result.returncode == 1
    assert "seq 7 is not in" in result.stderr
    assert "000000000001-1.json.gz is not a readable batch" in result.stderr
    assert spool.pending() == [] and corrupt.path.exists()

    # a pending batch with the same seq (another agent id, after a lost state.json) is kept
    clash = spool.batches_dir / "000000000000-9.json.gz"
    clash.write_bytes(b"theirs")
    result = agent("rejected", "requeue", "--all", "--spool-dir", str(tmp_path))
    assert result.returncode == 1
    assert "seq 0: batches/ already holds 000000000000-9.json.gz" in result.stderr
    assert clash.read_bytes() == b"theirs" and good.path.exists()
    clash.unlink()
    result = agent("rejected", "requeue", "--all", "--spool-dir", str(tmp_path))
    assert result.returncode == 1  # seq 1 still cannot be read; seq 0 went back
    assert "requeued seq 0 (1 samples)" in result.stdout
    assert [b.seq for b in spool.pending()] == [0]

    missing = agent("rejected", "list", "--spool-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no agent spool at" in missing.stderr
    assert not (tmp_path / "nowhere").exists()


def test_a_plain_requeue_works_beside_a_running_agent(tmp_path: Path) -> None:
    running = Spool(tmp_path, lock=True)
    item = _rejected_batch(running, 1)
    result = agent("rejected", "requeue", str(item.seq), "--spool-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert [b.seq for b in running.pending()] == [item.seq]  # the agent's next flush sends it
    with pytest.raises(spooling.SpoolBusy):
        Spool(tmp_path, lock=True)  # a second agent on the same spool
