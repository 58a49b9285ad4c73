"""Check the GPU probe against nvidia-smi and NVML accounting on a real NVIDIA GPU.

Runs a PyTorch matrix-product load on one GPU in a child process for --seconds, while this
process runs the real GpuProbe (real pynvml) every --interval seconds and samples
`nvidia-smi --query-gpu=... --format=csv` at the same times. Afterwards it prints, side by
side: the probe's and nvidia-smi's utilisation, memory, power and energy, the probe's
allocated and active seconds for the load's user, and NVML's accounting stats of the load's
process (when accounting mode is on: `sudo nvidia-smi -am 1` before the run).

    python scripts/gpu_check.py [--gpu 0] [--seconds 60] [--interval 1] [--size 8192]

Needs afmon installed (`pip install -e .` in the checkout, or the wheel), torch with CUDA,
nvidia-ml-py and nvidia-smi. Record what it prints in docs/gpu.md.
Exit status: 0 ran and compared; 2 the probe is not ready here (its state is printed).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import pwd
import statistics
import subprocess
import sys
import time

from afmon.collectors.probes.gpu import GpuProbe

SMI_FIELDS = "index,uuid,name,utilization.gpu,memory.used,memory.total,power.draw"
LOAD = """
import sys, time, torch
dev = torch.device(f"cuda:{int(sys.argv[1])}")
n, until = int(sys.argv[3]), time.time() + float(sys.argv[2])
a = torch.randn(n, n, device=dev); b = torch.randn(n, n, device=dev)
while time.time() < until:
    for _ in range(10):
        c = a @ b
    torch.cuda.synchronize(dev)
print("load done", flush=True)
"""


def smi(gpu: int) -> dict[str, float]:
    out = subprocess.run(
        ["nvidia-smi", f"--id={gpu}", f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    row = next(csv.reader(io.StringIO(out)))
    return {
        "util": float(row[3]) / 100,
        "mem_used": float(row[4]) * 2**20,
        "mem_total": float(row[5]) * 2**20,
        "power": float(row[6]),
    }


def metric(out: object, name: str, **labels: str) -> float | None:
    for s in out.series:  # type: ignore[attr-defined]
        if s.metric == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.values[-1]
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=8192)
    args = ap.parse_args()
    user = pwd.getpwuid(os.getuid()).pw_name
    probe = GpuProbe(node="check", process_interval=args.interval, idle_min_seconds=1e9)
    if probe.state != "ready":
        print(f"GPU probe state: {probe.state} ({probe.reason}); nothing to compare")
        return 2
    import pynvml

    handle = pynvml.nvmlDeviceGetHandleByIndex(args.gpu)
    uuid = pynvml.nvmlDeviceGetUUID(handle)
    uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
    accounting = pynvml.nvmlDeviceGetAccountingMode(handle) == pynvml.NVML_FEATURE_ENABLED
    load = subprocess.Popen(
        [sys.executable, "-c", LOAD, str(args.gpu), str(args.seconds), str(args.size)]
    )
    rows: list[tuple[float, ...]] = []
    held = active = 0.0
    last: tuple[float, float, float] | None = None  # time, held, busy of the previous sample
    e0 = e1 = None
    t_start = time.time()
    try:
        while True:
            now = time.time()
            out = probe.collect(now)
            s = smi(args.gpu)
            h = metric(out, "user_gpus_held", user=user) or 0.0
            b = metric(out, "user_gpu_busy", user=user) or 0.0
            if last is not None:  # the ledger's rule: a value holds until the next sample
                held += last[1] * (now - last[0])
                active += last[2] * (now - last[0])
            last = (now, h, b)
            e = metric(out, "gpu_energy_joules", gpu=uuid)
            e0 = e if e0 is None else e0
            e1 = e
            rows.append(
                (
                    now - t_start,
                    metric(out, "gpu_utilization_ratio", gpu=uuid) or 0.0,
                    s["util"],
                    (metric(out, "gpu_memory_used_bytes", gpu=uuid) or 0) / 2**30,
                    s["mem_used"] / 2**30,
                    metric(out, "gpu_power_watts", gpu=uuid) or 0.0,
                    s["power"],
                    h,
                    b,
                )
            )
            if load.poll() is not None and h == 0.0:
                break  # the probe has seen the process gone
            time.sleep(max(0.0, args.interval - (time.time() - now)))
    finally:
        if load.poll() is None:
            load.kill()
        load.wait()
    print(
        f"{'t [s]':>6} {'util probe':>10} {'util smi':>9} {'mem GiB probe':>13} "
        f"{'mem GiB smi':>11} {'W probe':>8} {'W smi':>7} {'held':>5} {'busy':>5}"
    )
    for r in rows:
        print(
            f"{r[0]:>6.1f} {r[1]:>10.2f} {r[2]:>9.2f} {r[3]:>13.2f} {r[4]:>11.2f} "
            f"{r[5]:>8.1f} {r[6]:>7.1f} {r[7]:>5.2f} {r[8]:>5.2f}"
        )
    busy_rows = [r for r in rows if r[7] > 0]
    if busy_rows:
        diff = statistics.mean(abs(r[1] - r[2]) for r in busy_rows)
        print(f"mean |util probe - util smi| while held: {diff:.3f}")
    print(
        f"probe: allocated {held:.1f} s, active {active:.1f} s for {user}; "
        f"energy {(e1 or 0) - (e0 or 0):.0f} J on the GPU"
    )
    if accounting:
        try:
            st = pynvml.nvmlDeviceGetAccountingStats(handle, load.pid)
            t = st.time / 1000
            print(
                f"NVML accounting of pid {load.pid}: time {t:.1f} s, gpuUtilization "
                f"{st.gpuUtilization} % -> busy {t * st.gpuUtilization / 100:.1f} s"
            )
        except pynvml.NVMLError as exc:
            print(f"NVML accounting stats of pid {load.pid}: {exc}")
    else:
        print("accounting mode is off (sudo nvidia-smi -am 1 to compare with it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
