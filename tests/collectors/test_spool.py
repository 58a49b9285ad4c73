from __future__ import annotations

import gzip
import logging
import uuid
from pathlib import Path

import pytest

from afmon.collectors import wire
from afmon.collectors.spool import Spool


def make_batch(spool: Spool, samples: int, t0: float = 1_700_000_000.0) -> wire.Batch:
    """A valid batch holding exactly `samples` samples, with the spool's next seq."""
    series = wire.Series(
        metric="test_value",
        unit="1",
        kind="gauge",
        labels={"node": "n1"},
        times=[t0 + i for i in range(samples)],
        values=[float(i % 7) for i in range(samples)],
    )
    return wire.Batch(
        version=wire.WIRE_VERSION,
        agent_id=spool.agent_id,
        facility="test-af",
        node="n1",
        seq=spool.allocate_seq(),
        sent_at=t0,
        series=[series],
    )


def test_restart_keeps_agent_id_seq_and_pending_batches(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    agent_id = spool.agent_id
    assert str(uuid.UUID(agent_id)) == agent_id
    first = make_batch(spool, 3)
    second = make_batch(spool, 5)
    spool.put(first)
    spool.put(second)
    assert spool.allocate_seq() == 2  # used, never written: must still never come back

    again = Spool(tmp_path)
    assert again.agent_id == agent_id
    assert [(b.seq, b.samples) for b in again.pending()] == [(0, 3), (1, 5)]
    body = again.load(again.pending()[0])
    assert body is not None and body[:2] == b"\x1f\x8b"
    assert wire.decode(body) == first
    assert again.allocate_seq() == 3


def test_pending_is_oldest_first_by_seq(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    batches = [make_batch(spool, 1) for _ in range(12)]
    for b in reversed(batches):  # written newest first: order must come from the seq
        spool.put(b)
    assert [b.seq for b in spool.pending()] == list(range(12))


def test_seq_never_goes_back_even_if_state_lags_the_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for _ in range(6):
        spool.put(make_batch(spool, 1))
    (tmp_path / "state.json").write_text('{"next_seq": 2, "dropped_samples": 0, "created": 1.0}')
    assert Spool(tmp_path).allocate_seq() == 6


def test_corrupt_state_takes_a_new_agent_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = Spool(tmp_path).agent_id
    (tmp_path / "state.json").write_text("{not json")
    with caplog.at_level(logging.ERROR):
        spool = Spool(tmp_path)
    assert spool.agent_id != old
    assert "taking a new agent id" in caplog.text
    assert Spool(tmp_path).agent_id == spool.agent_id  # and keeps it from then on


def test_overflow_drops_oldest_and_counts_their_samples_exactly(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for n in (10, 20, 30, 40, 50):
        spool.put(make_batch(spool, n))
    sizes = {b.seq: b.size for b in spool.pending()}
    assert spool.dropped_samples == 0

    # Reopen with a cap that holds the three newest batches plus a new one of known size.
    newest = make_batch(spool, 60)
    new_size = len(wire.encode(newest, compress=True))
    cap = sizes[2] + sizes[3] + sizes[4] + new_size
    capped = Spool(tmp_path, max_bytes=cap)
    capped.put(newest)

    assert [(b.seq, b.samples) for b in capped.pending()] == [(2, 30), (3, 40), (4, 50), (5, 60)]
    assert sum(b.size for b in capped.pending()) == cap
    assert capped.dropped_samples == 10 + 20
    assert Spool(tmp_path).dropped_samples == 30  # persisted

    small = make_batch(capped, 7)
    assert len(wire.encode(small, compress=True)) < sizes[2]
    capped.put(small)  # over the cap again: exactly the oldest (seq 2, 30 samples) goes
    assert [b.seq for b in capped.pending()] == [3, 4, 5, 6]
    assert capped.dropped_samples == 60


def test_single_batch_over_the_cap_is_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10)
    spool.put(make_batch(spool, 100))
    assert [b.samples for b in spool.pending()] == [100]
    spool.put(make_batch(spool, 4))
    assert [b.samples for b in spool.pending()] == [4]
    assert spool.dropped_samples == 100


def test_corrupt_files_are_moved_aside_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path)
    good = spool.put(make_batch(spool, 2))
    garbage = spool.put(make_batch(spool, 2))
    garbage.path.write_bytes(b"\x1f\x8b not really gzip")
    truncated = spool.put(make_batch(spool, 2))
    truncated.path.write_bytes(truncated.path.read_bytes()[:-12])
    not_wire = spool.put(make_batch(spool, 2))
    not_wire.path.write_bytes(gzip.compress(b'{"version": 1}'))
    (spool.batches_dir / "notes.txt").write_text("left by someone")
    (spool.batches_dir / ".000000000099-1.json.gz.tmp").write_bytes(b"half")

    with caplog.at_level(logging.ERROR):
        reopened = Spool(tmp_path)  # removes the half-written temp file
        items = reopened.pending()  # moves notes.txt aside
        assert [b.seq for b in items] == [0, 1, 2, 3]
        loaded = [reopened.load(b) for b in items]

    assert loaded[0] == good.path.read_bytes()
    assert loaded[1:] == [None, None, None]
    assert [b.seq for b in reopened.pending()] == [0]
    rejected = sorted(p.name for p in reopened.rejected_dir.iterdir())
    assert rejected == sorted(
        [
            garbage.path.name,
            garbage.path.name + ".reason",
            truncated.path.name,
            truncated.path.name + ".reason",
            not_wire.path.name,
            not_wire.path.name + ".reason",
            "notes.txt",
            "notes.txt.reason",
        ]
    )
    assert (
        "corrupt spool file"
        in (reopened.rejected_dir / (not_wire.path.name + ".reason")).read_text()
    )
    assert not list(reopened.batches_dir.glob(".*.tmp"))
    assert caplog.text.count("moving") == 4
    assert Spool(tmp_path).allocate_seq() == 4  # seqs of rejected batches are not reused either


def test_rejected_folder_is_pruned(tmp_path: Path) -> None:
    spool = Spool(tmp_path, rejected_keep=2)
    items = [spool.put(make_batch(spool, 1)) for _ in range(4)]
    for item in items:
        spool.reject(item, "HTTP 422: bad")
    kept = sorted(p.name for p in spool.rejected_dir.iterdir() if not p.name.endswith(".reason"))
    assert len(kept) == 2
    assert len(list(spool.rejected_dir.glob("*.reason"))) == 2
    assert spool.pending() == []
