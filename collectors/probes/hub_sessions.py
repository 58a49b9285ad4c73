"""The JupyterHub probe's open sessions on disk, so that an agent restart still ends them.

A session's end is the first poll that no longer sees its server. A server that stops while
the agent is down is never seen going, so without this the session would stay open in the
ledger for ever (never accounted, counted as running). The probe keeps the sessions it has
opened in `path` (written when the set changes, else every `save_every` seconds, with when
each was last seen running); after a restart, a kept session whose server is gone, or was
restarted since, is ended at that last sighting: at most `save_every` seconds plus the poll
interval before its real end, which fell while nobody was looking.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import msgspec

log = logging.getLogger(__name__)


class OpenSession(msgspec.Struct, frozen=True):
    user: str
    server: str
    started: float
    profile: str
    seen: float  # when the probe last saw the server running
    last_activity: float | None = None


class SessionStore:
    """Load and save the open sessions; an unreadable file starts afresh (with a warning)."""

    def __init__(self, path: str | os.PathLike[str], save_every: float = 30.0) -> None:
        self.path = Path(path)
        self.save_every = save_every
        self._saved: frozenset[tuple[str, str, float]] | None = None
        self._saved_at = float("-inf")

    def load(self) -> list[OpenSession]:
        if not self.path.exists():
            return []
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=list[OpenSession])
        except (OSError, msgspec.DecodeError) as exc:
            log.warning("jupyterhub probe state %s unreadable, starting afresh: %s", self.path, exc)
            return []

    def save(self, sessions: list[OpenSession], now: float) -> None:
        keys = frozenset((s.user, s.server, s.started) for s in sessions)
        if keys == self._saved and now - self._saved_at < self.save_every:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_bytes(msgspec.json.encode(sessions))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot save jupyterhub probe state to %s: %s", self.path, exc)
            return
        self._saved, self._saved_at = keys, now
