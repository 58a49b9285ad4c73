"""What a full facility reports beyond CPU and memory, for the simulator's rich mode.

Server start waits (time-to-session), Dask clusters with their first worker, scale-ups,
workers and computations, batch jobs, GPUs held and busy on the GPU nodes (with the device
series, `gpu_held` and the idle-but-held events that the GPU probe sends), data read by
source with the XRootD cache server's own counters, and the agents' spools. Everything goes
through the same wire batches as the rest of the simulator, and every ledger amount is
added to the simulator's ground truth.

Events are released at the tick when their end is known, as real probes send them.
"""

from __future__ import annotations

import heapq
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from afmon.collectors import wire
from afmon.collectors.probes.base import READY
from afmon.collectors.probes.gpu import STATES as GPU_PROBE_STATES
from afmon.collectors.simulator_model import SimMember, SimSession, SimulatedFacility

GPU_NODES = 2  # the first nodes carry GPUs
GPUS_PER_NODE = 4
GPU_MODEL = "a100"
GPU_NAME = "NVIDIA A100-SXM4-80GB"
GPU_MEMORY_BYTES = 80 * 1024**3
GPU_USER_MEMORY_BYTES = 20 * 1024**3  # what a holder's processes take
GPU_BUSY_WATTS = 300
GPU_IDLE_WATTS = 50
GPU_IDLE_RATIO = 0.05  # the GPU probe's idle threshold and minimum idle time (its defaults)
GPU_IDLE_MIN_SECONDS = 600.0
GPU_HOARDER_SHARE = 0.25  # of the GPU holders, those who leave their GPU idle
# The last GPU of the last GPU node is split into MIG instances (GPU instance id, slices of
# the 7): reported as the probe reports them, held by nobody (whole GPUs are the demo's).
MIG_SLICES = ((1, 4), (2, 3))
SOURCES = ("local", "cache", "remote")
XROOTD_SERVER = "xcache:1094"  # the cache that the `cache` reads come from, on the last node
XROOTD_OVERHEAD_BYTES = 65_536.0  # per open: protocol bytes no user's record accounts for
# How batch jobs end (state, exit code, weight): most succeed; the rest fail with an exit code,
# by the time limit, or are cancelled (docs/data.md, "Failure rates")
JOB_ENDS = (("COMPLETED", 0, 80), ("FAILED", 1, 8), ("FAILED", 137, 3), ("TIMEOUT", 0, 4),
            ("CANCELLED", 0, 5))  # fmt: skip
DASK_ERRED = 0.1  # of the computations
TERMINAL_SHARE = 5  # one session in this many is a terminal (ssh) session, by its id
# The input data format a member's XRootD reads are labelled with, by VO (the probe classifies
# the paths at the node; collectors/probes/data_formats.py)
FORMATS_OF_VO = {"atlas": ("physlite", "daod", "ntuple"), "cms": ("nanoaod", "miniaod", "aod")}

Sample = Callable[..., None]  # (node, user | None, metric, t, value, created=None, **labels)


@dataclass
class _GpuUse:
    gpus: int = 0  # held by the user's session on this node
    held: float = 0.0  # last sampled gauges
    busy: float = 0.0
    energy: float = 0.0
    created: float = 0.0
    gpu: int = -1  # the device it holds (index on the node), -1 once sampled released
    idle: bool = False  # a holder who leaves the GPU idle
    idle_since: float | None = None  # busy under GPU_IDLE_RATIO since
    idle_sent: bool = False  # the open gpu_idle event is out


@dataclass
class _Device:
    energy: float = 0.0  # the device's own energy counter (joules)
    created: float = 0.0


@dataclass
class _Server:
    """An XRootD server's counters (xrootd_server_*), as its summary stream reports them."""

    values: dict[str, float]
    created: float


@dataclass
class _DataUse:
    read: dict[str, float]
    created: float


class RichFacility:
    """The rich-mode model attached to one `FacilitySimulator`."""

    def __init__(self, sim: SimulatedFacility, seed: int) -> None:
        self.sim = sim
        self.rng = random.Random(seed + 7919)  # its own stream: the base model is unchanged
        self.gpu_nodes = sim.nodes[:GPU_NODES]
        # (release time, n, node, event, ground truth it brings): truth counts on release
        self._due: list[tuple[float, int, str, wire.Event, list[tuple[str, float]]]] = []
        self._n = 0
        self._gpu: dict[tuple[str, str], _GpuUse] = {}
        self._devices: dict[tuple[str, int], _Device] = {}
        self._now: list[tuple[str, wire.Event]] = []  # open events, sent at the next tick
        self._data: dict[tuple[str, str], _DataUse] = {}
        self._server: _Server | None = None
        self._batch_p = 2.0 * sim.interval / 86400  # batch jobs per member and day

    # -- events ---------------------------------------------------------------------------

    def _later(self, node: str, event: wire.Event, *truth: tuple[str, float]) -> None:
        """Send `event` at the first tick after its end; its ledger amounts count then."""
        assert event.end is not None
        self._n += 1
        heapq.heappush(self._due, (event.end, self._n, node, event, list(truth)))

    def due(self, t: float) -> list[tuple[str, wire.Event]]:
        out, self._now = self._now, []
        while self._due and self._due[0][0] <= t:
            _, _, node, event, truth = heapq.heappop(self._due)
            for resource, amount in truth:
                self.sim.truth.add(event.user, resource, amount)
            out.append((node, event))
        return out

    def session_started(self, sess: SimSession, t: float) -> None:
        """The wait before the session, and for some sessions a Dask cluster."""
        rng, local = self.rng, sess.member.local
        profile = f"{sess.cores} cores, {sess.memory_gib} GiB"
        if rng.random() < 0.05:  # a failed try first: an error, or the hub's start timeout
            outcome = rng.choice(("failed", "timeout"))
            self._later(
                sess.node,
                wire.Event(
                    kind="spawn",
                    id=f"{sess.id}-failed",
                    user=local,
                    start=t - 400,
                    end=t - 100,
                    attrs={"profile": profile, "outcome": outcome},
                ),
                ("spawn_failures", 1.0),
            )
        wait = rng.choice((1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 12.0, 45.0, 150.0))
        self._later(
            sess.node,
            wire.Event(
                kind="spawn",
                id=f"{sess.id}-spawn",
                user=local,
                start=t - wait,
                end=t,
                attrs={"profile": profile, "outcome": "ok"},
            ),
        )
        if sess.end - sess.start >= 3600 and rng.random() < 0.4:
            self._dask_cluster(sess, t + 60)
        if sess.node in self.gpu_nodes and rng.random() < 0.6:
            use = self._gpu.get((sess.node, local))
            taken = {u.gpu for (n, _), u in self._gpu.items() if n == sess.node and u.gpu >= 0}
            free = [
                i for i in range(GPUS_PER_NODE) if i not in taken and not self.is_mig(sess.node, i)
            ]
            if use is not None and use.gpu >= 0:  # released at this tick: the same device again
                free = [use.gpu]
            if free:
                use = self._gpu.setdefault((sess.node, local), _GpuUse(created=t))
                use.gpus, use.gpu = 1, free[0]
                use.idle = rng.random() < GPU_HOARDER_SHARE

    def session_ended(self, sess: SimSession) -> None:
        use = self._gpu.get((sess.node, sess.member.local))
        if use is not None:
            use.gpus = 0

    def _dask_cluster(self, sess: SimSession, start: float) -> None:
        rng, local, node = self.rng, sess.member.local, sess.node
        cid = f"{sess.id}-dask"
        profile = "dask-default"
        self._later(
            node,
            wire.Event(
                kind="dask_cluster",
                id=cid,
                user=local,
                start=start,
                end=sess.end,
                attrs={"profile": profile},
            ),
            ("dask_cluster_seconds", sess.end - start),
            ("dask_clusters", 1.0),
        )
        first = start + rng.choice((15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 240.0))
        self._later(
            node,
            wire.Event(
                kind="dask_scale",
                id=f"{cid}-first",
                user=local,
                start=start,
                end=first,
                attrs={"profile": profile, "reason": "first_worker", "target": 1, "from": 0},
            ),
        )
        workers = [first]
        asked = first + 300
        if asked + 600 < sess.end:
            n = rng.choice((4, 8, 16))
            reached = asked + rng.choice((30.0, 60.0, 90.0, 120.0, 200.0, 400.0))
            self._later(
                node,
                wire.Event(
                    kind="dask_scale",
                    id=f"{cid}-up",
                    user=local,
                    start=asked,
                    end=reached,
                    attrs={"profile": profile, "reason": "scale", "target": n, "from": 1},
                ),
            )
            workers += [reached] * (n - 1)
            done = reached + rng.choice((300.0, 600.0, 1200.0, 2400.0))
            if done < sess.end:
                self._later(
                    node,
                    wire.Event(
                        kind="dask_computation",
                        id=f"{cid}-c1",
                        user=local,
                        start=reached,
                        end=done,
                        attrs={
                            "profile": profile,
                            "outcome": "erred" if rng.random() < DASK_ERRED else "ok",
                        },
                    ),
                )
        for i, joined in enumerate(workers):
            self._later(
                node,
                wire.Event(
                    kind="dask_worker",
                    id=f"{cid}-w{i}",
                    user=local,
                    start=joined,
                    end=sess.end,
                    attrs={"nthreads": 1},
                ),
                ("dask_worker_seconds", sess.end - joined),
                ("dask_worker_core_seconds", sess.end - joined),
            )

    def maybe_batch_job(self, member: SimMember, t: float) -> None:
        rng = self.rng
        if rng.random() >= self._batch_p:
            return
        wait = rng.choice((30.0, 60.0, 300.0, 900.0, 1800.0))
        wall = rng.choice((600.0, 1800.0, 3600.0, 7200.0))
        cores = rng.choice((1, 2, 4, 8))
        cpu = wall * cores * rng.choice((0.5, 0.75, 1.0))
        node = rng.choice(self.sim.nodes)
        state, code, _ = rng.choices(JOB_ENDS, weights=[w for *_, w in JOB_ENDS])[0]
        start = t + wait
        hs = self.sim.hepscore
        self._later(
            node,
            wire.Event(
                kind="batch_job",
                id=f"{self.sim.facility}-{member.local}-job-{int(t)}",
                user=member.local,
                start=start,
                end=start + wall,
                attrs={
                    "partition": rng.choice(("short", "long")),
                    "submit": t,
                    "cores": cores,
                    "cpu_seconds": cpu,
                    "wall_seconds": wall,
                    "gpus": 0,
                    "node": node,
                    "state": state,
                    "exit_code": code,
                },
            ),
            ("batch_jobs", 1.0),
            ("batch_job_seconds", wall),
            ("batch_wall_core_seconds", wall * cores),
            ("batch_cpu_seconds", cpu),
            ("batch_cpu_hs23_seconds", cpu * hs),
            ("batch_wall_core_hs23_seconds", wall * cores * hs),
        )

    # -- samples --------------------------------------------------------------------------

    def node_tick(self, t: float, node: str, active: dict[str, SimSession], sample: Sample) -> None:
        """GPU, data, XRootD server and spool samples of one node at one tick (the interval
        that ends at t)."""
        busy_of = self._gpu_users(t, node, sample)
        if node in self.gpu_nodes:
            self._gpu_devices(t, node, busy_of, sample)
        self._data_reads(t, node, active, sample)
        if node == self.sim.nodes[-1]:
            self._xrootd_server(t, node, sample)
        sample(node, None, "agent_spool_batches", t, 0.0)  # the agents deliver

    def _gpu_users(self, t: float, node: str, sample: Sample) -> dict[int, tuple[str, float]]:
        """Per user holding a GPU of this node: the ledger's gauges, `gpu_held` per device (1,
        then 0 once released, as the probe sends it) and idle-but-held events; returns
        device index -> (holder, busy ratio)."""
        rng, truth, dt = self.rng, self.sim.truth, self.sim.interval
        busy_of: dict[int, tuple[str, float]] = {}
        for (n, local), use in self._gpu.items():
            if n != node:
                continue
            if use.held:  # the interval that ends now was spent at the last sampled values
                truth.add(local, "gpu_allocated_seconds", use.held * dt)
                truth.add(local, f"gpu_{GPU_MODEL}_allocated_seconds", use.held * dt)
                truth.add(local, "gpu_active_seconds", use.busy * dt)
                truth.add(local, f"gpu_{GPU_MODEL}_active_seconds", use.busy * dt)
                joules = (use.busy * GPU_BUSY_WATTS + (use.held - use.busy) * GPU_IDLE_WATTS) * dt
                use.energy += joules
                truth.add(local, "gpu_energy_joules", joules)
            if not use.held and not use.gpus:
                continue
            use.held = float(use.gpus)
            use.busy = use.held * rng.choice((0.0, 0.25, 0.5, 0.75, 1.0))
            if use.idle:
                use.busy = 0.0
            model = {"model": GPU_MODEL}
            sample(node, local, "user_gpus_held", t, use.held)
            sample(node, local, "user_gpu_busy", t, use.busy)
            sample(node, local, "user_model_gpus_held", t, use.held, **model)
            sample(node, local, "user_model_gpu_busy", t, use.busy, **model)
            sample(node, local, "user_gpu_energy_joules", t, use.energy, created=use.created)
            gpu = {"gpu": self.gpu_uuid(node, use.gpu)}
            self._idle_step(t, node, local, use)
            if use.held:
                busy_of[use.gpu] = (local, use.busy)
                sample(node, local, "gpu_held", t, 1.0, **gpu)
                sample(node, local, "user_gpu_memory_bytes", t, float(GPU_USER_MEMORY_BYTES), **gpu)
                sample(node, local, "user_gpu_sm_ratio", t, use.busy, **gpu)
            else:  # released: the device is free again
                sample(node, local, "gpu_held", t, 0.0, **gpu)
                use.gpu = -1
        return busy_of

    def _idle_step(self, t: float, node: str, local: str, use: _GpuUse) -> None:
        """The GPU probe's idle-but-held events: one without an end once the held GPU has been
        idle GPU_IDLE_MIN_SECONDS, and its end when it is busy again or released (the
        ledger's gpu_idle_seconds count then)."""
        idle = bool(use.held) and use.busy < GPU_IDLE_RATIO
        if idle and use.idle_since is None:
            use.idle_since, use.idle_sent = t, False
        if use.idle_since is None:
            return
        start = use.idle_since
        event = wire.Event(
            kind="gpu_idle",
            id=f"{node}/{self.gpu_uuid(node, use.gpu)}/{local}/{start:.0f}",
            user=local,
            start=start,
            end=None,
            attrs={"gpu": self.gpu_uuid(node, use.gpu), "model": GPU_MODEL, "node": node,
                   "share": 1.0},
        )  # fmt: skip
        if idle and not use.idle_sent and t - start >= GPU_IDLE_MIN_SECONDS:
            use.idle_sent = True
            self._now.append((node, event))
        elif not idle:
            if use.idle_sent:
                ended = wire.Event(event.kind, event.id, local, start, t, attrs=event.attrs)
                self._later(node, ended, ("gpu_idle_seconds", t - start))
            use.idle_since, use.idle_sent = None, False

    def _gpu_devices(
        self, t: float, node: str, busy_of: dict[int, tuple[str, float]], sample: Sample
    ) -> None:
        """What the GPU probe reports per device (capacity, memory, power, energy, busy,
        who may be seen) and its state."""
        dt = self.sim.interval
        for i in range(GPUS_PER_NODE):
            dev = self._devices.setdefault((node, i), _Device(created=t))
            holder = busy_of.get(i)
            busy = holder[1] if holder else 0.0
            watts = GPU_IDLE_WATTS + (GPU_BUSY_WATTS - GPU_IDLE_WATTS) * busy
            dev.energy += watts * dt
            gpu = {"gpu": self.gpu_uuid(node, i)}
            mig = self.is_mig(node, i)
            info = {"index": str(i), "name": GPU_NAME, "model": GPU_MODEL, "mig": str(mig).lower()}
            sample(node, None, "gpu_info", t, 1.0, **gpu, **info)
            sample(node, None, "gpu_memory_total_bytes", t, float(GPU_MEMORY_BYTES), **gpu)
            used = float(GPU_USER_MEMORY_BYTES) if holder else 0.0
            sample(node, None, "gpu_memory_used_bytes", t, used, **gpu)
            sample(node, None, "gpu_power_watts", t, watts, **gpu)
            sample(node, None, "gpu_energy_joules", t, dev.energy, created=dev.created, **gpu)
            sample(node, None, "gpu_processes_visible", t, float(holder is not None), **gpu)
            if mig:
                self._mig_units(t, node, i, sample)
                continue
            sample(node, None, "gpu_utilization_ratio", t, busy, **gpu)
            sample(node, None, "gpu_accounting_mode", t, 1.0, **gpu)
            sample(node, None, "gpu_allocated_ratio", t, float(holder is not None), **gpu)
        for state in GPU_PROBE_STATES:
            sample(node, None, "gpu_probe_state", t, float(state == READY), state=state)

    def _data_reads(
        self, t: float, node: str, active: dict[str, SimSession], sample: Sample
    ) -> None:
        """Bytes read per user and source; the `cache` reads also count on the XRootD cache."""
        rng, truth = self.rng, self.sim.truth
        server = self._server_at(t)
        for local, sess in active.items():
            use = self._data.setdefault(
                (node, local), _DataUse({s: 0.0 for s in SOURCES}, created=t)
            )
            if t > sess.start:
                for source, mb in zip(
                    SOURCES,
                    (rng.randrange(0, 120), rng.randrange(0, 60), rng.randrange(0, 20)),
                    strict=True,
                ):
                    use.read[source] += mb * 1_000_000.0
                    truth.add(local, f"data_read_{source}_bytes", mb * 1_000_000.0)
                    if source == "cache" and mb:
                        server.values["read"] += mb * 1_000_000.0
                        server.values["opened"] += 1.0
                        server.values["opens"] += 1.0
                        server.values["link_in"] += 1_024.0  # the request
                        server.values["unattributed_in"] += 1_024.0
                        server.values["unattributed_out"] += XROOTD_OVERHEAD_BYTES
            fmt = self.format_of(local)
            for source, value in use.read.items():
                sample(
                    node,
                    local,
                    "user_data_read_bytes",
                    t,
                    value,
                    created=use.created,
                    source=source,
                    format=fmt,
                )

    def format_of(self, local: str) -> str:
        """The format of a member's reads: one of their VO's, fixed per member."""
        vo = next((m.vo for m in self.sim.members if m.local == local), "")
        choices = FORMATS_OF_VO.get(vo, ("ntuple",))
        return choices[zlib.crc32(local.encode()) % len(choices)]

    @staticmethod
    def is_terminal(sess: SimSession) -> bool:
        """Whether a session is a terminal (ssh) session rather than a notebook."""
        return zlib.crc32(sess.id.encode()) % TERMINAL_SHARE == 0

    def _server_at(self, t: float) -> _Server:
        if self._server is None:
            keys = ("read", "written", "opened", "opens", "link_in", "restarts",
                    "unattributed_out", "unattributed_in")  # fmt: skip
            self._server = _Server(dict.fromkeys(keys, 0.0), created=t)
        return self._server

    def _xrootd_server(self, t: float, node: str, sample: Sample) -> None:
        """The cache server's summary counters: link out = bytes read + unattributed out."""
        server = self._server_at(t)
        v = server.values
        labels = {"server": XROOTD_SERVER, "source": "cache"}
        for metric, value in (
            ("xrootd_server_read_bytes", v["read"]),
            ("xrootd_server_written_bytes", v["written"]),
            ("xrootd_server_files_opened", v["opened"]),
            ("xrootd_server_opens", v["opens"]),
            ("xrootd_server_link_in_bytes", v["link_in"]),
            ("xrootd_server_link_out_bytes", v["read"] + v["unattributed_out"]),
            ("xrootd_server_restarts", v["restarts"]),
        ):
            sample(node, None, metric, t, value, created=server.created, **labels)
        for direction in ("out", "in"):
            sample(node, None, "xrootd_unattributed_bytes", t, v[f"unattributed_{direction}"],
                   created=server.created, direction=direction, **labels)  # fmt: skip

    def _mig_units(self, t: float, node: str, index: int, sample: Sample) -> None:
        """The MIG instances of a split GPU: share of the GPU, memory, GPM busy ratio, and
        held by nobody."""
        parent = self.gpu_uuid(node, index)
        for gi, slices in MIG_SLICES:
            unit = {"gpu": f"MIG-{parent.removeprefix('GPU-')}-{gi}"}
            info = {"parent": parent, "gi": str(gi), "slices": str(slices), "busy": "gpm"}
            sample(node, None, "gpu_mig_info", t, slices / 7, **unit, **info)
            total = float(GPU_MEMORY_BYTES // 8 * slices)
            sample(node, None, "gpu_memory_total_bytes", t, total, **unit)
            sample(node, None, "gpu_memory_used_bytes", t, 0.0, **unit)
            sample(node, None, "gpu_utilization_ratio", t, 0.0, **unit)
            sample(node, None, "gpu_allocated_ratio", t, 0.0, **unit)

    def is_mig(self, node: str, index: int) -> bool:
        return node == self.gpu_nodes[-1] and index == GPUS_PER_NODE - 1

    def gpu_uuid(self, node: str, index: int) -> str:
        """The device's id, as NVML's UUIDs are: stable and unique in the facility."""
        return f"GPU-{self.sim.facility}-{node}-{index}"
