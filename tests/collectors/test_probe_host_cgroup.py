"""The host probe's cgroup v2 path, on a tree shaped like a real unified hierarchy.

This machine has cgroup v1, so the per-user slices are built in a tmp dir with the kernel's
file formats, and so are the processes: /proc/PID/{stat,status,io,cgroup} in a tmp proc root
(the probe's proc_root boundary). The node's capacity comes from a stub psutil.
"""

from __future__ import annotations

import shutil
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path

import pytest

from afmon.collectors import wire
from afmon.collectors.probes.host import HostProbe
from afmon.collectors.probes.procfs import CLOCK_TICKS

NodeCpu = namedtuple("NodeCpu", "user nice system idle iowait irq softirq steal guest guest_nice")
VirtualMemory = namedtuple("VirtualMemory", "total available")

USERS = {0: "root", 999: "postgres", 1000: "alice", 1001: "bob", 1002: "carol", 1003: "dave"}
MiB = 2**20
GiB = 2**30


@dataclass
class StubProc:
    pid: int
    uid: int
    cpu: float
    rss: int = 0
    read: int = 0
    write: int = 0
    ppid: int = 1
    create_time: float = 1000.0

    def put(self, proc: Path) -> None:
        """The process's stat, status and io in the kernel's formats (a quarter of its CPU
        time as system time, in whole quarter seconds so that the sums stay exact)."""
        ticks = round(self.cpu * CLOCK_TICKS)
        stime = ticks // CLOCK_TICKS * CLOCK_TICKS // 4
        start = round(self.create_time * CLOCK_TICKS)  # the tree's btime is 0
        d = proc / str(self.pid)
        d.mkdir(exist_ok=True)
        (d / "stat").write_text(
            f"{self.pid} (job (x) 1) S {self.ppid} {self.pid} {self.pid} 0 -1 4194560 120 0 0 "
            f"0 {ticks - stime} {stime} 99 99 20 0 1 0 {start} 10000000 {self.rss // 4096} "
            "18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0\n"
        )
        uid = self.uid
        (d / "status").write_text(
            f"Name:\tjob\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{self.pid}\nNgid:\t0\n"
            f"Pid:\t{self.pid}\nPPid:\t{self.ppid}\nTracerPid:\t0\n"
            f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
            f"FDSize:\t64\nGroups:\t{uid} \nVmPeak:\t   20000 kB\nVmSize:\t   10000 kB\n"
            f"VmHWM:\t{self.rss // 1024:>8} kB\nVmRSS:\t{self.rss // 1024:>8} kB\n"
            "Threads:\t1\n"
        )
        (d / "io").write_text(
            f"rchar: {self.read + 7}\nwchar: {self.write + 7}\nsyscr: 1\nsyscw: 1\n"
            f"read_bytes: {self.read}\nwrite_bytes: {self.write}\ncancelled_write_bytes: 0\n"
        )


def put_procs(proc: Path, procs: list[StubProc]) -> None:
    """Make `procs` the running processes: write theirs, take away the others' (a pid
    directory with only its cgroup file, or nothing, is a process that is gone)."""
    for d in proc.iterdir():
        if d.name.isdigit():
            for name in ("stat", "status", "io"):
                (d / name).unlink(missing_ok=True)
    for p in procs:
        p.put(proc)


@dataclass
class StubPsutil:
    """The node's capacity: cores, memory and CPU times."""

    node_cpu: NodeCpu = NodeCpu(100.0, 0.0, 20.0, 380.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    def cpu_count(self) -> int:
        return 8

    def virtual_memory(self) -> VirtualMemory:
        return VirtualMemory(64 * 2**30, 32 * 2**30)

    def cpu_times(self) -> NodeCpu:
        return self.node_cpu


def write_slice(
    root: Path,
    uid: int,
    *,
    usage_usec: int,
    io: str = "",
    memory_stat: dict[str, int] | None = None,
    memory_current: int | None = None,
    procs: dict[str, list[int]] | None = None,
) -> Path:
    d = root / "user.slice" / f"user-{uid}.slice"
    d.mkdir(parents=True, exist_ok=True)
    (d / "cpu.stat").write_text(
        f"usage_usec {usage_usec}\nuser_usec {usage_usec * 4 // 5}\n"
        f"system_usec {usage_usec // 5}\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n"
    )
    (d / "io.stat").write_text(io)
    if memory_current is not None:
        (d / "memory.current").write_text(f"{memory_current}\n")
    if memory_stat is not None:
        (d / "memory.stat").write_text("".join(f"{k} {v}\n" for k, v in memory_stat.items()))
    (d / "cgroup.procs").write_text("")
    for sub, pids in (procs or {}).items():
        (d / sub).mkdir(parents=True, exist_ok=True)
        (d / sub / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
    return d


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    cg, proc = tmp_path / "cgroup", tmp_path / "proc"
    cg.mkdir()
    (cg / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (cg / "cpu.stat").write_text("usage_usec 99999999\n")
    write_slice(
        cg,
        1000,
        usage_usec=12_500_000,
        io="8:0 rbytes=1048576 wbytes=2097152 rios=10 wios=20 dbytes=0 dios=0\n"
        "259:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
        memory_current=900 * MiB,  # includes page cache: not what RSS means
        memory_stat={"anon": 500 * MiB, "file": 300 * MiB, "file_mapped": 20 * MiB, "shmem": 0},
        procs={"session-3.scope": [1234, 1240], "user@1000.service/init.scope": [1200]},
    )
    write_slice(cg, 1001, usage_usec=3_000_000, memory_current=64 * MiB, procs={"s.scope": [7]})
    # a hybrid-style slice without io/memory files: carol is measured through /proc
    write_slice(cg, 1002, usage_usec=5_000_000)
    # system accounts: root's session and a service account's (uid below 1000)
    write_slice(cg, 0, usage_usec=90_000_000, memory_current=GiB, procs={"session-1.scope": [5000]})
    write_slice(cg, 999, usage_usec=40_000_000, memory_current=GiB, procs={"s.scope": [6000]})
    proc.mkdir()
    (proc / "stat").write_text("cpu  1 2 3 4 5 6 7 0 0 0\nbtime 0\nprocesses 9\n")
    for pid, cgroup in {
        1234: "/user.slice/user-1000.slice/session-3.scope",
        1240: "/user.slice/user-1000.slice/session-3.scope",
        2000: "/system.slice/jupyterhub.service",
        3000: "/user.slice/user-1002.slice/session-9.scope",
        5000: "/user.slice/user-0.slice/session-1.scope",
        6000: "/user.slice/user-999.slice/s.scope",
        50: "/system.slice/sshd.service",
        60: "/system.slice/postgresql.service",
    }.items():
        (proc / str(pid)).mkdir()
        (proc / str(pid) / "cgroup").write_text(f"0::{cgroup}\n")
    return cg, proc


def by(series: list[wire.Series]) -> dict[tuple[str, str | None], float]:
    out = {}
    for s in series:
        assert s.times == [s.times[0]] and len(s.values) == 1
        assert (s.unit, s.kind) == wire.KNOWN_METRICS[s.metric]
        assert s.labels["node"] == "wn01"
        out[(s.metric, s.labels.get("user"))] = s.values[0]
    return out


def make_probe(tree: tuple[Path, Path], ps: StubPsutil, **kw: object) -> HostProbe:
    cg, proc = tree
    return HostProbe(
        node="wn01",
        hepscore23_per_core=12.5,
        proc_root=proc,
        cgroup_root=cg,
        psutil_module=ps,
        user_name=USERS.__getitem__,
        **kw,  # type: ignore[arg-type]
    )


def test_an_agent_in_its_own_cgroup_namespace_counts_each_process_once(
    tree: tuple[Path, Path],
) -> None:
    """In a Kubernetes pod with a cgroup namespace, /proc/PID/cgroup of a host process reads
    relative to the pod's cgroup (0::/../../../user.slice/...): a process inside a user's
    slice is still counted by the slice only, not again through /proc."""
    _cg, proc = tree
    for pid in (1234, 1240):
        (proc / str(pid) / "cgroup").write_text(
            "0::/../../../user.slice/user-1000.slice/session-3.scope\n"
        )
    (proc / "2000" / "cgroup").write_text("0::/../../../system.slice/jupyterhub.service\n")
    put_procs(
        proc,
        [
            StubProc(1234, 1000, cpu=4.0, rss=10 * MiB, read=5, write=5),
            StubProc(2000, 1000, cpu=2.0, rss=100 * MiB, read=300, write=400),
        ],
    )
    ps = StubPsutil()
    v = by(make_probe(tree, ps).collect(1_700_000_000.0).series)
    assert v[("user_cpu_seconds", "alice")] == 12.5 + 2.0  # the slice, and the process outside


def test_slices_and_procs_per_user(tree: tuple[Path, Path]) -> None:
    _cg, proc = tree
    put_procs(
        proc,
        [
            StubProc(1234, 1000, cpu=4.0, rss=10 * MiB, read=5, write=5),  # inside alice's slice
            StubProc(2000, 1000, cpu=2.0, rss=100 * MiB, read=300, write=400),  # outside it
            StubProc(3000, 1002, cpu=1.5, rss=30 * MiB, read=10, write=20),
            StubProc(2, 0, cpu=50.0, ppid=0),  # kthreadd
            StubProc(40, 0, cpu=7.0, ppid=2),  # a kernel worker
            StubProc(1240, 0, cpu=1.0),  # sudo in alice's session: her slice counts it
            StubProc(5000, 0, cpu=80.0, rss=GiB),  # root's login session
            StubProc(6000, 999, cpu=30.0, rss=GiB),  # a service account in its own slice
            StubProc(50, 0, cpu=9.0),  # sshd
            StubProc(60, 999, cpu=3.0),  # postgres
        ],
    )
    ps = StubPsutil()
    out = make_probe(tree, ps).collect(1_700_000_000.0)
    assert out.events == []
    v = by(out.series)
    assert v[("user_cpu_seconds", "alice")] == 12.5 + 2.0
    assert v[("user_memory_rss_bytes", "alice")] == 520 * MiB + 100 * MiB
    assert v[("user_io_read_bytes", "alice")] == 1048576 + 4096 + 300
    assert v[("user_io_write_bytes", "alice")] == 2097152 + 400
    assert v[("user_processes", "alice")] == 3 + 1
    assert v[("user_cpu_seconds", "bob")] == 3.0
    assert v[("user_memory_rss_bytes", "bob")] == 64 * MiB  # no memory.stat: memory.current
    assert v[("user_io_read_bytes", "bob")] == 0
    assert v[("user_processes", "bob")] == 1
    assert v[("user_cpu_seconds", "carol")] == 1.5
    assert v[("user_io_write_bytes", "carol")] == 20
    assert v[("user_processes", "carol")] == 1
    assert ("user_cpu_seconds", "root") not in v  # kernel threads are nobody's usage,
    assert ("user_cpu_seconds", "postgres") not in v  # and system accounts (uid < 1000) none
    assert not {user for _metric, user in v} & {"root", "postgres", "0", "999"}
    # left out and counted: root's and postgres's processes, in their slices or not; not the
    # kernel threads, nor root's process in alice's slice (her slice's counters hold it)
    assert v[("agent_excluded_processes", None)] == 4
    assert v[("node_cpu_cores", None)] == 8
    assert v[("node_memory_bytes", None)] == 64 * 2**30
    assert v[("node_hepscore23_per_core", None)] == 12.5
    assert ("node_cpu_busy_ratio", None) not in v  # needs two scans
    assert all(s.created is None for s in out.series)  # first scan: baselines only


def test_counters_stay_monotonic_across_logout_login_and_restart(
    tree: tuple[Path, Path], tmp_path: Path
) -> None:
    cg, _ = tree
    ps = StubPsutil()
    state = tmp_path / "host-probe.json"
    probe = make_probe(tree, ps, state_path=state)
    v1 = by(probe.collect(100.0).series)
    assert v1[("user_cpu_seconds", "bob")] == 3.0

    (cg / "user.slice" / "user-1000.slice" / "cpu.stat").write_text("usage_usec 20000000\n")
    shutil.rmtree(cg / "user.slice" / "user-1001.slice")  # bob logs out
    ps.node_cpu = NodeCpu(130.0, 0.0, 20.0, 390.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    v2 = by(probe.collect(115.0).series)
    assert v2[("user_cpu_seconds", "alice")] == 20.0
    assert v2[("user_cpu_seconds", "bob")] == 3.0  # not gone, not down: folded
    assert v2[("user_memory_rss_bytes", "bob")] == 0
    assert v2[("user_processes", "bob")] == 0
    assert v2[("node_cpu_busy_ratio", None)] == 30.0 / 40.0

    v3 = by(probe.collect(130.0).series)
    assert ("user_cpu_seconds", "bob") not in v3  # reported its final value once; quiet now

    # the agent restarts; bob logs in again, with a new slice whose counters start at 0
    write_slice(cg, 1001, usage_usec=250_000, memory_current=MiB, procs={"s.scope": [8]})
    ps.node_cpu = NodeCpu(140.0, 0.0, 20.0, 440.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    restarted = make_probe(tree, ps, state_path=state)
    out = restarted.collect(145.0)
    v4 = by(out.series)
    assert v4[("user_cpu_seconds", "bob")] == 3.25
    assert v4[("user_cpu_seconds", "alice")] == 20.0
    assert v4[("node_cpu_busy_ratio", None)] == 10.0 / 60.0  # CPU times survived the restart


def test_pid_reuse_and_new_user_created(tree: tuple[Path, Path]) -> None:
    _cg, proc = tree
    put_procs(proc, [StubProc(4000, 1002, cpu=5.0, create_time=100.0)])
    ps = StubPsutil()
    probe = make_probe(tree, ps)
    assert by(probe.collect(100.0).series)[("user_cpu_seconds", "carol")] == 5.0

    # pid 4000 exited and a new process got the same pid; dave started a process
    put_procs(
        proc,
        [
            StubProc(4000, 1002, cpu=1.0, create_time=200.0),
            StubProc(4100, 1003, cpu=0.5, create_time=201.0),
        ],
    )
    out = probe.collect(115.0)
    v = by(out.series)
    assert v[("user_cpu_seconds", "carol")] == 6.0
    assert v[("user_cpu_seconds", "dave")] == 0.5
    created = {(s.metric, s.labels.get("user")): s.created for s in out.series}
    # dave appeared after the first scan: all of his counter accrued since then
    assert created[("user_cpu_seconds", "dave")] == 100.0
    assert created[("user_cpu_seconds", "carol")] is None

    # a counter that goes back under the same key is a new source, not a decrease
    put_procs(proc, [StubProc(4000, 1002, cpu=0.25, create_time=200.0)])
    assert by(probe.collect(130.0).series)[("user_cpu_seconds", "carol")] == 6.25


def test_a_step_of_the_clock_keeps_the_keys_of_live_processes(tree: tuple[Path, Path]) -> None:
    """/proc/stat's btime moves when the wall clock is stepped: a process seen before keeps
    its key (create time), so its counters are not taken for a new source's and counted
    again; a process that starts afterwards is keyed with the new btime."""
    _cg, proc = tree
    put_procs(proc, [StubProc(4000, 1002, cpu=5.0, create_time=100.0)])
    probe = make_probe(tree, StubPsutil())
    assert by(probe.collect(100.0).series)[("user_cpu_seconds", "carol")] == 5.0

    (proc / "stat").write_text("cpu  1 2 3 4 5 6 7 0 0 0\nbtime 7\nprocesses 9\n")
    put_procs(
        proc,
        [
            StubProc(4000, 1002, cpu=6.0, create_time=100.0),
            StubProc(4100, 1002, cpu=1.0, create_time=110.0),
        ],
    )
    assert by(probe.collect(115.0).series)[("user_cpu_seconds", "carol")] == 7.0
    processes = {key for key in probe._state.sources if key.startswith("p:")}
    assert processes == {"p:4000:100.00", "p:4100:117.00"}


def test_min_uid_and_exclude_users_choose_the_accounts(tree: tuple[Path, Path]) -> None:
    _cg, proc = tree
    put_procs(
        proc,
        [
            StubProc(5000, 0, cpu=80.0, rss=GiB),
            StubProc(6000, 999, cpu=30.0, rss=GiB),
            StubProc(50, 0, cpu=9.0),
            StubProc(60, 999, cpu=3.0),
            StubProc(4100, 1003, cpu=0.5),
        ],
    )
    ps = StubPsutil()
    v = by(make_probe(tree, ps, min_uid=0, exclude_users=["postgres", "dave"]).collect(1.0).series)
    assert v[("user_cpu_seconds", "root")] == 90.0 + 9.0  # root's slice, and sshd via /proc
    assert v[("user_processes", "root")] == 1 + 1
    assert not {user for _metric, user in v} & {"postgres", "dave"}
    assert v[("agent_excluded_processes", None)] == 3  # postgres's two and dave's one
    assert v[("user_cpu_seconds", "alice")] == 12.5  # the others as before

    put_procs(proc, [])
    no_processes = by(make_probe(tree, StubPsutil()).collect(1.0).series)
    assert no_processes[("agent_excluded_processes", None)] == 0
