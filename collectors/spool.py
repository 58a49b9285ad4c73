"""The agent's durable spool: every batch is on disk before its first send attempt.

Layout of the spool directory:

    agent_id                    the agent's UUID, created once
    state.json                  next sequence number, dropped-samples counter
    batches/SEQ-SAMPLES.json.gz one gzip'd wire batch per file (oldest = lowest seq)
    rejected/                   batches the server (or the spool) refused, with a .reason file
    lock                        flock'd by the agent that owns the spool (its pid inside)

Files are written to a temporary name, fsync'd and renamed, so a crash leaves either the whole
file or none. The sequence number is persisted before a batch with it is written, so a restarted
agent never reuses one. If state.json is lost or corrupt, the seq already used is unknown: the
spool then takes a new agent id, which gives the aggregator a fresh (agent_id, seq) space.

A batch in rejected/ can be put back by the operator (`afmon-agent rejected requeue`): it goes
back to batches/ under its own seq, so the aggregator's exactly-once claim on (agent_id, seq)
still holds, or, split (`--split N`), as pieces under new seqs. See `requeue` and `split`.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import logging
import math
import os
import re
import time
import uuid
import zlib
from pathlib import Path
from typing import NamedTuple

import msgspec

from afmon.collectors import wire

log = logging.getLogger(__name__)

_BATCH_RE = re.compile(r"^(\d{12})-(\d+)\.json\.gz$")
DEFAULT_MAX_BYTES = 64 * 2**20


class SpooledBatch(NamedTuple):
    path: Path
    seq: int
    samples: int
    size: int


class RejectedBatch(NamedTuple):
    path: Path
    seq: int
    samples: int
    rejected_at: float  # when it was moved aside (its .reason file's mtime)
    reason: str


class SpoolBusy(OSError):
    """The spool is locked by another process (a running agent)."""

    def __init__(self, directory: Path, pid: str) -> None:
        super().__init__(f"spool {directory} is in use by another agent (pid {pid or '?'})")
        self.pid = pid


class RequeueError(Exception):
    """A rejected batch that cannot be put back; the message says why. Nothing was moved."""


class _State(msgspec.Struct):
    next_seq: int = 0
    dropped_samples: int = 0
    created: float = 0.0  # when dropped_samples started from zero


def _lock(directory: Path) -> int:
    """flock SPOOL_DIR/lock and write our pid in it; the lock goes with the process."""
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise SpoolBusy(directory, pid) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Spool:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        rejected_keep: int = 200,
        lock: bool = False,
    ) -> None:
        """`lock`: hold the spool's lock for the life of this process (the agent does), so a
        second agent, or a `requeue --split` that allocates seqs, cannot use it meanwhile;
        raises SpoolBusy if another process holds it."""
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.rejected_keep = rejected_keep
        self.batches_dir = self.directory / "batches"
        self.rejected_dir = self.directory / "rejected"
        for d in (self.directory, self.batches_dir, self.rejected_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock(self.directory) if lock else None  # before anything is touched
        for leftover in self.batches_dir.glob(".*.tmp"):
            leftover.unlink()  # a write that never completed: never spooled, never sent
        self._state, fresh_id = self._load_state()
        self.agent_id = self._load_agent_id(rotate=fresh_id)
        used = [b.seq for b in self.pending()] + self._rejected_seqs()
        if used and max(used) >= self._state.next_seq:
            self._state.next_seq = max(used) + 1
            self._save_state()

    # -- identity and sequence ------------------------------------------------------------

    def _load_state(self) -> tuple[_State, bool]:
        path = self.directory / "state.json"
        id_exists = (self.directory / "agent_id").exists()
        if path.exists():
            try:
                return msgspec.json.decode(path.read_bytes(), type=_State), False
            except (OSError, msgspec.DecodeError) as exc:
                log.error("spool state %s is corrupt (%s): taking a new agent id", path, exc)
                state = _State(created=time.time())
                _write_durably(path, msgspec.json.encode(state))
                return state, id_exists
        state = _State(created=time.time())
        _write_durably(path, msgspec.json.encode(state))
        if id_exists:
            log.error("spool state %s is missing: taking a new agent id", path)
        return state, id_exists

    def _load_agent_id(self, *, rotate: bool) -> str:
        path = self.directory / "agent_id"
        if not rotate and path.exists():
            text = path.read_text().strip()
            try:
                return str(uuid.UUID(text))
            except ValueError:
                log.error("agent id file %s is corrupt: taking a new agent id", path)
        agent_id = str(uuid.uuid4())
        _write_durably(path, agent_id.encode() + b"\n")
        log.info("agent id %s (spool %s)", agent_id, self.directory)
        return agent_id

    def _save_state(self) -> None:
        _write_durably(self.directory / "state.json", msgspec.json.encode(self._state))

    def allocate_seq(self) -> int:
        """Return the next sequence number, persisted as used before it is handed out."""
        seq = self._state.next_seq
        self._state.next_seq = seq + 1
        self._save_state()
        return seq

    def allocate_seqs(self, count: int) -> range:
        """`count` consecutive sequence numbers, persisted as used before they are handed out."""
        first = self._state.next_seq
        self._state.next_seq = first + count
        self._save_state()
        return range(first, first + count)

    def count_dropped(self, samples: int) -> None:
        """Count samples that could not be spooled: in memory at once, on disk when
        state.json can be written (it may not, on a full disk; a later save carries it)."""
        self._state.dropped_samples += samples
        with contextlib.suppress(OSError):
            self._save_state()

    @property
    def dropped_samples(self) -> int:
        return self._state.dropped_samples

    @property
    def created(self) -> float:
        """When the dropped-samples counter started from zero."""
        return self._state.created

    # -- batches --------------------------------------------------------------------------

    def put(self, batch: wire.Batch) -> SpooledBatch:
        """Write a batch durably, then enforce the byte cap by dropping the oldest batches.

        A batch that cannot be written (a full or read-only disk) raises OSError and its
        samples count as dropped: in memory at once, on disk when it can be written again,
        and in the agent's `agent_spool_dropped_samples` of the next batch that is sent."""
        data = wire.encode(batch, compress=True)
        path = self.batches_dir / f"{batch.seq:012d}-{batch.sample_count}.json.gz"
        try:
            _write_durably(path, data)
        except OSError:
            with contextlib.suppress(OSError):
                path.with_name(f".{path.name}.tmp").unlink(missing_ok=True)
            self.count_dropped(batch.sample_count)
            raise
        self._enforce_cap()
        return SpooledBatch(path, batch.seq, batch.sample_count, len(data))

    def pending(self) -> list[SpooledBatch]:
        """Spooled batches, oldest first. Files that are not ours are moved aside."""
        out: list[SpooledBatch] = []
        for entry in os.scandir(self.batches_dir):
            if entry.name.startswith("."):
                continue
            match = _BATCH_RE.match(entry.name)
            if match is None:
                self._move_aside(Path(entry.path), "file name is not SEQ-SAMPLES.json.gz")
                continue
            seq, samples = int(match.group(1)), int(match.group(2))
            out.append(SpooledBatch(Path(entry.path), seq, samples, entry.stat().st_size))
        out.sort(key=lambda b: b.seq)
        return out

    def load(self, item: SpooledBatch) -> bytes | None:
        """The gzip'd wire bytes of a spooled batch, checked; None if it cannot be sent.

        A corrupt file is moved aside; an unreadable one is left for the next round.
        """
        try:
            data = item.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("cannot read spooled batch %s: %s", item.path, exc)
            return None
        try:
            wire.decode(gzip.decompress(data))
        except (EOFError, zlib.error, gzip.BadGzipFile, wire.WireError) as exc:
            self._move_aside(item.path, f"corrupt spool file: {exc}")
            return None
        return data

    def delete(self, item: SpooledBatch) -> None:
        item.path.unlink(missing_ok=True)

    def reject(self, item: SpooledBatch, reason: str) -> None:
        self._move_aside(item.path, reason)

    def _move_aside(self, path: Path, reason: str) -> None:
        target = self.rejected_dir / path.name
        log.error("moving %s to %s: %s", path.name, self.rejected_dir, reason)
        try:
            os.replace(path, target)
            target.with_name(target.name + ".reason").write_text(reason + "\n")
        except FileNotFoundError:
            return
        self._prune_rejected()

    def _prune_rejected(self) -> None:
        files = []
        for entry in os.scandir(self.rejected_dir):
            if entry.name.endswith(".reason"):
                continue
            try:  # `afmon-agent rejected requeue` may take one away meanwhile
                files.append((entry.stat().st_mtime_ns, entry.name, Path(entry.path)))
            except FileNotFoundError:
                continue
        files.sort()
        for _, _, old in files[: max(0, len(files) - self.rejected_keep)]:
            old.unlink(missing_ok=True)
            old.with_name(old.name + ".reason").unlink(missing_ok=True)

    def _rejected_seqs(self) -> list[int]:
        return [
            int(m.group(1))
            for p in self.rejected_dir.iterdir()
            if (m := _BATCH_RE.match(p.name)) is not None
        ]

    def _enforce_cap(self) -> None:
        items = self.pending()
        total = sum(b.size for b in items)
        victims: list[SpooledBatch] = []
        while total > self.max_bytes and len(items) > 1:
            victims.append(items.pop(0))
            total -= victims[-1].size
        if not victims:
            return
        dropped = sum(v.samples for v in victims)
        self._state.dropped_samples += dropped
        self._save_state()  # count first: a crash in between over-counts, never hides a loss
        for victim in victims:
            victim.path.unlink(missing_ok=True)
        log.warning(
            "spool over %d bytes: dropped the %d oldest batches (%d samples; %d since %s)",
            self.max_bytes,
            len(victims),
            dropped,
            self._state.dropped_samples,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._state.created)),
        )


# -- rejected batches: listing and putting back (`afmon-agent rejected`) -------------------------
#
# These work on the directory, not on a Spool: listing and a plain requeue never allocate a seq
# or write state.json, so they are safe while the agent runs (a requeue is a rename, which the
# agent's next flush sees). Only a split allocates seqs and needs the spool's lock.

_SPLIT_RE = re.compile(r"^split (\d+) into seqs (\d+)-(\d+)$", re.MULTILINE)


def rejected(directory: str | os.PathLike[str]) -> tuple[list[RejectedBatch], list[Path]]:
    """The batches in SPOOL_DIR/rejected/, lowest seq first, and the other files there (moved
    aside because their name was not a batch's)."""
    rejected_dir = Path(directory) / "rejected"
    batches: list[RejectedBatch] = []
    others: list[Path] = []
    if not rejected_dir.is_dir():
        return batches, others
    for path in rejected_dir.iterdir():
        if path.name.startswith(".") or path.name.endswith(".reason"):
            continue
        match = _BATCH_RE.match(path.name)
        if match is None:
            others.append(path)
            continue
        reason_file = path.with_name(path.name + ".reason")
        try:
            reason = reason_file.read_text().strip()
            when = reason_file.stat().st_mtime
        except OSError:
            reason, when = "(no .reason file)", path.stat().st_mtime
        batches.append(RejectedBatch(path, int(match.group(1)), int(match.group(2)), when, reason))
    batches.sort(key=lambda b: b.seq)
    return batches, sorted(others)


def read_rejected(item: RejectedBatch) -> wire.Batch:
    """The batch in a rejected file; RequeueError if it cannot be read back (never sendable)."""
    try:
        data = item.path.read_bytes()
    except FileNotFoundError:
        raise RequeueError(f"seq {item.seq}: {item.path} is gone (pruned?)") from None
    except OSError as exc:
        raise RequeueError(f"seq {item.seq}: cannot read {item.path}: {exc}") from None
    try:
        batch = wire.decode(gzip.decompress(data), strict=False)  # records: the server judges
    except (EOFError, zlib.error, gzip.BadGzipFile, wire.WireError) as exc:
        raise RequeueError(
            f"seq {item.seq}: {item.path.name} is not a readable batch ({exc}); it can never "
            "be sent: delete it"
        ) from None
    if batch.seq != item.seq:
        raise RequeueError(f"seq {item.seq}: the file holds seq {batch.seq}; not requeued")
    return batch


def split_marker(item: RejectedBatch) -> tuple[int, range] | None:
    """(series per piece, seqs) of a split of this batch that was started and not finished."""
    match = _SPLIT_RE.search(item.reason)
    if match is None:
        return None
    return int(match.group(1)), range(int(match.group(2)), int(match.group(3)) + 1)


def requeue(directory: str | os.PathLike[str], item: RejectedBatch) -> Path:
    """Put a rejected batch back into batches/ under its own seq and name; return its path.

    Its body is unchanged, so the aggregator's claim on (agent_id, seq) still decides: a batch
    it never applied (a whole refusal writes nothing) is applied now; one it did apply is
    answered `duplicate`. Never overwrites a pending batch (a link, then the unlink: a crash
    in between leaves it in both places, and sending it twice is a `duplicate`)."""
    read_rejected(item)
    if split_marker(item) is not None:
        raise RequeueError(f"seq {item.seq}: a split of it was interrupted; finish it with --split")
    batches_dir = Path(directory) / "batches"
    target = batches_dir / item.path.name
    clash = [p.name for p in batches_dir.glob(f"{item.seq:012d}-*.json.gz")]
    if clash:
        raise RequeueError(
            f"seq {item.seq}: batches/ already holds {clash[0]} (a batch of another agent id "
            "with the same seq?); not requeued"
        )
    try:
        os.link(item.path, target)
    except FileExistsError:
        raise RequeueError(f"seq {item.seq}: batches/{target.name} already exists") from None
    except FileNotFoundError:
        raise RequeueError(f"seq {item.seq}: {item.path} is gone (pruned?)") from None
    except OSError:  # a file system without hard links: a rename, after the check above
        os.replace(item.path, target)
    _fsync_dir(batches_dir)
    item.path.unlink(missing_ok=True)
    item.path.with_name(item.path.name + ".reason").unlink(missing_ok=True)
    _fsync_dir(item.path.parent)
    log.info("requeued seq %d (%d samples): %s", item.seq, item.samples, target)
    return target


def split(spool: Spool, item: RejectedBatch, max_series: int) -> list[SpooledBatch]:
    """Put a rejected batch back as pieces of at most `max_series` series each (its events in
    the first), under new seqs from `spool`, which must hold the lock. A batch that fits is
    requeued whole under its own seq.

    Exactly once: a batch refused whole was never applied (the server claims (agent_id, seq)
    only after the envelope checks pass), so its records reach the ledger only through the
    pieces. The new seqs and the piece size are written to the .reason file before any piece,
    so a split interrupted by a crash is finished with the same seqs and the same pieces
    (those already sent are answered `duplicate`), never split again under other seqs."""
    if spool._lock_fd is None:
        raise RuntimeError("split needs a spool opened with lock=True")
    batch = read_rejected(item)
    marker = split_marker(item)
    if marker is None:
        if len(batch.series) <= max_series:
            return [_spooled(requeue(spool.directory, item))]
        seqs = spool.allocate_seqs(math.ceil(len(batch.series) / max_series))
        note = f"{item.reason}\nsplit {max_series} into seqs {seqs[0]}-{seqs[-1]}\n"
        _write_durably(item.path.with_name(item.path.name + ".reason"), note.encode())
    else:
        max_series, seqs = marker
    chunks = [batch.series[i : i + max_series] for i in range(0, len(batch.series), max_series)]
    if len(chunks) != len(seqs):
        raise RequeueError(f"seq {item.seq}: its split record does not match the batch")
    pieces = []
    for i, (seq, chunk) in enumerate(zip(seqs, chunks, strict=True)):
        piece = msgspec.structs.replace(
            batch, seq=seq, series=chunk, events=batch.events if i == 0 else []
        )
        pieces.append(spool.put(piece))
    item.path.unlink(missing_ok=True)
    item.path.with_name(item.path.name + ".reason").unlink(missing_ok=True)
    _fsync_dir(item.path.parent)
    log.info(
        "split seq %d into %d batches of at most %d series: seqs %d-%d",
        item.seq, len(pieces), max_series, seqs[0], seqs[-1],
    )  # fmt: skip
    return pieces


def _spooled(path: Path) -> SpooledBatch:
    match = _BATCH_RE.match(path.name)
    assert match is not None
    return SpooledBatch(path, int(match.group(1)), int(match.group(2)), path.stat().st_size)
