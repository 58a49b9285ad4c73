"""The host probe's /proc path against this machine's real processes."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from afmon.collectors.probes.host import HostProbe

# On a line from stdin: burns ~0.6 s of CPU, holds 64 MiB, prints the CPU seconds burnt, then
# waits for another line before it exits.
CHILD = """
import sys, time
sys.stdin.readline()
start = time.process_time()
while time.process_time() - start < 0.6:
    pass
held = b"x" * (64 * 2**20)
print(time.process_time() - start, flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def busy_child() -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    yield child
    if child.poll() is None:
        child.kill()
    child.wait(timeout=10)


def node_busy_seconds() -> float:
    ct = psutil.cpu_times()
    return sum(ct) - ct.guest - ct.guest_nice - ct.idle - ct.iowait


def test_user_cpu_follows_a_real_child_and_never_goes_down(
    tmp_path: Path, busy_child: subprocess.Popen[str]
) -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    # no cgroup v2 slices: /proc only; this test's account is measured even if it is root
    probe = HostProbe(node="n1", cgroup_root=tmp_path, min_uid=0)

    def values(now: float) -> dict[str, float]:
        out = probe.collect(now)
        return {s.metric: s.values[0] for s in out.series if s.labels.get("user") == me}

    assert busy_child.stdin is not None and busy_child.stdout is not None
    busy0 = node_busy_seconds()
    v0 = values(1.0)
    busy_child.stdin.write("go\n")
    busy_child.stdin.flush()
    burned = float(busy_child.stdout.readline())
    v1 = values(2.0)
    busy1 = node_busy_seconds()
    child_rss = psutil.Process(busy_child.pid).memory_info().rss

    grew = v1["user_cpu_seconds"] - v0["user_cpu_seconds"]
    assert grew >= burned - 0.05  # at least what the child burned (tick rounding aside)
    assert grew <= busy1 - busy0 + 0.2  # at most what the whole machine was busy
    assert v1["user_memory_rss_bytes"] >= child_rss >= 64 * 2**20
    assert v1["user_processes"] >= 2  # this test and the child

    busy_child.stdin.write("\n")
    busy_child.stdin.flush()
    busy_child.wait(timeout=10)
    v2 = values(3.0)
    # the child's ~0.6 s left the live processes; the counter must keep it
    assert v2["user_cpu_seconds"] >= v1["user_cpu_seconds"]
    assert v2["user_cpu_seconds"] >= v0["user_cpu_seconds"] + burned - 0.05
    assert v2["user_io_read_bytes"] >= v1["user_io_read_bytes"]
    assert v2["user_io_write_bytes"] >= v1["user_io_write_bytes"]


def test_node_capacity_from_this_machine(tmp_path: Path) -> None:
    probe = HostProbe(node="n1", hepscore23_per_core=11.0, cgroup_root=tmp_path, min_uid=0)
    probe.collect(1.0)
    sum(i * i for i in range(200_000))  # some busy time between the scans
    out = probe.collect(2.0)
    node = {s.metric: s.values[0] for s in out.series if "user" not in s.labels}
    assert node["node_cpu_cores"] == os.cpu_count()
    assert node["node_memory_bytes"] == psutil.virtual_memory().total
    assert node["node_hepscore23_per_core"] == 11.0
    assert 0.0 < node["node_cpu_busy_ratio"] <= 1.0


def account_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


SLEEP = shutil.which("sleep") or "/bin/sleep"  # runnable by any uid (this venv's python may not be)


@pytest.mark.usefixtures("as_root")  # processes of other uids
def test_system_accounts_are_left_out_and_counted(tmp_path: Path) -> None:
    """Real processes of uid 0, 999 (a service account) and 4243 (a member's, no such account
    here: named "4243"): only the last is reported by default; the others are counted."""
    children = {uid: subprocess.Popen([SLEEP, "120"], user=uid, cwd="/") for uid in (0, 999, 4243)}
    try:
        out = HostProbe(node="n1", cgroup_root=tmp_path).collect(1.0)
        users = {s.labels["user"] for s in out.series if "user" in s.labels}
        assert "4243" in users
        assert not users & {"root", "0", "999", account_name(0), account_name(999)}
        assert all(int(u) >= 1000 for u in users if u.isdigit())
        excluded = {s.metric: s.values[0] for s in out.series}["agent_excluded_processes"]
        assert excluded >= 3  # this test and two children at least (exact: the stub tests)

        by_name = HostProbe(node="n1", cgroup_root=tmp_path, min_uid=0, exclude_users=["4243"])
        users = {s.labels["user"] for s in by_name.collect(1.0).series if "user" in s.labels}
        assert "4243" not in users and account_name(0) in users
    finally:
        for child in children.values():
            child.kill()
            child.wait(timeout=10)
