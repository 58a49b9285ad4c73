"""The agent's durable spool: every batch is on disk before its first send attempt.

Layout of the spool directory:

    agent_id                    the agent's UUID, created once
    state.json                  next sequence number, dropped-samples counter
    batches/SEQ-SAMPLES.json.gz one gzip'd wire batch per file (oldest = lowest seq)
    rejected/                   batches the server (or the spool) refused, with a .reason file

Files are written to a temporary name, fsync'd and renamed, so a crash leaves either the whole
file or none. The sequence number is persisted before a batch with it is written, so a restarted
agent never reuses one. If state.json is lost or corrupt, the seq already used is unknown: the
spool then takes a new agent id, which gives the aggregator a fresh (agent_id, seq) space.
"""

from __future__ import annotations

import gzip
import logging
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


class _State(msgspec.Struct):
    next_seq: int = 0
    dropped_samples: int = 0
    created: float = 0.0  # when dropped_samples started from zero


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Spool:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        rejected_keep: int = 200,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.rejected_keep = rejected_keep
        self.batches_dir = self.directory / "batches"
        self.rejected_dir = self.directory / "rejected"
        for d in (self.directory, self.batches_dir, self.rejected_dir):
            d.mkdir(parents=True, exist_ok=True)
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

    @property
    def dropped_samples(self) -> int:
        return self._state.dropped_samples

    @property
    def created(self) -> float:
        """When the dropped-samples counter started from zero."""
        return self._state.created

    # -- batches --------------------------------------------------------------------------

    def put(self, batch: wire.Batch) -> SpooledBatch:
        """Write a batch durably, then enforce the byte cap by dropping the oldest batches."""
        data = wire.encode(batch, compress=True)
        path = self.batches_dir / f"{batch.seq:012d}-{batch.sample_count}.json.gz"
        _write_durably(path, data)
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
        files = sorted(
            (p for p in self.rejected_dir.iterdir() if not p.name.endswith(".reason")),
            key=lambda p: (p.stat().st_mtime_ns, p.name),
        )
        for old in files[: max(0, len(files) - self.rejected_keep)]:
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
