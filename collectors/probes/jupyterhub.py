"""JupyterHub probe: time-to-session for every server start, failed starts, and sessions.

Reads the hub's REST API with a service token (scopes `list:users read:users read:servers
read:metrics`). The hub's own spawn-duration histogram (`jupyterhub_server_spawn_duration_
seconds{status}`, plus `jupyterhub_proxy_add_duration_seconds`) is the ground truth: every
figure the probe reports is reconciled with it.

- Each poll lists the users with active servers, then reads `/hub/metrics`. A server seen
  `pending: "spawn"` gets a watcher on its progress stream (server-sent events); the moment
  the stream ends (`ready` or `failed`) the watcher reads `/hub/metrics` again, so each start
  normally has a snapshot interval of its own and gets exactly what the hub measured for it
  (spawn + proxy add, or time to failure: `source=hub_metrics`). Starts that share one
  interval share its growth (`source=estimate`): each keeps its progress-stream figure plus an
  equal part of what remains.
- A start is `ok` only when the hub's success counter counts it. The hub reports a start that
  a stop interrupted as ready for about a second (and its progress stream sends `ready`), but
  never counts it: such a start, seen stopping or gone before a success explains it, is
  `stopped`, and has no session.
- A start that fails before any poll sees it (a spawner or hook that raises at once) still
  moves the hub's failure counters: the probe then lists the users by `-last_activity` with
  their stopped servers, and a stopped server whose progress endpoint reports `Spawn failed`
  is that failure (its end is the hub's stop time, its wait the hub's measurement).
- Outcomes: `ok`, `failed`, `timeout` (the hub's "didn't respond" message, or a failure with no
  message at all, which is what `Spawner.start_timeout` raises), `stopped`.
- Sessions start at `started` and end at the hub's own stop time (the stopped server's
  `last_activity`), else when the server was seen gone.

State (`state_path`): the tracked servers and sessions, the hub totals already accounted, the
events not yet handed over, and the failure scan's mark are checkpointed when they change, every
`save_every` seconds, and by `close()` (the agent calls it at shutdown). After a restart, starts
that happened while the agent was down are reconciled with the growth of the hub's totals since
the checkpoint, sessions whose server stopped meanwhile end at the hub's stop time, and events are
re-sent under the same ids (the server keeps one record per id, so a replay changes nothing).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from afmon.collectors import wire
from afmon.collectors.probes.base import READY, ProbeOutput

log = logging.getLogger(__name__)

PAGINATION = "application/jupyterhub-pagination+json"
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
TIMEOUT_WORDS = ("timeout", "timed out", "didn't respond", "did not respond")
NO_MESSAGE_TIMEOUT = "Spawn failed: no message (Spawner.start_timeout raises a bare TimeoutError)"
MAX_UNEXPLAINED_POLLS = 3  # then a start the hub's counters do not explain is settled anyway
STATE_VERSION = 2
FAILURE_STATUSES = ("failure", "error")


def parse_time(value: str | None) -> float | None:
    """Epoch seconds from the hub's ISO 8601 times ("2026-09-21T14:13:20.123456Z")."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class HubTotals:
    """The hub's cumulative per-start measurements."""

    spawns: float = 0.0  # successful starts
    seconds: float = 0.0  # their spawn duration + proxy add duration
    failures: float = 0.0  # failed starts (status "failure" or "error", timeouts included)
    failure_seconds: float = 0.0  # request -> failure


def parse_hub_metrics(body: str) -> HubTotals:
    values: dict[tuple[str, str], float] = {}
    for line in body.splitlines():
        m = _SAMPLE.match(line)
        if m is None or not m["name"].startswith(("jupyterhub_server_spawn", "jupyterhub_proxy")):
            continue
        status = dict(_LABEL.findall(m["labels"] or "")).get("status", "")
        if status in FAILURE_STATUSES:
            status = "failure"
        key = (m["name"], status)
        values[key] = values.get(key, 0.0) + float(m["value"])
    spawn, proxy = (
        "jupyterhub_server_spawn_duration_seconds",
        "jupyterhub_proxy_add_duration_seconds",
    )
    return HubTotals(
        spawns=values.get((spawn + "_count", "success"), 0.0),
        seconds=values.get((spawn + "_sum", "success"), 0.0)
        + values.get((proxy + "_sum", "success"), 0.0),
        failures=values.get((spawn + "_count", "failure"), 0.0),
        failure_seconds=values.get((spawn + "_sum", "failure"), 0.0),
    )


def classify_failure(message: str) -> tuple[str, str]:
    """(outcome, error) of a failed start from the hub's `failed` progress message."""
    text = message.strip()
    detail = (
        text[len("spawn failed:") :].strip() if text.lower().startswith("spawn failed:") else text
    )
    if not detail:
        return "timeout", NO_MESSAGE_TIMEOUT
    if any(w in text.lower() for w in TIMEOUT_WORDS):
        return "timeout", text
    return "failed", text


@dataclass
class _Progress:
    """What a progress-stream watcher saw: outcome "ok"/"failed" and when, or nothing."""

    outcome: str | None = None
    at: float | None = None
    message: str = ""
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Server:
    user: str
    name: str
    started: float  # the hub's clock
    profile: str
    options: str
    # pending: not settled; waiting: has a claim; ok / failed: settled; preexisting: running
    # before the probe (its wait is unknown)
    state: str = "pending"
    session_open: bool = False
    stop_seen: bool = False
    seen: float = 0.0  # agent clock: last poll that saw it running
    last_activity: float | None = None
    progress: _Progress | None = None
    active: bool = True
    restored: bool = False  # from the checkpoint, not seen by a poll since

    @property
    def event_id(self) -> str:
        return f"{self.user}/{self.name}@{self.started:.6f}"

    def to_state(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "name": self.name,
            "started": self.started,
            "profile": self.profile,
            "options": self.options,
            "state": "pending" if self.state == "waiting" else self.state,
            "session_open": self.session_open,
            "seen": self.seen,
            "last_activity": self.last_activity,
            "active": self.active,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> _Server:
        return cls(
            str(d["user"]),
            str(d["name"]),
            float(d["started"]),
            str(d.get("profile", "default")),
            str(d.get("options", "")),
            state=str(d.get("state", "pending")),
            session_open=bool(d.get("session_open", False)),
            seen=float(d.get("seen") or 0.0),
            last_activity=d.get("last_activity"),
            active=bool(d.get("active", True)),
            restored=True,
        )


@dataclass
class _Claim:
    """A start the hub's counters should explain: a success, a failure, or not yet known."""

    kind: str  # "ok", "fail" or "unknown" (gone while nobody was looking)
    srv: _Server
    known_at: float  # agent clock
    streamed: float | None = None  # request (`started`) -> ready event, agent clock
    end_hub: float | None = None  # instant failures: the hub's stop time
    outcome: str = "failed"
    error: str = ""
    polls: int = 0

    @property
    def bound(self) -> float:
        """The progress stream's measurement, else the longest it can have taken."""
        if self.streamed is not None:
            return max(self.streamed, 1e-6)
        return max(self.known_at - self.srv.started, 1e-6)

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "server": self.srv.to_state(),
            "known_at": self.known_at,
            "streamed": self.streamed,
            "end_hub": self.end_hub,
            "outcome": self.outcome,
            "error": self.error,
        }


class JupyterHubProbe:
    name = "jupyterhub"

    def __init__(
        self,
        hub_url: str,
        token: str | None,
        *,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        poll_seconds: float = 1.0,
        stream_read_timeout: float = 120.0,
        state_path: str | os.PathLike[str] | None = None,
        save_every: float = 30.0,
    ) -> None:
        self.hub_url = hub_url.rstrip("/")
        self.state = READY if token else "no service token (set AFMON_JUPYTERHUB_TOKEN)"
        self._headers = {"Authorization": f"token {token}"} if token else {}
        self._client = client or httpx.Client(timeout=10.0)
        self._clock = clock
        self._poll_seconds = poll_seconds
        self._stream_timeout = httpx.Timeout(10.0, read=stream_read_timeout)
        self._lock = threading.RLock()
        self._servers: dict[tuple[str, str], _Server] = {}
        self._claims: list[_Claim] = []
        self._hub = HubTotals()
        self._acc = HubTotals()  # the hub's totals already given to starts
        self._baseline = True
        self._mark: float | None = None  # the failure scan has seen hub activity up to here
        self._failed_keys: dict[str, float] = {}  # stopped servers already reported as failures
        # (user, server) -> (started, settled at) of failed starts the probe followed
        self._recent: dict[tuple[str, str], tuple[float, float]] = {}
        self.unattributed_failures = 0  # failed starts the hub counted that no user explains
        self._idle_polls = {"ok": 0, "fail": 0}
        self._events: list[wire.Event] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._path = Path(state_path) if state_path is not None else None
        self._save_every = save_every
        self._saved_digest: str | None = None
        self._saved_at = float("-inf")
        if self._path is not None:
            self._load()

    # -- the probe interface --------------------------------------------------------------

    def collect(self, now: float) -> ProbeOutput:
        if self._poll_seconds > 0 and self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._loop, name="afmon-jupyterhub", daemon=True)
            self._thread.start()
        self.poll()
        with self._lock:
            events, self._events = self._events, []
        return ProbeOutput(events=events)

    def close(self) -> None:
        """Stop polling; a last poll, then checkpoint (events not handed over included)."""
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.poll()
        except Exception as exc:  # noqa: BLE001  (the checkpoint matters more)
            log.warning("last poll of the hub at %s failed: %r", self.hub_url, exc)
        with self._lock:
            self._save(force=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self.poll()
            except Exception:  # noqa: BLE001  (a hub hiccup must not end the probe)
                log.exception("polling the hub at %s failed", self.hub_url)

    # -- one poll -------------------------------------------------------------------------

    def poll(self) -> None:
        """List the active servers, then the hub's totals, and reconcile (thread-safe)."""
        with self._lock:
            models = list(self._active_servers())  # before the totals: they cover these
            self._hub = self._totals()
            now = self._clock()
            if self._baseline:
                self._start_baseline()
            seen: set[tuple[str, str]] = set()
            for user, name, model in models:
                seen.add((user, name))
                self._update(user, name, model, now)
            for key in [k for k, s in self._servers.items() if k not in seen and s.active]:
                self._gone(self._servers.pop(key), now)
            self._reconcile(now, poll=True)
            self._baseline = False
            self._prune(now)
            self._save()

    def _start_baseline(self) -> None:
        """First poll without a checkpoint: what the hub counted so far is nobody's wait."""
        self._acc = self._hub
        page = self._get("/hub/api/users", sort="-last_activity", limit=1).json()
        items = page["items"] if isinstance(page, dict) else page
        times = [parse_time(u.get("last_activity")) for u in items]
        self._mark = max([t for t in times if t is not None], default=0.0)

    def _totals(self) -> HubTotals:
        return parse_hub_metrics(self._get("/hub/metrics").text)

    def _get(self, path: str, **params: Any) -> httpx.Response:
        r = self._client.get(
            self.hub_url + path, params=params, headers={**self._headers, "Accept": PAGINATION}
        )
        r.raise_for_status()
        return r

    def _users(self, **params: Any) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            page = self._get("/hub/api/users", offset=offset, **params).json()
            yield from page["items"] if isinstance(page, dict) else page
            nxt = page.get("_pagination", {}).get("next") if isinstance(page, dict) else None
            if not nxt:
                return
            offset = nxt["offset"]

    def _active_servers(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for user in self._users(state="active"):
            for name, model in (user.get("servers") or {}).items():
                yield user["name"], name, model

    def _update(self, user: str, name: str, model: dict[str, Any], now: float) -> None:
        started = parse_time(model.get("started"))
        if started is None:
            return  # not started yet
        srv = self._servers.get((user, name))
        if srv is None or srv.started != started:
            if srv is not None:  # restarted between polls: the old one ended before this one
                self._gone(srv, min(now, started))
            options = model.get("user_options") or {}
            srv = _Server(
                user, name, started, _profile(options), json.dumps(options, sort_keys=True)[:200]
            )
            self._servers[(user, name)] = srv
            if self._baseline and model.get("ready"):
                srv.state = "preexisting"  # running before the probe: its wait is unknown
                self._open_session(srv)
        if srv.restored:
            srv.restored = False
            if srv.session_open:  # reported open again, under the same id: a repeat is a no-op
                self._session(srv, None)
        srv.seen = now
        srv.last_activity = parse_time(model.get("last_activity")) or srv.last_activity
        pending, ready = model.get("pending"), bool(model.get("ready"))
        if pending == "stop":
            srv.stop_seen = True  # a stop, or the hub cleaning up after a failure
        if srv.state == "pending":
            if pending == "spawn" and srv.progress is None:
                srv.progress = self._watch(srv, model.get("progress_url") or "")
            elif ready:
                self._claim(srv, "ok", now)
        elif srv.state == "waiting" and not ready and pending != "spawn":
            self._interrupted(srv, now)

    def _gone(self, srv: _Server, now: float) -> None:
        """The server is no longer active (stopped, failed, or restarted)."""
        srv.active = False
        if srv.state == "pending":
            p = srv.progress
            if p is not None:
                p.done.wait(2.0)  # the watcher sets it before it takes the lock
            if p is not None and p.outcome == "ok":
                self._claim(srv, "ok", now)
            elif p is not None and p.outcome == "failed":
                self._claim(srv, "fail", now, message=p.message)
            else:  # failed, or stopped, while nobody was looking: the counters will say
                self._claim(srv, "unknown", now)
        if srv.state == "waiting":
            self._interrupted(srv, now)
        if srv.session_open:
            srv.session_open = False
            stop = self._stop_time(srv)
            if stop is not None:
                self._session(srv, stop, end_source="hub")
            elif srv.restored:  # stopped while the agent was down
                self._session(srv, max(srv.seen, srv.started), end_source="last_seen")
            else:
                self._session(srv, max(now, srv.started))

    def _interrupted(self, srv: _Server, now: float) -> None:
        """Stopping (or gone) before the hub counted a success: unless a success the hub
        counted is still unexplained, this start was interrupted by a stop."""
        claim = next((c for c in self._claims if c.srv is srv), None)
        if claim is None or claim.kind != "ok":
            return  # failures and unknowns are settled by the failure counters
        oks = [c for c in self._claims if c.kind == "ok"]
        if round(self._hub.spawns - self._acc.spawns) >= len(oks):
            return  # the hub counts it: a real start, stopped soon after
        self._claims.remove(claim)
        p = srv.progress
        end = p.at if p is not None and p.at is not None and p.outcome == "ok" else now
        srv.state = "failed"
        self._spawn(
            srv, max(end, srv.started), "stopped", "progress", "stopped before it was ready"
        )

    # -- claims and the hub's counters ----------------------------------------------------

    def _claim(self, srv: _Server, kind: str, now: float, message: str = "") -> _Claim:
        claim = next((c for c in self._claims if c.srv is srv), None)
        if claim is None:
            claim = _Claim(kind, srv, now)
            self._claims.append(claim)
            srv.state = "waiting"
        if kind == "fail":
            claim.kind = "fail"
            claim.outcome, claim.error = classify_failure(message)
        p = srv.progress
        if p is not None and p.outcome == "ok" and p.at is not None and claim.streamed is None:
            claim.streamed = p.at - srv.started
        return claim

    def _stream_ended(self, srv: _Server) -> None:
        """A watcher saw `ready` or `failed`: read the hub's totals now, so that this start
        has a snapshot interval of its own."""
        with self._lock:
            p = srv.progress
            if p is None or srv.state not in ("pending", "waiting") or self._closed:
                return
            now = self._clock()
            if p.outcome == "ok":
                self._claim(srv, "ok", now)
            elif p.outcome == "failed":
                self._claim(srv, "fail", now, message=p.message)
            else:
                return
            try:
                self._hub = self._totals()
            except httpx.HTTPError as exc:
                log.info("reading the hub's metrics failed: %r", exc)
                return
            self._reconcile(now, poll=False)

    def _reconcile(self, now: float, *, poll: bool) -> None:
        hub = self._hub
        if hub.spawns < self._acc.spawns or hub.failures < self._acc.failures:
            log.info("the hub's counters went back: the hub restarted")
            self._acc = HubTotals()
        if poll:
            for c in self._claims:
                c.polls += 1
            self._settle_unknown()
        self._settle_ok(now, poll)
        if poll and round(hub.failures - self._acc.failures) > sum(
            c.kind == "fail" for c in self._claims
        ):
            self._scan_failures(now)
        self._settle_failures(now, poll)

    def _settle_unknown(self) -> None:
        """Starts that ended while the agent was down: the counter that moved says how."""
        for c in [c for c in self._claims if c.kind == "unknown"]:
            oks = sum(x.kind == "ok" for x in self._claims)
            fails = sum(x.kind == "fail" for x in self._claims)
            if round(self._hub.spawns - self._acc.spawns) > oks:
                c.kind = "ok"
            elif round(self._hub.failures - self._acc.failures) > fails:
                message = self._spawn_error(c.srv.user, c.srv.name)
                c.kind = "fail"
                if message is None:
                    c.outcome, c.error = "failed", "gone before it was ready"
                else:
                    c.outcome, c.error = classify_failure(message)
            elif c.polls >= MAX_UNEXPLAINED_POLLS:  # no counter moved: a stop interrupted it
                self._claims.remove(c)
                c.srv.state = "failed"
                self._spawn(c.srv, c.known_at, "stopped", "estimate", "gone before it was ready")

    def _settle_ok(self, now: float, poll: bool) -> None:
        claims = [c for c in self._claims if c.kind == "ok"]
        grown = round(self._hub.spawns - self._acc.spawns)
        total = self._hub.seconds - self._acc.seconds
        if not claims:
            if grown > 0 and poll:
                self._idle_polls["ok"] += 1
                if self._idle_polls["ok"] >= MAX_UNEXPLAINED_POLLS:  # nobody's: resynchronise
                    self._acc_ok()
            return
        self._idle_polls["ok"] = 0
        if grown == len(claims):
            exact = len(claims) == 1
            for c, wait in zip(claims, _share(claims, total), strict=True):
                self._ok(c, wait, "hub_metrics" if exact else "estimate")
            self._acc_ok()
        elif any(c.polls >= MAX_UNEXPLAINED_POLLS for c in claims):
            if 0 < grown < len(claims):
                waits = _scaled(claims, total)
            else:  # nothing counted (hub restarted?), or others' starts in the total too
                waits = [c.bound for c in claims]
            for c, wait in zip(claims, waits, strict=True):
                self._ok(c, wait, "estimate")
            self._acc_ok()

    def _settle_failures(self, now: float, poll: bool) -> None:
        claims = [c for c in self._claims if c.kind == "fail"]
        grown = round(self._hub.failures - self._acc.failures)
        total = self._hub.failure_seconds - self._acc.failure_seconds
        if not claims:
            if grown > 0 and poll:
                self._idle_polls["fail"] += 1
                if self._idle_polls["fail"] >= MAX_UNEXPLAINED_POLLS:
                    self.unattributed_failures += grown
                    log.info("%d failed start(s) the hub counted belong to no user found", grown)
                    self._acc_fail()
            return
        self._idle_polls["fail"] = 0
        if grown == len(claims):
            exact = len(claims) == 1
            for c, wait in zip(claims, _share(claims, total), strict=True):
                self._failed(c, wait, "hub_metrics" if exact else "estimate")
            self._acc_fail()
        elif any(c.polls >= MAX_UNEXPLAINED_POLLS for c in claims):
            for c in claims:
                end = c.end_hub if c.end_hub is not None else c.known_at
                self._failed(c, max(end - c.srv.started, 0.0), "progress")
            if grown > len(claims):
                self.unattributed_failures += grown - len(claims)
            self._acc_fail()

    def _acc_ok(self) -> None:
        self._acc = HubTotals(
            self._hub.spawns, self._hub.seconds, self._acc.failures, self._acc.failure_seconds
        )
        self._idle_polls["ok"] = 0

    def _acc_fail(self) -> None:
        self._acc = HubTotals(
            self._acc.spawns, self._acc.seconds, self._hub.failures, self._hub.failure_seconds
        )
        self._idle_polls["fail"] = 0

    def _ok(self, c: _Claim, wait: float, source: str) -> None:
        self._claims.remove(c)
        srv = c.srv
        srv.state = "ok"
        self._spawn(srv, srv.started + max(wait, 0.0), "ok", source, streamed=c.streamed)
        if srv.active:
            self._open_session(srv)
        else:  # ready, counted, and gone again before it was settled
            self._session(srv, self._stop_time(srv) or max(c.known_at, srv.started), "hub")

    def _failed(self, c: _Claim, wait: float, source: str) -> None:
        self._claims.remove(c)
        srv = c.srv
        srv.state = "failed"
        if c.end_hub is None:  # the scan must not find this failure again
            self._recent[(srv.user, srv.name)] = (srv.started, self._clock())
        if c.end_hub is not None:  # an instant failure: anchored at the hub's stop time
            start = min(c.end_hub - max(wait, 0.0), c.end_hub)
            self._events.append(
                wire.Event("spawn", srv.event_id, srv.user, start, c.end_hub,
                           self._attrs(srv, c.outcome, source, c.error))
            )  # fmt: skip
            return
        self._spawn(srv, srv.started + max(wait, 0.0), c.outcome, source, c.error)

    # -- starts that fail before any poll sees them ---------------------------------------

    def _scan_failures(self, now: float) -> None:
        """The hub counted more failed starts than the probe saw: find them among the users
        active since the last scan (newest first), as stopped servers whose progress endpoint
        reports `Spawn failed`."""
        mark = self._mark if self._mark is not None else 0.0
        newest = mark
        try:
            for user in self._users(sort="-last_activity", include_stopped_servers=1, limit=50):
                la = parse_time(user.get("last_activity"))
                if la is None or la < mark - 1.0:
                    break
                newest = max(newest, la)
                for name, model in (user.get("servers") or {}).items():
                    self._scan_server(user["name"], name, model, mark, now)
        except httpx.HTTPError as exc:
            log.info("scanning the hub for failed starts failed: %r", exc)
            return
        self._mark = newest

    def _scan_server(
        self, user: str, name: str, model: dict[str, Any], mark: float, now: float
    ) -> None:
        if model.get("started") or model.get("pending") or model.get("ready"):
            return  # active: the poll follows it
        stopped_at = parse_time(model.get("last_activity"))
        key = f"{user}/{name}@{model.get('last_activity')}"
        if stopped_at is None or stopped_at < mark - 1.0 or key in self._failed_keys:
            return
        recent = self._recent.get((user, name))
        if recent is not None and recent[0] <= stopped_at <= recent[1] + 5.0:
            return  # the hub's cleanup after a failed start the probe followed
        if any(c.srv.user == user and c.srv.name == name for c in self._claims):
            return
        message = self._spawn_error(user, name)
        if message is None:
            return
        self._failed_keys[key] = now
        options = model.get("user_options") or {}
        srv = _Server(
            user,
            name,
            stopped_at,  # no `started` any more: the id is anchored at the hub's stop time
            _profile(options),
            json.dumps(options, sort_keys=True)[:200],
            state="waiting",
            active=False,
        )
        outcome, error = classify_failure(message)
        self._claims.append(
            _Claim("fail", srv, now, end_hub=stopped_at, outcome=outcome, error=error)
        )

    def _spawn_error(self, user: str, name: str) -> str | None:
        """The hub's message for the last start of a stopped server, if it failed."""
        path = f"/hub/api/users/{quote(user, safe='')}"
        path += f"/servers/{quote(name, safe='')}/progress" if name else "/server/progress"
        try:
            r = self._client.get(self.hub_url + path, headers=self._headers, timeout=5.0)
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        for line in r.text.splitlines():
            if line.startswith("data:"):
                try:
                    event = json.loads(line[5:])
                except ValueError:
                    return None
                if event.get("failed"):
                    return str(event.get("message", ""))[:200]
        return None

    def _stop_time(self, srv: _Server) -> float | None:
        """The hub's own time for the stop of this server: a stopped server's
        `last_activity` is set when its stop completed."""
        try:
            r = self._get(f"/hub/api/users/{quote(srv.user, safe='')}", include_stopped_servers=1)
            model = (r.json().get("servers") or {}).get(srv.name)
        except (httpx.HTTPError, ValueError):
            return None
        if not model or model.get("started") or model.get("pending") or model.get("ready"):
            return None  # running again (restarted): its last activity is the new one's
        stopped = parse_time(model.get("last_activity"))
        if stopped is None or stopped < srv.started or (srv.seen and stopped < srv.seen - 5.0):
            return None
        return stopped

    # -- progress streams -----------------------------------------------------------------

    def _watch(self, srv: _Server, progress_url: str) -> _Progress:
        progress = _Progress()
        threading.Thread(
            target=self._follow,
            args=(srv, progress_url, progress),
            name="afmon-hub-progress",
            daemon=True,
        ).start()
        return progress

    def _follow(self, srv: _Server, progress_url: str, progress: _Progress) -> None:
        try:
            with self._client.stream(
                "GET",
                self.hub_url + progress_url,
                headers=self._headers,
                timeout=self._stream_timeout,
            ) as r:
                if r.status_code != 200:
                    return
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:])
                    if event.get("ready"):
                        progress.outcome, progress.at = "ok", self._clock()
                        return
                    if event.get("failed"):
                        progress.outcome, progress.at = "failed", self._clock()
                        progress.message = str(event.get("message", ""))[:200]
                        return
        except (httpx.HTTPError, ValueError) as exc:
            log.info("progress stream %s ended early: %r", progress_url, exc)
        finally:
            progress.done.set()
            if progress.outcome is not None:
                try:
                    self._stream_ended(srv)
                except Exception:  # noqa: BLE001  (the next poll settles it)
                    log.exception("settling %s's start failed", srv.user)

    # -- events ---------------------------------------------------------------------------

    def _attrs(
        self, srv: _Server, outcome: str, source: str, error: str = ""
    ) -> dict[str, str | int | float | bool]:
        attrs: dict[str, str | int | float | bool] = {
            "profile": srv.profile,
            "outcome": outcome,
            "source": source,
            "server": srv.name,
            "options": srv.options,
        }
        if error:
            attrs["error"] = error[:200]
        return attrs

    def _spawn(
        self,
        srv: _Server,
        end: float,
        outcome: str,
        source: str,
        error: str = "",
        streamed: float | None = None,
    ) -> None:
        attrs = self._attrs(srv, outcome, source, error)
        if streamed is not None:
            attrs["progress_seconds"] = round(streamed, 6)
        self._events.append(wire.Event("spawn", srv.event_id, srv.user, srv.started, end, attrs))

    def _open_session(self, srv: _Server) -> None:
        srv.session_open = True
        self._session(srv, None)

    def _session(self, srv: _Server, end: float | None, end_source: str = "") -> None:
        attrs: dict[str, str | int | float | bool] = {"profile": srv.profile, "server": srv.name}
        if srv.last_activity is not None:
            attrs["last_activity"] = srv.last_activity
        if end_source:
            # "hub": the hub's own stop time; "last_seen": ended while the agent was down
            # and the hub no longer knows when
            attrs["end_source"] = end_source
        if end is not None:
            end = max(end, srv.started)
        self._events.append(wire.Event("session", srv.event_id, srv.user, srv.started, end, attrs))

    # -- checkpoint -----------------------------------------------------------------------

    def _prune(self, now: float) -> None:
        for key in [k for k, t in self._failed_keys.items() if t < now - 3600]:
            del self._failed_keys[key]
        for key in [k for k, (_, t) in self._recent.items() if t < now - 3600]:
            del self._recent[key]

    def _state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "acc": asdict(self._acc),
            "mark": self._mark,
            "unattributed_failures": self.unattributed_failures,
            "servers": [s.to_state() for s in self._servers.values()],
            "claims": [c.to_state() for c in self._claims],
            "failed_keys": self._failed_keys,
            "recent": [[u, n, a, b] for (u, n), (a, b) in self._recent.items()],
            "events": [msgspec.to_builtins(e) for e in self._events],
        }

    def _save(self, force: bool = False) -> None:
        if self._path is None or self._baseline:
            return
        now = self._clock()
        state = self._state()
        digest = json.dumps(
            {**state, "servers": [{**s, "seen": 0} for s in state["servers"]]}, sort_keys=True
        )
        if not force and digest == self._saved_digest and now - self._saved_at < self._save_every:
            return
        tmp = self._path.with_name(self._path.name + ".tmp")
        try:
            tmp.write_text(json.dumps({**state, "saved_at": now}))
            os.replace(tmp, self._path)
        except OSError as exc:
            log.warning("cannot save jupyterhub probe state to %s: %s", self._path, exc)
            return
        self._saved_digest, self._saved_at = digest, now

    def _load(self) -> None:
        assert self._path is not None
        if not self._path.exists():
            return
        try:
            state = json.loads(self._path.read_text())
            if isinstance(state, list):  # the first format: open sessions only
                state = _from_sessions(state)
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"unknown state version {state.get('version')!r}")
            servers = [_Server.from_state(d) for d in state.get("servers", [])]
            claims = [
                _Claim(
                    str(d["kind"]),
                    _Server.from_state(d["server"]),
                    float(d["known_at"]),
                    d.get("streamed"),
                    d.get("end_hub"),
                    str(d.get("outcome", "failed")),
                    str(d.get("error", "")),
                )
                for d in state.get("claims", [])
            ]
            events = [msgspec.convert(e, wire.Event) for e in state.get("events", [])]
            acc = HubTotals(**state["acc"]) if state.get("acc") else None
        except (OSError, ValueError, KeyError, TypeError, msgspec.ValidationError) as exc:
            log.warning(
                "jupyterhub probe state %s unreadable, starting afresh: %s", self._path, exc
            )
            return
        for srv in servers:
            if srv.state == "waiting":
                srv.state = "pending"
            self._servers[(srv.user, srv.name)] = srv
        for c in claims:
            srv = self._servers.get((c.srv.user, c.srv.name))
            if srv is not None and srv.started == c.srv.started:
                c.srv = srv
            srv = c.srv
            srv.state = "waiting"
            self._claims.append(c)
        self._events = events
        self._mark = state.get("mark")
        self.unattributed_failures = int(state.get("unattributed_failures", 0))
        self._failed_keys = {str(k): float(v) for k, v in state.get("failed_keys", {}).items()}
        self._recent = {
            (str(u), str(n)): (float(a), float(b)) for u, n, a, b in state.get("recent", [])
        }
        if acc is not None:
            self._acc = acc
            self._baseline = False
        # else the first format: sessions only, and the counters start afresh


def _from_sessions(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """The first state format (a list of open sessions) as the current one."""
    servers = [
        {
            "user": s["user"],
            "name": s["server"],
            "started": s["started"],
            "profile": s.get("profile", "default"),
            "options": "",
            "state": "ok",
            "session_open": True,
            "seen": s.get("seen", 0.0),
            "last_activity": s.get("last_activity"),
        }
        for s in sessions
    ]
    return {"version": STATE_VERSION, "acc": None, "servers": servers}


def _share(claims: list[_Claim], total: float) -> list[float]:
    """Share the hub's total for these starts out: each streamed one keeps its progress
    figure plus an equal part of the rest; the others share what remains by their bounds."""
    if len(claims) == 1:
        return [total]
    streamed = [c for c in claims if c.streamed is not None]
    others = [c for c in claims if c.streamed is None]
    if not others:
        rest = (total - sum(c.bound for c in claims)) / len(claims)
        return [max(c.bound + rest, 0.0) for c in claims]
    remainder = total - sum(c.bound for c in streamed)
    weight = sum(c.bound for c in others)
    scale = remainder / weight if remainder > 0 else 1.0
    return [c.bound if c.streamed is not None else c.bound * scale for c in claims]


def _scaled(claims: list[_Claim], total: float) -> list[float]:
    """Fewer counted than claimed: each its bound, scaled so as not to exceed the total."""
    weight = sum(c.bound for c in claims)
    scale = min(1.0, total / weight) if total > 0 else 1.0
    return [c.bound * scale for c in claims]


def _profile(options: dict[str, Any]) -> str:
    for key in ("profile", "profile_slug", "profile_name"):
        value = options.get(key)
        if isinstance(value, str) and value:
            return value[:64]
    return "default"
