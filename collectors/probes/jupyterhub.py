"""JupyterHub probe: time-to-session for every server start, spawn failures, and sessions.

Reads the hub's REST API with a service token (scopes `list:users read:users read:servers
read:metrics`). Each poll lists the users with active servers, then reads `/hub/metrics`:

- a server seen `pending: "spawn"` gets a watcher on its progress stream
  (`GET /hub/api/users/NAME[/SERVER]/server/progress`, server-sent events); the hub sends the
  `ready` event only after the proxy route was added, so request (`started`) -> arrival of that
  event is ready-and-routed (attr `progress_seconds`). A `failed` event gives the error;
- a server that started and became ready between two polls (never seen pending) is still
  found: its `started` is new;
- a spawn seen ready gets, when it is the only one in the growth of the hub's own per-spawn
  sums (`jupyterhub_server_spawn_duration_seconds_sum{status="success"}` plus
  `jupyterhub_proxy_add_duration_seconds_sum{status="success"}`) since the last poll, exactly
  what the hub measured for it (`source=hub_metrics`). With several in one interval, streamed
  ones keep their stream's measurement (`source=progress`) and the others share what remains
  (exact for one, else in proportion to how long each could have taken: `source=estimate`);
- a spawn that disappears, or turns `pending: "stop"`, before it was ready is a failed /
  timed-out / stopped spawn.

Events: `spawn` (start = request, end = ready-and-routed or failure; attrs profile, outcome
ok/failed/timeout/stopped, source, error, options) and `session` (start = request, end = when the
server was seen gone; attrs profile, last_activity). `collect()` hands over what the polls found;
with `poll_seconds > 0` a background thread polls that often (started by the first collect).
With `state_path`, the open sessions survive an agent restart (collectors/probes/hub_sessions.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from afmon.collectors import wire
from afmon.collectors.probes.base import READY, ProbeOutput
from afmon.collectors.probes.hub_sessions import OpenSession, SessionStore

log = logging.getLogger(__name__)

PAGINATION = "application/jupyterhub-pagination+json"
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
TIMEOUT_WORDS = ("timeout", "timed out", "didn't respond", "did not respond")
MAX_UNEXPLAINED_POLLS = 3  # then a missed spawn's wait is estimated rather than waited for


def parse_time(value: str | None) -> float | None:
    """Epoch seconds from the hub's ISO 8601 times ("2026-09-21T14:13:20.123456Z")."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True)
class HubTotals:
    """Cumulative per-spawn measurements of the hub (successful spawns only)."""

    spawns: float = 0.0
    seconds: float = 0.0  # spawn duration + proxy add duration


def parse_hub_metrics(body: str) -> HubTotals:
    values: dict[str, float] = {}
    for line in body.splitlines():
        m = _SAMPLE.match(line)
        if m is None or not m["name"].startswith(("jupyterhub_server_spawn", "jupyterhub_proxy")):
            continue
        labels = dict(_LABEL.findall(m["labels"] or ""))
        if labels.get("status") == "success":
            values[m["name"]] = values.get(m["name"], 0.0) + float(m["value"])
    return HubTotals(
        spawns=values.get("jupyterhub_server_spawn_duration_seconds_count", 0.0),
        seconds=values.get("jupyterhub_server_spawn_duration_seconds_sum", 0.0)
        + values.get("jupyterhub_proxy_add_duration_seconds_sum", 0.0),
    )


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
    started: float
    profile: str
    options: str
    spawn_done: bool = False
    session_open: bool = False
    stop_seen: bool = False
    last_activity: float | None = None
    progress: _Progress | None = None

    @property
    def event_id(self) -> str:
        return f"{self.user}/{self.name}@{self.started:.6f}"


@dataclass
class _Done:
    """A spawn seen ready, waiting for the hub's totals to give its wait."""

    server: _Server
    seen_at: float
    streamed: float | None = None  # request -> ready event on the progress stream
    polls: int = 0

    @property
    def bound(self) -> float:
        """The progress stream's measurement, else the longest it can have taken."""
        if self.streamed is not None:
            return max(self.streamed, 1e-6)
        return max(self.seen_at - self.server.started, 1e-6)


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
    ) -> None:
        self.hub_url = hub_url.rstrip("/")
        self.state = READY if token else "no service token (set AFMON_JUPYTERHUB_TOKEN)"
        self._headers = {"Authorization": f"token {token}"} if token else {}
        self._client = client or httpx.Client(timeout=10.0)
        self._clock = clock
        self._poll_seconds = poll_seconds
        self._stream_timeout = httpx.Timeout(10.0, read=stream_read_timeout)
        self._lock = threading.Lock()
        self._servers: dict[tuple[str, str], _Server] = {}
        self._done: list[_Done] = []
        self._hub = HubTotals()
        self._accounted = HubTotals()
        self._baseline = True
        self._events: list[wire.Event] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store = SessionStore(state_path) if state_path is not None else None
        self._restored = self._store.load() if self._store is not None else []

    # -- the probe interface --------------------------------------------------------------

    def collect(self, now: float) -> ProbeOutput:
        if self._poll_seconds > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="afmon-jupyterhub", daemon=True)
            self._thread.start()
        self.poll()
        with self._lock:
            events, self._events = self._events, []
        return ProbeOutput(events=events)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

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
            self._hub = parse_hub_metrics(self._get("/hub/metrics").text)
            now = self._clock()
            seen: set[tuple[str, str]] = set()
            for user, name, model in models:
                seen.add((user, name))
                self._update(user, name, model, now)
            for key in [k for k in self._servers if k not in seen]:
                self._gone(self._servers.pop(key), now)
            self._end_restored()
            if self._store is not None:
                self._store.save(self._open_sessions(now), now)
            if self._baseline:
                self._accounted, self._baseline = self._hub, False
            self._explain()

    def _end_restored(self) -> None:
        """After a restart: end the kept sessions whose server went (or restarted) meanwhile,
        at their last sighting; the others are open again as servers seen running."""
        for kept in self._restored:
            srv = self._servers.get((kept.user, kept.server))
            if srv is not None and srv.started == kept.started:
                continue
            gone = _Server(kept.user, kept.server, kept.started, kept.profile, "")
            gone.last_activity = kept.last_activity
            self._session(gone, max(kept.seen, kept.started), end_source="last_seen")
        self._restored = []

    def _open_sessions(self, now: float) -> list[OpenSession]:
        return [
            OpenSession(s.user, s.name, s.started, s.profile, now, s.last_activity)
            for s in self._servers.values()
            if s.session_open
        ]

    def _get(self, path: str, **params: Any) -> httpx.Response:
        r = self._client.get(
            self.hub_url + path, params=params, headers={**self._headers, "Accept": PAGINATION}
        )
        r.raise_for_status()
        return r

    def _active_servers(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        offset = 0
        while True:
            page = self._get("/hub/api/users", state="active", offset=offset).json()
            items = page["items"] if isinstance(page, dict) else page
            for user in items:
                for name, model in (user.get("servers") or {}).items():
                    yield user["name"], name, model
            nxt = page.get("_pagination", {}).get("next") if isinstance(page, dict) else None
            if not nxt:
                return
            offset = nxt["offset"]

    def _update(self, user: str, name: str, model: dict[str, Any], now: float) -> None:
        started = parse_time(model.get("started"))
        if started is None:
            return  # not started yet
        srv = self._servers.get((user, name))
        if srv is None or srv.started != started:
            if srv is not None:  # restarted between polls: the old one ended
                self._gone(srv, now)
            options = model.get("user_options") or {}
            srv = _Server(
                user, name, started, _profile(options), json.dumps(options, sort_keys=True)[:200]
            )
            self._servers[(user, name)] = srv
            if self._baseline and model.get("ready"):
                srv.spawn_done = True  # running before the probe: its wait is unknown
        srv.last_activity = parse_time(model.get("last_activity")) or srv.last_activity
        pending, ready = model.get("pending"), bool(model.get("ready"))
        if srv.spawn_done:
            pass
        elif pending == "spawn" and srv.progress is None:
            srv.progress = self._watch(model.get("progress_url") or "")
        elif ready:
            p = srv.progress
            streamed = None
            if p is not None and p.done.wait(2.0) and p.outcome == "ok" and p.at is not None:
                streamed = p.at - srv.started
            srv.spawn_done = True  # its event comes once the hub's totals explain it
            self._done.append(_Done(srv, now, streamed))
        elif pending == "stop":
            srv.stop_seen = True
        if ready and not srv.session_open and srv.spawn_done:
            srv.session_open = True
            self._session(srv, None)

    def _gone(self, srv: _Server, now: float) -> None:
        if not srv.spawn_done:
            p = srv.progress
            if p is not None:
                p.done.wait(2.0)
            if srv.stop_seen:
                outcome, message = "stopped", "stopped before it was ready"
            elif p is not None and p.outcome == "failed":
                text = p.message.lower()
                outcome = "timeout" if any(w in text for w in TIMEOUT_WORDS) else "failed"
                message = p.message
            else:
                outcome, message = "failed", "gone before it was ready"
            end = p.at if p is not None and p.at is not None else now
            self._spawn(srv, max(end, srv.started), outcome, "progress", message)
        if srv.session_open:
            srv.session_open = False
            self._session(srv, max(now, srv.started))

    def _explain(self) -> None:
        """Give the spawns seen ready their waits, from the hub's own measurements.

        One spawn alone in the growth of the hub's totals gets exactly what the hub measured
        for it (spawn + proxy add). With several, each streamed one keeps its progress-stream
        measurement and the rest share what remains of the growth (exact for one of them).
        """
        unexplained = round(self._hub.spawns - self._accounted.spawns)
        if not self._done:
            self._accounted = self._hub  # resynchronise: nothing is waiting for its share
            return
        for d in self._done:
            d.polls += 1
        exact = unexplained == len(self._done)
        if not exact and all(d.polls < MAX_UNEXPLAINED_POLLS for d in self._done):
            return  # the totals do not cover them yet (or cover more): wait a poll
        remainder = self._hub.seconds - self._accounted.seconds
        first = self._done[0]
        if len(self._done) == 1 and exact and 0 < remainder <= first.bound + 1.0:
            self._spawn(
                first.server,
                first.server.started + remainder,
                "ok",
                "hub_metrics",
                streamed=first.streamed,
            )
        else:
            unseen = [d for d in self._done if d.streamed is None]
            for d in self._done:
                if d.streamed is not None:
                    self._spawn(
                        d.server,
                        d.server.started + d.streamed,
                        "ok",
                        "progress",
                        streamed=d.streamed,
                    )
                    remainder -= d.streamed
            if len(unseen) == 1 and exact and 0 < remainder <= unseen[0].bound + 1.0:
                d = unseen[0]
                self._spawn(d.server, d.server.started + remainder, "ok", "hub_metrics")
            elif unseen:
                total = sum(d.bound for d in unseen)
                scale = min(1.0, remainder / total) if exact and remainder > 0 else 1.0
                for d in unseen:
                    self._spawn(d.server, d.server.started + d.bound * scale, "ok", "estimate")
        self._done = []
        self._accounted = self._hub

    # -- progress streams -----------------------------------------------------------------

    def _watch(self, progress_url: str) -> _Progress:
        progress = _Progress()
        threading.Thread(
            target=self._follow,
            args=(progress_url, progress),
            name="afmon-hub-progress",
            daemon=True,
        ).start()
        return progress

    def _follow(self, progress_url: str, progress: _Progress) -> None:
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

    # -- events ---------------------------------------------------------------------------

    def _spawn(
        self,
        srv: _Server,
        end: float,
        outcome: str,
        source: str,
        error: str = "",
        streamed: float | None = None,
    ) -> None:
        srv.spawn_done = True
        attrs: dict[str, str | int | float | bool] = {
            "profile": srv.profile,
            "outcome": outcome,
            "source": source,
            "server": srv.name,
            "options": srv.options,
        }
        if error:
            attrs["error"] = error[:200]
        if streamed is not None:
            attrs["progress_seconds"] = round(streamed, 6)
        self._events.append(wire.Event("spawn", srv.event_id, srv.user, srv.started, end, attrs))

    def _session(self, srv: _Server, end: float | None, end_source: str = "") -> None:
        attrs: dict[str, str | int | float | bool] = {"profile": srv.profile, "server": srv.name}
        if srv.last_activity is not None:
            attrs["last_activity"] = srv.last_activity
        if end_source:
            attrs["end_source"] = end_source  # "last_seen": it ended while the agent was down
        self._events.append(wire.Event("session", srv.event_id, srv.user, srv.started, end, attrs))


def _profile(options: dict[str, Any]) -> str:
    for key in ("profile", "profile_slug", "profile_name"):
        value = options.get(key)
        if isinstance(value, str) and value:
            return value[:64]
    return "default"
