"""The host probe's /proc reader: psutil's values on this machine's real processes, and the
kernel's file formats' corners on a recorded tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from afmon.collectors.probes.host import HostProbe
from afmon.collectors.probes.procfs import CLOCK_TICKS, ProcFS

SLEEP = shutil.which("sleep") or "/bin/sleep"
AS_ROOT = os.geteuid() == 0
MEMBER = 4272  # a uid with no account here, for the sleepers when running as root


@pytest.fixture
def sleepers() -> Iterator[list[int]]:
    """Four sleeping processes: of uid MEMBER as root, else of this account."""
    children = [
        subprocess.Popen([SLEEP, "120"], user=MEMBER if AS_ROOT else None, cwd="/")
        for _ in range(4)
    ]
    time.sleep(0.2)  # past exec: their stat and status no longer change
    yield [c.pid for c in children]
    for child in children:
        child.kill()
        child.wait(timeout=10)


def psutil_reading(pid: int) -> tuple[int, int, float, float, float, float, float]:
    """What the probe read through psutil: ppid, real uid, create time, CPU, RSS, IO."""
    p = psutil.Process(pid)
    cpu, io = p.cpu_times(), p.io_counters()
    return (
        p.ppid(),
        p.uids().real,
        p.create_time(),
        cpu.user + cpu.system,
        float(p.memory_info().rss),
        float(io.read_bytes),
        float(io.write_bytes),
    )


def procfs_reading(fs: ProcFS, pid: int) -> tuple[int, int, float, float, float, float, float]:
    stat, status = fs.stat(pid), fs.status(pid)
    assert stat is not None and status is not None
    io = fs.io(pid, stat.zombie)
    assert io is not None
    create = stat.start_ticks / CLOCK_TICKS + fs.boot_time()
    return (stat.ppid, status[0], create, stat.cpu_seconds, status[1], io[0], io[1])


def test_readings_are_psutils_on_real_processes(sleepers: list[int]) -> None:
    fs = ProcFS()
    assert set(sleepers) <= set(fs.pids())
    assert fs.pids() == sorted(fs.pids())
    assert fs.boot_time() == psutil.boot_time()
    for pid in sleepers:
        assert procfs_reading(fs, pid) == psutil_reading(pid)
    # this process and the sleepers' parent: the attributes that do not move while it runs
    mine = procfs_reading(fs, os.getpid())
    assert mine[:3] == psutil_reading(os.getpid())[:3]
    assert mine[4] > 0 and mine[3] > 0


def test_a_zombie_reads_as_psutil_gives_it() -> None:
    child = subprocess.Popen([SLEEP, "0"])
    deadline = time.monotonic() + 10
    fs = ProcFS()
    while (stat := fs.stat(child.pid)) is None or not stat.zombie:
        assert time.monotonic() < deadline, "the child did not become a zombie"
        time.sleep(0.01)
    try:
        status = fs.status(child.pid)
        assert status is not None and status[1] == 0.0  # no memory: no VmRSS line
        assert status[1] == psutil.Process(child.pid).memory_info().rss
        assert fs.io(child.pid, stat.zombie) is not None
    finally:
        child.wait(timeout=10)
    assert fs.stat(child.pid) is None and fs.status(child.pid) is None  # reaped: gone


@pytest.mark.usefixtures("as_root")  # a member's processes of their own
def test_the_probe_reports_psutils_sums_and_keys(tmp_path: Path, sleepers: list[int]) -> None:
    """A member's processes: the totals and source keys the probe had through psutil."""
    probe = HostProbe(node="n1", cgroup_root=tmp_path)
    out = probe.collect(1.0)
    got = {s.metric: s.values[0] for s in out.series if s.labels.get("user") == str(MEMBER)}
    old = [psutil_reading(pid) for pid in sorted(sleepers)]
    assert got == {
        "user_cpu_seconds": sum(r[3] for r in old),
        "user_io_read_bytes": sum(r[5] for r in old),
        "user_io_write_bytes": sum(r[6] for r in old),
        "user_memory_rss_bytes": sum(r[4] for r in old),
        "user_processes": len(sleepers),
    }
    keys = {key for key, (user, _values) in probe._state.sources.items() if user == str(MEMBER)}
    assert keys == {f"p:{pid}:{r[2]:.2f}" for pid, r in zip(sorted(sleepers), old, strict=True)}


# Recorded from a 6.x kernel (values changed); `status` cut after Threads.
STAT = (
    "{pid} (a) b (c)) {state} 1 {pid} {pid} 0 -1 4194560 158 0 0 0 251 49 0 0 20 0 1 0 4200 "
    "8437760 {rss} 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
)
STATUS = (
    "Name:\ta) b (c)\nUmask:\t0022\nState:\t{state}\nTgid:\t{pid}\nNgid:\t0\nPid:\t{pid}\n"
    "PPid:\t1\nTracerPid:\t0\nUid:\t4201\t4201\t4201\t4201\nGid:\t4201\t4201\t4201\t4201\n"
    "FDSize:\t64\nGroups:\t{groups}\n{vm}Threads:\t1\n"
)
VM = "VmPeak:\t    8240 kB\nVmSize:\t    8240 kB\nVmHWM:\t     980 kB\nVmRSS:\t     980 kB\n"
IO = (
    "rchar: 1948\nwchar: 0\nsyscr: 7\nsyscw: 0\nread_bytes: 4096\nwrite_bytes: 12288\n"
    "cancelled_write_bytes: 0\n"
)


def write_proc(root: Path, pid: int, *, zombie: bool = False, groups: int = 1) -> Path:
    d = root / str(pid)
    d.mkdir()
    (d / "stat").write_text(
        STAT.format(pid=pid, state="Z" if zombie else "S", rss=0 if zombie else 245)
    )
    (d / "status").write_text(
        STATUS.format(
            pid=pid,
            state="Z (zombie)" if zombie else "S (sleeping)",
            groups=" ".join(str(100000 + g) for g in range(groups)) + " ",
            vm="" if zombie else VM,
        )
    )
    (d / "io").write_text(IO)
    return d


def test_the_kernels_formats_on_a_recorded_tree(tmp_path: Path) -> None:
    (tmp_path / "stat").write_text("cpu  10 0 5 100 0 0 0 0 0 0\nbtime 1764000000\n")
    (tmp_path / "self").mkdir()
    write_proc(tmp_path, 9)
    write_proc(tmp_path, 10, groups=2000)  # a Groups line of 14 kB: VmRSS is beyond 4 kB
    write_proc(tmp_path, 11, zombie=True)
    (write_proc(tmp_path, 12) / "io").unlink()  # a live process without io: gone
    (write_proc(tmp_path, 13, zombie=True) / "io").unlink()  # a zombie's: zero
    (tmp_path / "14").mkdir()  # exited between the listing and the reads
    fs = ProcFS(tmp_path)

    assert fs.pids() == [9, 10, 11, 12, 13, 14]
    assert fs.boot_time() == 1764000000.0
    stat = fs.stat(9)
    assert stat is not None
    assert (stat.ppid, stat.zombie, stat.start_ticks) == (1, False, 4200)
    assert stat.cpu_seconds == 251 / CLOCK_TICKS + 49 / CLOCK_TICKS
    assert fs.status(9) == (4201, 980 * 1024.0)
    assert fs.io(9, False) == (4096.0, 12288.0)
    assert len((tmp_path / "10" / "status").read_bytes()) > 3 * 4096
    assert fs.status(10) == (4201, 980 * 1024.0)
    zombie = fs.stat(11)
    assert zombie is not None and zombie.zombie
    assert fs.status(11) == (4201, 0.0)
    assert fs.io(12, False) is None
    assert fs.io(13, True) == (0.0, 0.0)
    assert fs.stat(14) is None and fs.status(14) is None and fs.io(14, False) is None
    assert fs.cgroup(9) is None and fs.cgroup(14) is None
