"""A fake `pynvml` module for the GPU probe's tests, shaped on nvidia-ml-py 13.x.

What it copies from the real module (see pynvml.py and the NVML API reference):

* `NVMLError(code)` maps to the subclass of that code, as pynvml's `__new__` does, with the
  real codes (NOT_SUPPORTED 3, NO_PERMISSION 4, NOT_FOUND 6, DRIVER_NOT_LOADED 9,
  LIBRARY_NOT_FOUND 12, GPU_IS_LOST 15, UNKNOWN 999); `nvmlInit` raises LibraryNotFound
  without libnvidia-ml.so and DriverNotLoaded without the kernel module.
* `nvmlDeviceGetProcessUtilization` raises NotFound when no process ran since the given
  timestamp (an idle GPU), and NotSupported on MIG-enabled GPUs, as does
  `nvmlDeviceGetUtilizationRates`; accounting is NotSupported on MIG as well.
* processes of a MIG GPU are listed on its MIG device handles; MIG handles are found by
  index and raise NotFound for empty slots; GPM (per-instance busy) only on Hopper and later.
* power in mW, energy in mJ, memory in bytes, names and UUIDs as str.

Tests drive it by mutating the `FakeGpu` objects between probe cycles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1
NVML_GPM_METRICS_GET_VERSION = 1
NVML_GPM_METRIC_GRAPHICS_UTIL = 1

_NAMES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    _valClassMapping: dict[int, type[NVMLError]] = {}

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value: int) -> None:
        self.value = value

    def __str__(self) -> str:
        return _NAMES.get(self.value, f"NVML Error with code {self.value}")


def _subclass(name: str, code: int) -> type[NVMLError]:
    cls = type(f"NVMLError_{name}", (NVMLError,), {})
    NVMLError._valClassMapping[code] = cls
    return cls


NVMLError_Uninitialized = _subclass("Uninitialized", NVML_ERROR_UNINITIALIZED)
NVMLError_NotSupported = _subclass("NotSupported", NVML_ERROR_NOT_SUPPORTED)
NVMLError_NoPermission = _subclass("NoPermission", NVML_ERROR_NO_PERMISSION)
NVMLError_NotFound = _subclass("NotFound", NVML_ERROR_NOT_FOUND)
NVMLError_DriverNotLoaded = _subclass("DriverNotLoaded", NVML_ERROR_DRIVER_NOT_LOADED)
NVMLError_LibraryNotFound = _subclass("LibraryNotFound", NVML_ERROR_LIBRARY_NOT_FOUND)
NVMLError_GpuIsLost = _subclass("GpuIsLost", NVML_ERROR_GPU_IS_LOST)
NVMLError_Unknown = _subclass("Unknown", NVML_ERROR_UNKNOWN)


@dataclass
class FakeProc:
    pid: int
    used_memory: int
    sm_util: int = 0  # percent over the last sample period; 0 means no sample (idle)


@dataclass
class FakeMig:
    uuid: str
    gi_id: int
    slices: int
    memory_total: int
    memory_used: int = 0
    gpm_util: float = 0.0  # percent, what GPM reports between two samples
    procs: list[FakeProc] = field(default_factory=list)


@dataclass
class FakeGpu:
    name: str
    uuid: str
    memory_total: int
    util: int = 0  # percent
    memory_used: int = 0
    power_mw: int = 60_000
    energy_mj: int = 1_000_000
    procs: list[FakeProc] = field(default_factory=list)
    migs: list[FakeMig] | None = None  # None: MIG disabled
    full_slices: int = 7
    gpm: bool = False  # Hopper and later
    accounting: bool = False
    accounting_stats: dict[int, tuple[int, int]] = field(default_factory=dict)  # pid -> (%, ms)
    lost: bool = False


@dataclass
class _Handle:
    gpu: FakeGpu
    mig: FakeMig | None = None


class FakeNvml:
    """A module-like object: `FakeNvml(gpus).nvmlInit()` etc. `init_error` fails nvmlInit."""

    def __init__(self, gpus: list[FakeGpu], *, init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.handle_error: int | None = None  # raised by nvmlDeviceGetHandleByIndex
        self.process_error: int | None = None  # raised when listing processes
        self.init_calls = 0
        self.calls: dict[str, int] = {}
        for name, value in globals().items():
            if name.startswith(("NVML_", "NVMLError")):
                setattr(self, name, value)
        self.c_nvmlGpmMetricsGet_t = _GpmMetricsGet

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    @staticmethod
    def _ok(h: _Handle) -> FakeGpu:
        if h.gpu.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return h.gpu

    # -- library --------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        if self.handle_error is not None:
            raise NVMLError(self.handle_error)
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(self.gpus[index])

    # -- device ---------------------------------------------------------------------------

    def nvmlDeviceGetName(self, h: _Handle) -> str:
        return self._ok(h).name

    def nvmlDeviceGetUUID(self, h: _Handle) -> str:
        return h.mig.uuid if h.mig else self._ok(h).uuid

    def nvmlDeviceGetUtilizationRates(self, h: _Handle) -> Any:
        self._count("util")
        gpu = self._ok(h)
        if h.mig is not None or gpu.migs is not None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=gpu.util, memory=gpu.util // 2)

    def nvmlDeviceGetMemoryInfo(self, h: _Handle) -> Any:
        gpu = self._ok(h)
        if h.mig is not None:
            return SimpleNamespace(
                total=h.mig.memory_total,
                used=h.mig.memory_used,
                free=h.mig.memory_total - h.mig.memory_used,
            )
        used = gpu.memory_used + sum(m.memory_used for m in gpu.migs or [])
        return SimpleNamespace(total=gpu.memory_total, used=used, free=gpu.memory_total - used)

    def nvmlDeviceGetPowerUsage(self, h: _Handle) -> int:
        return self._ok(h).power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, h: _Handle) -> int:
        return self._ok(h).energy_mj

    def nvmlDeviceGetMigMode(self, h: _Handle) -> list[int]:
        gpu = self._ok(h)
        if not gpu.name.startswith(("NVIDIA A100", "NVIDIA A30", "NVIDIA H100", "NVIDIA H200")):
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        mode = NVML_DEVICE_MIG_ENABLE if gpu.migs is not None else NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, h: _Handle) -> int:
        return self._ok(h).full_slices

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: _Handle, index: int) -> _Handle:
        migs = self._ok(h).migs or []
        if index >= len(migs):
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return _Handle(h.gpu, migs[index])

    def nvmlDeviceGetGpuInstanceId(self, h: _Handle) -> int:
        if h.mig is None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return h.mig.gi_id

    def nvmlDeviceGetAttributes(self, h: _Handle) -> Any:
        slices = h.mig.slices if h.mig else self._ok(h).full_slices
        return SimpleNamespace(gpuInstanceSliceCount=slices, computeInstanceSliceCount=slices)

    # -- processes ------------------------------------------------------------------------

    def nvmlDeviceGetComputeRunningProcesses(self, h: _Handle) -> list[Any]:
        self._count("procs")
        if self.process_error is not None:
            raise NVMLError(self.process_error)
        gpu = self._ok(h)
        procs = h.mig.procs if h.mig else ([] if gpu.migs is not None else gpu.procs)
        return [
            SimpleNamespace(
                pid=p.pid,
                usedGpuMemory=p.used_memory,
                gpuInstanceId=0xFFFFFFFF,
                computeInstanceId=0xFFFFFFFF,
            )
            for p in procs
        ]

    def nvmlDeviceGetProcessUtilization(self, h: _Handle, last_ts: int) -> list[Any]:
        gpu = self._ok(h)
        if h.mig is not None or gpu.migs is not None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        busy = [p for p in gpu.procs if p.sm_util > 0]
        if not busy:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return [
            SimpleNamespace(
                pid=p.pid, timeStamp=last_ts + 1, smUtil=p.sm_util, memUtil=0, encUtil=0, decUtil=0
            )
            for p in busy
        ]

    def nvmlDeviceGetAccountingMode(self, h: _Handle) -> int:
        gpu = self._ok(h)
        if h.mig is not None or gpu.migs is not None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return NVML_FEATURE_ENABLED if gpu.accounting else NVML_FEATURE_DISABLED

    def nvmlDeviceGetAccountingStats(self, h: _Handle, pid: int) -> Any:
        gpu = self._ok(h)
        if not gpu.accounting:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if pid not in gpu.accounting_stats:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        util, ms = gpu.accounting_stats[pid]
        running = any(p.pid == pid for p in gpu.procs)
        return SimpleNamespace(
            gpuUtilization=util,
            memoryUtilization=0,
            maxMemoryUsage=0,
            time=0 if running else ms,
            startTime=0,
            isRunning=int(running),
        )

    # -- GPM (Hopper and later) -----------------------------------------------------------

    def nvmlGpmQueryDeviceSupport(self, h: _Handle) -> Any:
        return SimpleNamespace(version=1, isSupportedDevice=int(self._ok(h).gpm))

    def nvmlGpmSampleAlloc(self) -> Any:
        return SimpleNamespace(util=None)

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        pass

    def nvmlGpmMigSampleGet(self, h: _Handle, gi_id: int, sample: Any) -> Any:
        gpu = self._ok(h)
        if not gpu.gpm:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        mig = next(m for m in gpu.migs or [] if m.gi_id == gi_id)
        sample.util = mig.gpm_util
        return sample

    def nvmlGpmMetricsGet(self, get: _GpmMetricsGet) -> _GpmMetricsGet:
        for i in range(get.numMetrics):
            get.metrics[i].value = float(get.sample2.util)
            get.metrics[i].nvmlReturn = NVML_SUCCESS
        return get


class _GpmMetric:
    def __init__(self) -> None:
        self.metricId = 0
        self.nvmlReturn = NVML_SUCCESS
        self.value = 0.0


class _GpmMetricsGet:
    """Shaped like pynvml's c_nvmlGpmMetricsGet_t structure."""

    def __init__(self) -> None:
        self.version = 0
        self.numMetrics = 0
        self.sample1: Any = None
        self.sample2: Any = None
        self.metrics = [_GpmMetric() for _ in range(4)]


def h100(uuid: str = "GPU-h100-0", **kw: Any) -> FakeGpu:
    return FakeGpu("NVIDIA H100 80GB HBM3", uuid, 80 * 2**30, gpm=True, **kw)


def a100(uuid: str = "GPU-a100-0", **kw: Any) -> FakeGpu:
    return FakeGpu("NVIDIA A100-SXM4-40GB", uuid, 40 * 2**30, **kw)


def a30_mig(uuid: str = "GPU-a30-0", **kw: Any) -> FakeGpu:
    """An A30 in MIG mode: 4 slices, instances 2g.12gb (gi 1) and 1g.6gb (gi 5); no GPM."""
    migs = [
        FakeMig(f"MIG-{uuid}-gi1", 1, 2, 12 * 2**30),
        FakeMig(f"MIG-{uuid}-gi5", 5, 1, 6 * 2**30),
    ]
    return FakeGpu("NVIDIA A30", uuid, 24 * 2**30, migs=migs, full_slices=4, **kw)


# -- a scripted facility node for the ledger, dashboard and bench ------------------------------

USERS = {1001: "alice", 1002: "bob", 1003: "carol", 1004: "dave", 1005: "frank"}
STEP = 15.0
CYCLES = 20  # samples t0 .. t19: 19 intervals of 15 s = 285 s
PROCESS_INTERVAL = 30.0  # every other cycle polls the process list
IDLE_MIN = 60.0


def write_proc(root: Path, pid: int, uid: int) -> None:
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "status").write_text(f"Name:\tpython\nPid:\t{pid}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")


class Scenario:
    """Five GPUs and five users, scripted cycle by cycle (see docs/gpu.md for the rules):

    * gpu0 H100 at 50 %: alice (SM 30 %) and bob (SM 10 %) share it; bob's process exits
      between cycles 8 and 9, and the poll at cycle 10 sees it gone;
    * gpu1, gpu2 A100 at 100 % and 25 %: both held by carol;
    * gpu3 A30 in MIG mode (no GPM): dave holds the 2-slice instance (half the GPU);
    * gpu4 A100 held by frank, idle (0 %) until cycle 16, then 80 %.
    Energy per cycle: 1000, 400, 200, 160 and 100 J.
    """

    ENERGY_J = (1000, 400, 200, 160, 100)

    def __init__(self, proc_root: Path) -> None:
        self.proc_root = proc_root
        self.alice, self.bob = FakeProc(101, 2**30, 30), FakeProc(201, 2**29, 10)
        self.gpus = [
            h100("GPU-0", util=50, procs=[self.alice, self.bob]),
            a100("GPU-1", util=100, procs=[FakeProc(301, 2**31, 90)]),
            a100("GPU-2", util=25, procs=[FakeProc(302, 2**31, 25)]),
            a30_mig("GPU-3"),
            a100("GPU-4", util=0, procs=[FakeProc(501, 2**30, 0)]),
        ]
        self.gpus[3].migs[0].procs.append(FakeProc(401, 2**30, 0))
        for pid, uid in (
            (101, 1001),
            (201, 1002),
            (301, 1003),
            (302, 1003),
            (401, 1004),
            (501, 1005),
        ):
            write_proc(proc_root, pid, uid)
        self.nvml = FakeNvml(self.gpus)

    def probe(self, node: str = "gpu-node-1") -> Any:
        from afmon.collectors.probes.gpu import GpuProbe

        return GpuProbe(
            node=node,
            nvml=self.nvml,
            proc_root=self.proc_root,
            user_name=USERS.__getitem__,
            process_interval=PROCESS_INTERVAL,
            idle_min_seconds=IDLE_MIN,
        )

    def advance(self, k: int) -> None:
        """Set the world for cycle k (before the probe reads it)."""
        if k == 9:  # bob's process exits; the probe sees it at the poll of cycle 10
            self.gpus[0].procs.remove(self.bob)
            (self.proc_root / "201" / "status").unlink()
        if k == 16:
            self.gpus[4].util = 80
        if k > 0:
            for gpu, joules in zip(self.gpus, self.ENERGY_J, strict=True):
                gpu.energy_mj += joules * 1000

    # what the ledger must hold, worked out by hand from the script above
    EXPECTED = {
        "alice": {
            "gpu_allocated_seconds": 0.5 * 150 + 135,
            "gpu_active_seconds": 0.5 * 0.75 * 150 + 0.5 * 135,
            "gpu_energy_joules": 500 * 10 + 1000 * 9,
            "gpu_h100_allocated_seconds": 210.0,
            "gpu_h100_active_seconds": 123.75,
        },
        "bob": {
            "gpu_allocated_seconds": 75.0,
            "gpu_active_seconds": 0.5 * 0.25 * 150,
            "gpu_energy_joules": 5000.0,
            "gpu_h100_allocated_seconds": 75.0,
            "gpu_h100_active_seconds": 18.75,
        },
        "carol": {
            "gpu_allocated_seconds": 570.0,
            "gpu_active_seconds": 1.25 * 285,
            "gpu_energy_joules": 600.0 * 19,
            "gpu_a100_allocated_seconds": 570.0,
            "gpu_a100_active_seconds": 356.25,
        },
        "dave": {
            "gpu_allocated_seconds": 142.5,
            "gpu_energy_joules": 80.0 * 19,
            "gpu_a30_allocated_seconds": 142.5,
        },
        "frank": {
            "gpu_allocated_seconds": 285.0,
            "gpu_active_seconds": 0.8 * 45,
            "gpu_energy_joules": 1900.0,
            "gpu_a100_allocated_seconds": 285.0,
            "gpu_a100_active_seconds": 36.0,
            "gpu_idle_seconds": 240.0,
        },
    }
    # device totals over the 285 s: held fraction x time, busy x held time
    DEVICE_ALLOCATED = 285.0 + 285.0 * 2 + 0.5 * 285.0 + 285.0
    DEVICE_ACTIVE = 0.5 * 285 + (1.0 + 0.25) * 285 + 0.8 * 45
