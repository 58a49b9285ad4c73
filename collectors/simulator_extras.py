"""What a full facility reports beyond CPU and memory, for the simulator's rich mode.

Server start waits (time-to-session), Dask clusters with their first worker, scale-ups,
workers and computations, batch jobs, GPUs held and busy on the GPU nodes, and data read
by source. Everything goes through the same wire batches as the rest of the simulator,
and every ledger amount is added to the simulator's ground truth.

Events are released at the tick when their end is known, as real probes send them.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass

from afmon.collectors import wire
from afmon.collectors.simulator_model import SimMember, SimSession, SimulatedFacility

GPU_NODES = 2  # the first nodes carry GPUs
GPUS_PER_NODE = 4
GPU_MODEL = "a100"
GPU_BUSY_WATTS = 300
GPU_IDLE_WATTS = 50
SOURCES = ("local", "cache", "remote")

Sample = Callable[..., None]  # (node, user | None, metric, t, value, created=None, **labels)


@dataclass
class _GpuUse:
    gpus: int = 0  # held by the user's session on this node
    held: float = 0.0  # last sampled gauges
    busy: float = 0.0
    energy: float = 0.0
    created: float = 0.0


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
        self._data: dict[tuple[str, str], _DataUse] = {}
        self._batch_p = 2.0 * sim.interval / 86400  # batch jobs per member and day

    # -- events ---------------------------------------------------------------------------

    def _later(self, node: str, event: wire.Event, *truth: tuple[str, float]) -> None:
        """Send `event` at the first tick after its end; its ledger amounts count then."""
        assert event.end is not None
        self._n += 1
        heapq.heappush(self._due, (event.end, self._n, node, event, list(truth)))

    def due(self, t: float) -> list[tuple[str, wire.Event]]:
        out = []
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
        if rng.random() < 0.05:  # a failed try first
            self._later(
                sess.node,
                wire.Event(
                    kind="spawn",
                    id=f"{sess.id}-failed",
                    user=local,
                    start=t - 400,
                    end=t - 100,
                    attrs={"profile": profile, "outcome": "failed"},
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
            taken = sum(u.gpus for (n, _), u in self._gpu.items() if n == sess.node)
            if taken < GPUS_PER_NODE:
                use = self._gpu.setdefault((sess.node, local), _GpuUse(created=t))
                use.gpus = 1

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
                        attrs={"profile": profile, "outcome": "ok"},
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
                    "state": "COMPLETED",
                    "exit_code": 0,
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
        """GPU and data samples of one node at one tick (the interval that ends at t)."""
        rng, truth, dt = self.rng, self.sim.truth, self.sim.interval
        busy_by_gpu: list[float] = []
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
            busy_by_gpu.append(use.busy)
            model = {"model": GPU_MODEL}
            sample(node, local, "user_gpus_held", t, use.held)
            sample(node, local, "user_gpu_busy", t, use.busy)
            sample(node, local, "user_model_gpus_held", t, use.held, **model)
            sample(node, local, "user_model_gpu_busy", t, use.busy, **model)
            sample(node, local, "user_gpu_energy_joules", t, use.energy, created=use.created)
        if node in self.gpu_nodes:
            busy_by_gpu += [0.0] * (GPUS_PER_NODE - len(busy_by_gpu))
            for i, busy in enumerate(busy_by_gpu[:GPUS_PER_NODE]):
                sample(node, None, "gpu_utilization_ratio", t, busy, gpu=str(i))
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
            for source, value in use.read.items():
                sample(
                    node,
                    local,
                    "user_data_read_bytes",
                    t,
                    value,
                    created=use.created,
                    source=source,
                )
