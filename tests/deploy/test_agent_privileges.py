"""The agent works with exactly the privileges the DaemonSet and the systemd unit give it:
uid 0 with CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE alone, the host's /proc and cgroups mounted
read-only at other paths (AFMON_PROC_ROOT, AFMON_CGROUP_ROOT). And both capabilities are
really needed: with either alone another user's /proc/PID/io cannot be read (mode 0400, owned
by that user, and behind the kernel's ptrace access check)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

MEMBER_UID = 4243  # no such account here: the agent names it "4243"
AGENT_CAPS = "-all,+dac_read_search,+sys_ptrace"  # the manifests': drop ALL, add these two

pytestmark = pytest.mark.usefixtures("as_root")  # processes of other uids, caps, mounts


def capped(bounding: str) -> list[str]:
    """Run as root with only `bounding` capabilities (root's effective set after exec)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv is needed: Debian's util-linux")
    return [setpriv, "--inh-caps=-all", "--ambient-caps=-all", f"--bounding-set={bounding}",
            "--no-new-privs", "--"]


@pytest.fixture
def member_process() -> Iterator[int]:
    sleep = shutil.which("sleep")
    assert sleep is not None
    proc = subprocess.Popen([sleep, "120"], user=MEMBER_UID, group=MEMBER_UID, cwd="/")
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    ("bounding", "readable"),
    [
        (AGENT_CAPS, True),
        ("-all,+sys_ptrace", False),
        ("-all,+dac_read_search", False),
        ("-all", False),
    ],
)
def test_proc_io_of_another_user_needs_both_capabilities(
    member_process: int, bounding: str, readable: bool
) -> None:
    code = (  # stat and status are world-readable; io is what needs the capabilities
        f"open('/proc/{member_process}/stat').read(); open('/proc/{member_process}/status')"
        f".read(); print('io', flush=True); open('/proc/{member_process}/io').read()"
    )
    done = subprocess.run([*capped(bounding), sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode == 0) is readable, done.stderr
    if not readable:
        assert done.stdout == "io\n" and "PermissionError" in done.stderr, done.stderr


def test_agent_runs_with_only_its_two_capabilities_on_read_only_host_mounts(
    member_process: int, tmp_path: Path
) -> None:
    host = tmp_path / "host"
    proc_root, cgroup_root = host / "proc", host / "sys" / "fs" / "cgroup"
    proc_root.mkdir(parents=True)
    cgroup_root.mkdir(parents=True)
    # As the DaemonSet's hostPath mounts: the host's /proc and cgroups, read-only, elsewhere.
    # A private mount namespace, so nothing is mounted outside this test.
    script = (
        f"mount --bind /proc {proc_root} && mount -o remount,bind,ro {proc_root} && "
        f"mount --bind /sys/fs/cgroup {cgroup_root} && "
        f"mount -o remount,bind,ro {cgroup_root} && exec \"$@\""
    )
    agent = Path(sys.executable).parent / "afmon-agent"
    env = {
        "PATH": os.environ["PATH"],
        "AFMON_PROC_ROOT": str(proc_root),
        "AFMON_CGROUP_ROOT": str(cgroup_root),
        "AFMON_MIN_UID": "4000",
        "AFMON_GPU_ENABLED": "false",
        "AFMON_SPOOL_DIR": str(tmp_path / "spool"),
    }
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         *capped(AGENT_CAPS), str(agent), "--print"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert done.returncode == 0, done.stderr
    batch = json.loads(done.stdout)
    procs = [s for s in batch["series"] if s["metric"] == "user_processes"
             and s["labels"]["user"] == str(MEMBER_UID)]
    assert procs and procs[0]["values"][-1] >= 1, done.stdout[:2000]
    assert "Permission" not in done.stderr, done.stderr
    # and it read the member's IO counters: psutil gives None (reported as 0) when denied
    probe = (
        f"import psutil; psutil.PROCFS_PATH = {str(proc_root)!r}; "
        f"print(psutil.Process({member_process}).io_counters())"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         *capped(AGENT_CAPS), sys.executable, "-c", probe],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert done.returncode == 0 and "pio(" in done.stdout, done.stderr
