"""NVIDIA GPUs through NVML: device metrics, who holds which GPU, and how busy it is.

Accounting unit: a whole GPU, or one MIG instance counted as its share of the GPU
(slices / slices of the whole GPU). A unit is *held* by the users whose processes run on it;
users holding the same unit share it equally, so the allocations of a GPU add up to at most 1.
*Active* is held x busy ratio: a unit's busy ratio (device utilisation, or GPM's graphics
activity for a MIG instance) is split over its holders by their SM utilisation, or equally
when NVML reports none. A MIG instance without GPM has no busy ratio: it counts as held, never
as active, and `gpu_mig_info{busy="unavailable"}` says so. Energy (the driver's mJ counter)
between two cycles goes to the users who held the GPU during that interval, by their share.

The process list is polled every `process_interval` seconds (it is slow and takes a driver
lock); device metrics every cycle. Between polls the holders are taken as unchanged, so a
user holds a GPU from the poll that first sees their process to the poll that sees it gone.

NVML is initialised once, on first use (reading `state` or collecting), never at import.
`state` is one of STATES; a probe that is not ready still reports `gpu_probe_state`.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from afmon.collectors import wire
from afmon.collectors.probes.base import READY, ProbeOutput, sample
from afmon.collectors.probes.gpu_users import Gpu, GpuUsers, Unit

log = logging.getLogger(__name__)

STATES = (
    READY, "module_missing", "library_missing", "driver_missing", "no_devices",
    "permission_denied", "error",
)  # fmt: skip
_STATE_BY_CODE = {12: "library_missing", 9: "driver_missing", 4: "permission_denied"}
_RETRY = frozenset({"driver_missing", "permission_denied", "error"})
_MODEL_RES = [(m, re.compile(rf"\b{m}\b")) for m in wire.GPU_MODELS if m != "other"]


def model_class(name: str) -> str:
    """The ledger's model class of an NVML device name ("NVIDIA A100-SXM4-40GB" -> "a100")."""
    low = name.lower()
    return next((m for m, rx in _MODEL_RES if rx.search(low)), "other")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pwd_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class GpuProbe:
    name = "gpu"
    reports_state = True  # collected even when not ready: it reports its own state

    def __init__(
        self,
        *,
        node: str | None = None,
        nvml: Any = None,
        proc_root: str | os.PathLike[str] = "/proc",
        user_name: Callable[[int], str] = _pwd_name,
        process_interval: float = 60.0,
        idle_threshold_ratio: float = 0.05,
        idle_min_seconds: float = 600.0,
        retry_seconds: float = 300.0,
    ) -> None:
        self.node = node or socket.gethostname()
        self._nvml = nvml
        self.proc_root = Path(proc_root)
        self._user_name = user_name
        self.process_interval = process_interval
        self.retry_seconds = retry_seconds
        self._state: str | None = None
        self.reason = ""
        self._initialised = False  # nvmlInit succeeded: never called again
        self._tried_at = 0.0
        self._gpus: list[Gpu] = []
        self._last_poll: float | None = None
        self._names: dict[int, str] = {}
        self._users = GpuUsers(self.node, idle_threshold_ratio, idle_min_seconds)

    # -- state ----------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self._state is None:
            self._init(0.0)
        assert self._state is not None
        return self._state

    def _set(self, state: str, reason: str = "") -> None:
        if state != self._state:
            log.log(
                logging.INFO if state == READY else logging.WARNING,
                "gpu probe: %s%s",
                state,
                f" ({reason})" if reason else "",
            )
        self._state, self.reason = state, reason

    def _init(self, now: float) -> None:
        self._tried_at = now
        if self._nvml is None:
            try:
                import pynvml
            except ImportError as exc:
                self._set("module_missing", f"{exc}; pip install nvidia-ml-py")
                return
            self._nvml = pynvml
        nv = self._nvml
        try:
            if not self._initialised:
                nv.nvmlInit()
                self._initialised = True
            self._gpus = [self._discover(i) for i in range(nv.nvmlDeviceGetCount())]
        except nv.NVMLError as exc:
            self._set(_STATE_BY_CODE.get(exc.value, "error"), str(exc))
            return
        self._set(READY if self._gpus else "no_devices")

    def _discover(self, index: int) -> Gpu:
        nv = self._nvml
        h = nv.nvmlDeviceGetHandleByIndex(index)
        name = _text(nv.nvmlDeviceGetName(h))
        try:
            mig = nv.nvmlDeviceGetMigMode(h)[0] == nv.NVML_DEVICE_MIG_ENABLE
        except nv.NVMLError_NotSupported:
            mig = False
        gpm = False
        if mig:
            try:
                gpm = bool(nv.nvmlGpmQueryDeviceSupport(h).isSupportedDevice)
            except (nv.NVMLError, AttributeError):
                gpm = False
        uuid = _text(nv.nvmlDeviceGetUUID(h))
        gpu = Gpu(index, h, uuid, name, model_class(name), mig, gpm)
        if not mig:
            gpu.units = [Unit(uuid, h, 1.0)]
        return gpu

    # -- collecting -----------------------------------------------------------------------

    def collect(self, now: float) -> ProbeOutput:
        if self._state is None or (
            self._state in _RETRY and now - self._tried_at >= self.retry_seconds
        ):
            self._init(now)
        out = ProbeOutput()
        if self._state == READY:
            poll = self._last_poll is None or now - self._last_poll >= self.process_interval
            if poll:
                self._last_poll = now
            for gpu in self._gpus:
                try:
                    if poll:
                        self._poll(gpu)
                    out.series.extend(self._device_series(gpu, now))
                except self._nvml.NVMLError as exc:
                    log.warning(
                        "gpu %s (%s): %s; not accounted this cycle", gpu.index, gpu.uuid, exc
                    )
                    for unit in gpu.units:
                        unit.shares, unit.weights, unit.busy = {}, {}, None
            out.series.extend(self._users.series(self._gpus, now))
            out.events.extend(self._users.idle_events(self._gpus, now))
        labels = {"node": self.node}
        for s in STATES:
            out.series.append(
                sample("gpu_probe_state", {**labels, "state": s}, now, float(s == self._state))
            )
        return out

    def _poll(self, gpu: Gpu) -> None:
        """The slow part: MIG layout, processes and their owners, accounting stats."""
        nv = self._nvml
        if gpu.mig:
            gpu.units = self._mig_units(gpu)
        else:
            try:
                gpu.accounting = (
                    nv.nvmlDeviceGetAccountingMode(gpu.handle) == nv.NVML_FEATURE_ENABLED
                )
            except nv.NVMLError:
                gpu.accounting = False
        pids: dict[int, str] = {}
        try:
            for unit in gpu.units:
                sm: dict[str, float] = {}
                for pid, util in self._process_util(gpu, unit).items():
                    user = self._owner(pid)
                    if user is not None:
                        sm[user] = sm.get(user, 0.0) + util
                users: set[str] = set()
                memory: dict[str, float] = {}
                for p in nv.nvmlDeviceGetComputeRunningProcesses(unit.handle):
                    user = self._owner(p.pid)
                    if user is not None:
                        users.add(user)
                        pids[p.pid] = user
                        memory[user] = memory.get(user, 0.0) + float(p.usedGpuMemory or 0)
                unit.memory, unit.sm = memory, {u: min(1.0, v / 100) for u, v in sm.items()}
                unit.shares = {u: 1.0 / len(users) for u in sorted(users)}
                total = sum(sm.get(u, 0.0) for u in users)
                unit.weights = (
                    {u: sm.get(u, 0.0) / total for u in users} if total > 0 else unit.shares
                )
            gpu.processes_visible = True
        except nv.NVMLError_NoPermission as exc:
            if gpu.processes_visible:
                log.warning("gpu %s: cannot list processes (%s): not accounted", gpu.uuid, exc)
            gpu.processes_visible = False
            for unit in gpu.units:
                unit.shares, unit.weights, unit.memory, unit.sm = {}, {}, {}, {}
        if gpu.accounting:
            self._accounting(gpu, [p for p in gpu.pids if p not in pids])
        gpu.pids = pids

    def _mig_units(self, gpu: Gpu) -> list[Unit]:
        nv = self._nvml
        old = {u.uuid: u for u in gpu.units}
        full = nv.nvmlDeviceGetMaxMigDeviceCount(gpu.handle)
        units: list[Unit] = []
        for i in range(full):
            try:
                h = nv.nvmlDeviceGetMigDeviceHandleByIndex(gpu.handle, i)
            except nv.NVMLError_NotFound:
                continue
            uuid = _text(nv.nvmlDeviceGetUUID(h))
            slices = nv.nvmlDeviceGetAttributes(h).gpuInstanceSliceCount
            unit = Unit(uuid, h, slices / full, nv.nvmlDeviceGetGpuInstanceId(h), slices)
            if uuid in old:
                unit.gpm_prev, unit.busy = old[uuid].gpm_prev, old[uuid].busy
            units.append(unit)
        return units

    def _process_util(self, gpu: Gpu, unit: Unit) -> dict[int, float]:
        """pid -> SM utilisation (percent) since the last poll; idle (NotFound) is none."""
        nv = self._nvml
        if gpu.mig:
            return {}  # NotSupported on MIG
        try:
            samples = nv.nvmlDeviceGetProcessUtilization(unit.handle, gpu.util_ts)
        except (nv.NVMLError_NotFound, nv.NVMLError_NotSupported):
            return {}
        out: dict[int, float] = {}
        for s in samples:
            out[s.pid] = max(out.get(s.pid, 0.0), float(s.smUtil))
            gpu.util_ts = max(gpu.util_ts, s.timeStamp)
        return out

    def _owner(self, pid: int) -> str | None:
        try:
            text = (self.proc_root / str(pid) / "status").read_text()
        except OSError:
            return None  # gone already, or not in our PID namespace
        for line in text.splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
                name = self._names.get(uid)
                if name is None:
                    name = self._names[uid] = self._user_name(uid)
                return name
        return None

    def _accounting(self, gpu: Gpu, gone: list[int]) -> None:
        nv = self._nvml
        for pid in gone:
            try:
                st = nv.nvmlDeviceGetAccountingStats(gpu.handle, pid)
            except nv.NVMLError:
                continue
            if st.isRunning or not st.time:
                continue
            t = st.time / 1000.0
            self._users.add_accounting(
                gpu.pids[pid], t, t * st.gpuUtilization / 100.0, self._last_poll or 0.0
            )

    def _device_series(self, gpu: Gpu, now: float) -> list[wire.Series]:
        nv = self._nvml
        h = gpu.handle
        lab = {"node": self.node, "gpu": gpu.uuid}
        out = [
            sample(
                "gpu_info",
                {
                    **lab,
                    "index": str(gpu.index),
                    "name": gpu.name,
                    "model": gpu.model,
                    "mig": str(gpu.mig).lower(),
                },
                now,
                1,
            )
        ]
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        out.append(sample("gpu_memory_used_bytes", lab, now, mem.used))
        out.append(sample("gpu_memory_total_bytes", lab, now, mem.total))
        out.append(sample("gpu_power_watts", lab, now, nv.nvmlDeviceGetPowerUsage(h) / 1000.0))
        energy = float(nv.nvmlDeviceGetTotalEnergyConsumption(h))
        out.append(sample("gpu_energy_joules", lab, now, energy / 1000.0))
        delta = 0.0 if gpu.energy_mj is None else max(0.0, energy - gpu.energy_mj) / 1000.0
        gpu.energy_mj = energy
        self._users.add_energy(gpu.prev_alloc, delta)
        if not gpu.mig:
            gpu.units[0].busy = nv.nvmlDeviceGetUtilizationRates(h).gpu / 100.0
            out.append(sample("gpu_utilization_ratio", lab, now, gpu.units[0].busy))
            out.append(sample("gpu_accounting_mode", lab, now, float(gpu.accounting)))
        out.append(sample("gpu_processes_visible", lab, now, float(gpu.processes_visible)))
        alloc: dict[str, float] = {}
        for unit in gpu.units:
            ulab = {"node": self.node, "gpu": unit.uuid}
            if gpu.mig:
                unit.busy = self._gpm_busy(gpu, unit)
                out.append(
                    sample(
                        "gpu_mig_info",
                        {
                            **ulab,
                            "parent": gpu.uuid,
                            "gi": str(unit.gi_id),
                            "slices": str(unit.slices),
                            "busy": "gpm" if gpu.gpm else "unavailable",
                        },
                        now,
                        unit.fraction,
                    )
                )
                mm = nv.nvmlDeviceGetMemoryInfo(unit.handle)
                out.append(sample("gpu_memory_used_bytes", ulab, now, mm.used))
                out.append(sample("gpu_memory_total_bytes", ulab, now, mm.total))
                if unit.busy is not None:
                    out.append(sample("gpu_utilization_ratio", ulab, now, unit.busy))
            out.append(sample("gpu_allocated_ratio", ulab, now, float(bool(unit.shares))))
            for user, share in unit.shares.items():
                alloc[user] = alloc.get(user, 0.0) + share * unit.fraction
        self._users.start_energy(alloc, now)
        gpu.prev_alloc = alloc
        return out

    def _gpm_busy(self, gpu: Gpu, unit: Unit) -> float | None:
        """GPM graphics activity of a MIG instance between this cycle and the last one."""
        if not gpu.gpm or unit.gi_id is None:
            return None
        nv = self._nvml
        cur = nv.nvmlGpmMigSampleGet(gpu.handle, unit.gi_id, nv.nvmlGpmSampleAlloc())
        prev, unit.gpm_prev = unit.gpm_prev, cur
        if prev is None:
            return None
        get = nv.c_nvmlGpmMetricsGet_t()
        get.version, get.numMetrics = nv.NVML_GPM_METRICS_GET_VERSION, 1
        get.sample1, get.sample2 = prev, cur
        get.metrics[0].metricId = nv.NVML_GPM_METRIC_GRAPHICS_UTIL
        nv.nvmlGpmMetricsGet(get)
        nv.nvmlGpmSampleFree(prev)
        if get.metrics[0].nvmlReturn != 0:
            return None
        return min(1.0, max(0.0, get.metrics[0].value / 100.0))
