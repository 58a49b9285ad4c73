"""Dask probe: a scheduler plugin that measures a cluster's waits and its workers' time.

Install it in the scheduler with `dask scheduler --preload afmon.collectors.probes.dask_plugin`
(which calls `dask_setup`), or from a client with `client.register_plugin(AfmonSchedulerPlugin(
owner="alice"))`. Per cluster it reports, as wire events owned by the cluster's user:

    dask_cluster      scheduler start -> scheduler close
    dask_scale        <cluster>/first-worker: scheduler start -> first worker joined;
                      <cluster>/up-N, /down-N: a scale request -> its target worker count reached
                      (attrs target, from, reason scale/adaptive, outcome ok/superseded)
    dask_worker       a worker joined -> left (attrs nthreads): worker-seconds, core-seconds
    dask_computation  the scheduler received the graph (its update-graph handling began) ->
                      all its requested keys in memory (outcome ok/erred/cancelled):
                      time-to-finish

A computation starts when the scheduler began handling its graph, not when the plugin's
`update_graph` hook runs: the hook is called after the graph was deserialised, materialised
and ordered, which takes a large graph tenths of a second. The scheduler names that moment in
the stimulus id it gives the graph (`update-graph-<time>`) and in its `update-graph` event
(`metrics.start_timestamp_seconds`, with the same `stimulus_id`), which reaches the plugin's
`log_event` hook: the start is taken from the stimulus id and confirmed from the event.

A scheduler does not see scale requests itself (a SpecCluster scales from the client side), so
they are told to it: `track_cluster(cluster)` for a cluster object in this process (manual and
adaptive scaling, which goes through `cluster.scale`), or the `afmon_scale` scheduler handler
(`report_scale(client, n)`) from anywhere. The plugin runs inside the scheduler process and
pushes its own batches: a spool and the agent's push loop (AgentSettings: AFMON_SERVER_URL,
AFMON_TOKEN, AFMON_FACILITY, AFMON_SPOOL_DIR), in a thread of its own.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from afmon.collectors import wire
from afmon.collectors.probes.base import READY, ProbeOutput

log = logging.getLogger(__name__)


@dataclass
class _Request:
    id: str
    start: float
    target: int
    before: int
    reason: str


@dataclass
class _Computation:
    id: str
    start: float
    stimulus_id: str = ""
    remaining: set[Any] = field(default_factory=set)


_GRAPH_STIMULUS = re.compile(r"^update-graph-(\d+(?:\.\d+)?)$")
# a stimulus time further than this from the plugin's clock is not taken (another clock)
_STIMULUS_PLAUSIBLE_SECONDS = 3600.0


def graph_received_at(stimulus_id: object, now: float) -> float | None:
    """When the scheduler began handling a graph, from the stimulus id it gave it
    (`update-graph-<time()>`, distributed's Scheduler.update_graph); None when the id is
    not of that form or its time is not plausible against `now`."""
    m = _GRAPH_STIMULUS.match(stimulus_id) if isinstance(stimulus_id, str) else None
    if m is None:
        return None
    t = float(m.group(1))
    return t if now - _STIMULUS_PLAUSIBLE_SECONDS <= t <= now + 1.0 else None


class _Outbox:
    """A probe that hands the plugin's events to the push loop."""

    name = "dask"
    state = READY

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[wire.Event] = []

    def put(self, event: wire.Event) -> None:
        with self.lock:
            self.events.append(event)

    def collect(self, now: float) -> ProbeOutput:
        with self.lock:
            events, self.events = self.events, []
        return ProbeOutput(events=events)


class AfmonSchedulerPlugin(SchedulerPlugin):
    name = "afmon"

    def __init__(
        self,
        owner: str | None = None,
        *,
        profile: str = "default",
        cluster_id: str | None = None,
        push: bool = True,
        interval: float = 5.0,
        settings: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`owner`: the cluster's user (default: $JUPYTERHUB_USER, else the process owner);
        `settings`: AgentSettings overrides; `push=False` keeps events in `outbox` only."""
        self.owner = owner or os.environ.get("JUPYTERHUB_USER") or getpass.getuser()
        self.profile = profile
        self.cluster_id = cluster_id
        self.push = push
        self.interval = interval
        self.settings = dict(settings or {})
        self.clock = clock
        self.outbox = _Outbox()

    def __getstate__(self) -> dict[str, Any]:  # sent by register_plugin: no live state
        state = self.__dict__.copy()
        for k in ("outbox", "_scheduler", "_thread", "_stop", "_loop", "_lock"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.outbox = _Outbox()

    # -- scheduler hooks ------------------------------------------------------------------

    async def start(self, scheduler: Any) -> None:
        self._scheduler = scheduler
        self._lock = threading.Lock()
        self.cluster_id = self.cluster_id or scheduler.id
        self.requested = float(scheduler.time_started)
        self._workers: dict[str, tuple[float, int]] = {}
        self._first_worker = False
        self._requests: list[_Request] = []
        self._n_requests = 0
        self._computations: dict[str, _Computation] = {}
        self._key_owner: dict[Any, list[str]] = {}
        self._n_graphs = 0
        self._closed = False
        scheduler.handlers["afmon_scale"] = self._handle_scale
        self._emit("dask_cluster", self.cluster_id, self.requested, None, {})
        self._thread: threading.Thread | None = None
        if self.push:
            self._start_push()

    def add_worker(self, scheduler: Any, worker: str) -> None:
        now = self.clock()
        with self._lock:
            ws = scheduler.workers.get(worker)
            self._workers[worker] = (now, int(getattr(ws, "nthreads", 1) or 1))
            if not self._first_worker:
                self._first_worker = True
                self._emit(
                    "dask_scale",
                    f"{self.cluster_id}/first-worker",
                    self.requested,
                    now,
                    {"reason": "first_worker", "target": 1, "from": 0},
                )
            self._reached(len(scheduler.workers), now)

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        now = self.clock()
        with self._lock:
            self._end_worker(worker, now)
            n = len(scheduler.workers) - (1 if worker in scheduler.workers else 0)
            self._reached(n, now)

    def update_graph(
        self, scheduler: Any, *, keys: Any = (), stimulus_id: str | None = None, **kwargs: Any
    ) -> None:
        now = self.clock()
        received = graph_received_at(stimulus_id, now)
        with self._lock:
            self._n_graphs += 1
            comp = _Computation(
                f"{self.cluster_id}/graph-{self._n_graphs}",
                now if received is None else received,
                stimulus_id or "",
            )
            for key in keys:
                ts = scheduler.tasks.get(key)
                if ts is None or ts.state != "memory":
                    comp.remaining.add(key)
                    self._key_owner.setdefault(key, []).append(comp.id)
            self._computations[comp.id] = comp
            if not comp.remaining:
                self._finish(comp, now, "ok")

    def log_event(self, topic: str, msg: Any) -> None:
        """The scheduler's `update-graph` event: its `start_timestamp_seconds` is when the
        graph of the computation with the same stimulus id was received (the start)."""
        if topic != "scheduler" or not isinstance(msg, dict):
            return
        if msg.get("action") != "update-graph" or not isinstance(msg.get("metrics"), dict):
            return
        received = msg["metrics"].get("start_timestamp_seconds")
        stimulus = msg.get("stimulus_id")
        if not isinstance(received, int | float) or not stimulus or not hasattr(self, "_lock"):
            return
        with self._lock:
            for comp in self._computations.values():
                if comp.stimulus_id == stimulus and comp.start != received:
                    comp.start = float(received)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if key not in self._key_owner or finish not in ("memory", "erred", "forgotten"):
            return
        now = self.clock()
        with self._lock:
            for cid in self._key_owner.pop(key, []):
                comp = self._computations.get(cid)
                if comp is None:
                    continue
                if finish == "memory":
                    comp.remaining.discard(key)
                    if not comp.remaining:
                        self._finish(comp, now, "ok")
                else:
                    self._finish(comp, now, "erred" if finish == "erred" else "cancelled")

    async def close(self) -> None:
        now = self.clock()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for worker in list(self._workers):
                self._end_worker(worker, now)
            for comp in list(self._computations.values()):
                self._finish(comp, now, "cancelled")
            self._emit("dask_cluster", self.cluster_id, self.requested, now, {})
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=30)
            self._loop.spool_batch()
            result = self._loop.flush(force=True)
            if result.pending:
                log.warning(
                    "afmon: %d batches left in the spool %s",
                    result.pending,
                    self._loop.spool.directory,
                )

    # -- scale requests -------------------------------------------------------------------

    def scale_requested(
        self, target: int, *, reason: str = "scale", at: float | None = None
    ) -> None:
        """A request to scale to `target` workers (from `track_cluster` or `afmon_scale`)."""
        now = self.clock() if at is None else at
        with self._lock:
            n = len(self._workers)
            for old in self._requests:  # a newer request replaces one still under way
                self._emit(
                    "dask_scale",
                    old.id,
                    old.start,
                    now,
                    {**self._req_attrs(old), "outcome": "superseded"},
                )
            self._n_requests += 1
            direction = "up" if target >= n else "down"
            req = _Request(
                f"{self.cluster_id}/{direction}-{self._n_requests}", now, target, n, reason
            )
            self._requests = [req]
            self._reached(n, now)

    def _handle_scale(self, target: int, reason: str = "scale", **_kw: Any) -> None:
        self.scale_requested(int(target), reason=reason)

    def _reached(self, n: int, now: float) -> None:
        for req in list(self._requests):
            if (req.target >= req.before and n >= req.target) or (
                req.target < req.before and n <= req.target
            ):
                self._emit("dask_scale", req.id, req.start, now, self._req_attrs(req))
                self._requests.remove(req)

    @staticmethod
    def _req_attrs(req: _Request) -> dict[str, str | int | float | bool]:
        return {"reason": req.reason, "target": req.target, "from": req.before, "outcome": "ok"}

    # -- events ---------------------------------------------------------------------------

    def _end_worker(self, worker: str, now: float) -> None:
        joined = self._workers.pop(worker, None)
        if joined is not None:
            self._emit(
                "dask_worker",
                f"{self.cluster_id}/{worker}@{joined[0]:.6f}",
                joined[0],
                now,
                {"nthreads": joined[1], "worker": worker},
            )

    def _finish(self, comp: _Computation, now: float, outcome: str) -> None:
        self._computations.pop(comp.id, None)
        self._emit("dask_computation", comp.id, comp.start, now, {"outcome": outcome})

    def _emit(
        self,
        kind: str,
        id_: str,
        start: float,
        end: float | None,
        attrs: dict[str, str | int | float | bool],
    ) -> None:
        attrs = {"profile": self.profile, "cluster": str(self.cluster_id), **attrs}
        self.outbox.put(wire.Event(kind, id_, self.owner, start, end, attrs))  # type: ignore[arg-type]

    def _start_push(self) -> None:
        import httpx

        from afmon.collectors.push import PushLoop
        from afmon.collectors.settings import AgentSettings
        from afmon.collectors.spool import Spool

        s = AgentSettings(**self.settings)
        spool = Spool(
            Path(s.spool_dir)
            / f"dask-{self.cluster_id}".replace("://", "-").replace("/", "-").replace(":", "-"),
            max_bytes=s.spool_max_bytes,
        )
        self._loop = PushLoop(
            probes=[self.outbox],
            spool=spool,
            client=httpx.Client(timeout=s.timeout_seconds),
            server_url=s.server_url,
            token=s.token.get_secret_value() if s.token else None,
            facility=s.facility,
            node=s.node,
            interval=self.interval,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop.run_forever, args=(self._stop,), name="afmon-dask-push", daemon=True
        )
        self._thread.start()


def track_cluster(cluster: Any, plugin: AfmonSchedulerPlugin) -> None:
    """Tell `plugin` of every `cluster.scale(n)`, manual or from `cluster.adapt()` (whose
    Adaptive.scale_up calls cluster.scale; its `log` says when it decided "up")."""
    original = cluster.scale

    def scale(n: int = 0, *args: Any, **kwargs: Any) -> Any:
        adaptive = getattr(cluster, "_adaptive", None)
        entries = getattr(adaptive, "log", None) or []
        recent = entries and time.time() - entries[-1][0] < 1.0
        plugin.scale_requested(int(n), reason="adaptive" if recent else "scale")
        return original(n, *args, **kwargs)

    cluster.scale = scale


def report_scale(client: Any, target: int, reason: str = "scale") -> None:
    """From a client: tell the scheduler's afmon plugin of a scale request to `target`."""
    client.sync(client.scheduler.afmon_scale, target=target, reason=reason)


def dask_setup(scheduler: Any) -> None:
    """`dask scheduler --preload afmon.collectors.probes.dask_plugin`: settings from AFMON_* env."""
    scheduler.add_plugin(AfmonSchedulerPlugin())
