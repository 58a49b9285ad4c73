"""The GPU probe's cost per cycle on the fake NVML (tests/collectors/fake_nvml.py).

Device metrics run every cycle (target: under 1 ms per GPU); the process list, its owners and
the accounting stats run every AFMON_GPU_PROCESS_INTERVAL_SECONDS. The fake answers in
microseconds, so this measures the probe's own Python: real NVML adds its call latency
(about 2.5 us for utilisation, about 4.5 ms for the process list, per REFERENCE.md).

    python -m bench.gpu_probe [--cycles 2000]     (from the repository root)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from afmon.collectors.probes.gpu import GpuProbe
from tests.collectors.fake_nvml import USERS, FakeNvml, FakeProc, a100, write_proc


def setup(n_gpus: int, root: Path) -> tuple[GpuProbe, GpuProbe]:
    gpus = []
    for i in range(n_gpus):
        pid = 1000 + i
        write_proc(root, pid, 1001 + i % len(USERS))
        gpus.append(a100(f"GPU-{i}", util=60, procs=[FakeProc(pid, 2**30, 50)]))
    nvml = FakeNvml(gpus)

    def probe(interval: float) -> GpuProbe:
        return GpuProbe(
            node="bench",
            nvml=nvml,
            proc_root=root,
            user_name=USERS.__getitem__,
            process_interval=interval,
        )

    return probe(1e12), probe(0.0)  # device metrics only (after the first poll); every cycle


def per_cycle(probe: GpuProbe, cycles: int) -> float:
    probe.collect(0.0)  # the first cycle polls processes and warms up
    t0 = time.perf_counter()
    for k in range(1, cycles + 1):
        probe.collect(float(k))
    return (time.perf_counter() - t0) / cycles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2000)
    args = parser.parse_args()
    print(
        f"{'GPUs':>5} {'device cycle [ms]':>18} {'per GPU [ms]':>13} "
        f"{'with process poll [ms]':>23} {'per GPU [ms]':>13}"
    )
    for n in (1, 2, 4, 8):
        with tempfile.TemporaryDirectory() as tmp:
            device, polling = setup(n, Path(tmp))
            d = per_cycle(device, args.cycles) * 1e3
            p = per_cycle(polling, max(1, args.cycles // 4)) * 1e3
        print(f"{n:>5} {d:>18.3f} {d / n:>13.3f} {p:>23.3f} {p / n:>13.3f}")
    print("target: device metrics under 1 ms per GPU per cycle")


if __name__ == "__main__":
    main()
