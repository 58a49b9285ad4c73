"""The GPU probe's per-user side: what each user holds and uses of the GPUs of a node.

Held and busy shares per user and GPU model, the energy between two cycles split by who held
the GPU, NVML's per-process accounting summed per user, per-unit memory and SM utilisation of
each user's processes, and the intervals in which a held unit stays idle. `GpuProbe`
(collectors/probes/gpu.py) keeps the devices' state in `Gpu` and `Unit` and asks this for the
per-user series and events of a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from afmon.collectors import wire
from afmon.collectors.probes.base import sample


@dataclass
class Unit:
    """A whole GPU or one MIG instance."""

    uuid: str
    handle: Any
    fraction: float  # of its GPU
    gi_id: int | None = None
    slices: int = 0
    busy: float | None = None
    gpm_prev: Any = None
    shares: dict[str, float] = field(default_factory=dict)  # user -> share of the unit
    weights: dict[str, float] = field(default_factory=dict)  # user -> share of its activity
    memory: dict[str, float] = field(default_factory=dict)  # user -> bytes (last poll)
    sm: dict[str, float] = field(default_factory=dict)  # user -> SM utilisation (last poll)


@dataclass
class Gpu:
    index: int
    handle: Any
    uuid: str
    name: str
    model: str
    mig: bool
    gpm: bool
    units: list[Unit] = field(default_factory=list)
    accounting: bool = False
    processes_visible: bool = True
    util_ts: int = 0
    energy_mj: float | None = None
    prev_alloc: dict[str, float] = field(default_factory=dict)  # user -> GPU share last cycle
    pids: dict[int, str] = field(default_factory=dict)  # pid -> user at the last poll
    held: set[tuple[str, str]] = field(default_factory=set)  # (unit uuid, user) last cycle


@dataclass
class _Idle:
    start: float
    share: float
    model: str
    emitted: bool = False


class GpuUsers:
    """Per-user state across cycles: energy and accounting counters, what was reported."""

    def __init__(self, node: str, idle_threshold: float, idle_min_seconds: float) -> None:
        self.node = node
        self.idle_threshold = idle_threshold
        self.idle_min_seconds = idle_min_seconds
        self._energy: dict[str, tuple[float, float]] = {}  # user -> (joules, created)
        self._acct: dict[str, tuple[float, float, float]] = {}  # user -> (s, busy s, created)
        self._acct_changed: set[str] = set()
        self._live: set[tuple[str, str]] = set()  # (user, model) reported non-zero last cycle
        self._idle: dict[tuple[str, str], _Idle] = {}

    def add_energy(self, shares: dict[str, float], joules: float) -> None:
        """`joules` of one GPU since the last cycle, to the users who held it (their shares)."""
        for user, share in shares.items():
            total, created = self._energy[user]
            self._energy[user] = (total + joules * share, created)

    def start_energy(self, users: Any, now: float) -> None:
        """Users who hold a GPU from now on get an energy counter created now."""
        for user in users:
            self._energy.setdefault(user, (0.0, now))

    def add_accounting(self, user: str, seconds: float, busy_seconds: float, now: float) -> None:
        """One ended process's NVML accounting: its time and its busy time."""
        secs, busy, created = self._acct.get(user, (0.0, 0.0, now))
        self._acct[user] = (secs + seconds, busy + busy_seconds, created)
        self._acct_changed.add(user)

    def series(self, gpus: list[Gpu], now: float) -> list[wire.Series]:
        """Per user (and model): held and busy shares, energy, accounting counters, and per
        unit the processes' memory and SM utilisation."""
        held: dict[tuple[str, str], float] = {}
        busy: dict[tuple[str, str], float] = {}
        for gpu in gpus:
            for unit in gpu.units:
                for user, share in unit.shares.items():
                    key = (user, gpu.model)
                    held[key] = held.get(key, 0.0) + share * unit.fraction
                    if unit.busy is not None:
                        active = unit.busy * unit.weights.get(user, 0.0) * unit.fraction
                        busy[key] = busy.get(key, 0.0) + active
        keys = sorted(set(held) | self._live)
        self._live = set(held)
        out: list[wire.Series] = []
        totals: dict[str, list[float]] = {}
        for user, model in keys:
            lab = {"user": user, "node": self.node, "model": model}
            h, b = held.get((user, model), 0.0), busy.get((user, model), 0.0)
            out.append(sample("user_model_gpus_held", lab, now, h))
            out.append(sample("user_model_gpu_busy", lab, now, b))
            acc = totals.setdefault(user, [0.0, 0.0])
            acc[0] += h
            acc[1] += b
        for user, (h, b) in totals.items():
            lab = {"user": user, "node": self.node}
            out.append(sample("user_gpus_held", lab, now, h))
            out.append(sample("user_gpu_busy", lab, now, b))
            joules, created = self._energy[user]
            out.append(sample("user_gpu_energy_joules", lab, now, joules, created=created))
        for user in sorted(self._acct_changed):
            secs, bsecs, created = self._acct[user]
            lab = {"user": user, "node": self.node}
            out.append(sample("user_gpu_accounting_seconds", lab, now, secs, created=created))
            out.append(sample("user_gpu_accounting_busy_seconds", lab, now, bsecs, created=created))
        self._acct_changed.clear()
        for gpu in gpus:
            out.extend(self._process_series(gpu, now))
        return out

    def _process_series(self, gpu: Gpu, now: float) -> list[wire.Series]:
        """Per user and unit: `gpu_held` (1, then 0 once released), the GPU memory of their
        processes and their SM utilisation (as of the last poll)."""
        out: list[wire.Series] = []
        held = {(unit.uuid, user) for unit in gpu.units for user in unit.shares}
        for uuid, user in sorted(gpu.held - held):
            out.append(sample("gpu_held", {"user": user, "node": self.node, "gpu": uuid}, now, 0))
        gpu.held = held
        for unit in gpu.units:
            for user in unit.shares:
                lab = {"user": user, "node": self.node, "gpu": unit.uuid}
                out.append(sample("gpu_held", lab, now, 1))
                out.append(sample("user_gpu_memory_bytes", lab, now, unit.memory.get(user, 0)))
                if not gpu.mig:
                    out.append(sample("user_gpu_sm_ratio", lab, now, unit.sm.get(user, 0.0)))
        return out

    def idle_events(self, gpus: list[Gpu], now: float) -> list[wire.Event]:
        """A `gpu_idle` event once a held unit has been idle `idle_min_seconds`, and its end."""
        idle_now: dict[tuple[str, str], tuple[float, str]] = {}
        for gpu in gpus:
            for unit in gpu.units:
                if unit.busy is not None and unit.busy < self.idle_threshold:
                    for user, share in unit.shares.items():
                        idle_now[(unit.uuid, user)] = (share * unit.fraction, gpu.model)
        events: list[wire.Event] = []
        for key in list(self._idle):
            if key not in idle_now:
                rec = self._idle.pop(key)
                if rec.emitted:
                    events.append(self._event(key, rec, now))
        for key, (share, model) in idle_now.items():
            rec = self._idle.setdefault(key, _Idle(now, share, model))
            if not rec.emitted and now - rec.start >= self.idle_min_seconds:
                rec.emitted = True
                events.append(self._event(key, rec, None))
        return events

    def _event(self, key: tuple[str, str], rec: _Idle, end: float | None) -> wire.Event:
        unit, user = key
        return wire.Event(
            kind="gpu_idle",
            id=f"{self.node}/{unit}/{user}/{rec.start:.0f}",
            user=user,
            start=rec.start,
            end=end,
            attrs={"gpu": unit, "model": rec.model, "node": self.node, "share": rec.share},
        )
