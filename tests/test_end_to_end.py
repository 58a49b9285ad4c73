"""A real agent process pushes to a real server process; an outage loses nothing.

The agent reads a cgroup v2 tree that the test controls (this machine has no
usable cgroup v2 user slices) for one user, so the counters it reports for
that user are known exactly; the rest of this machine is measured through the
real /proc, and everything else (spool, push loop, HTTP, ingest, ledger) is real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import ServerProcess

UID = 4242  # no such account here: the agent names the user "4242"
IDENTITY = """
[vos.cms]
issuer = "https://cms-auth.web.cern.ch/"

[[members]]
vo = "cms"
subject = "e2e-subject"
display_name = "End To End"
groups = ["/cms", "/cms/uscms"]
accounts = [{ facility = "test-af", local = "4242" }]
"""
MEMBER = "https://cms-auth.web.cern.ch/|e2e-subject"


def write_slice(root: Path, cpu_seconds: int, read_bytes: int) -> None:
    d = root / "user.slice" / f"user-{UID}.slice"
    d.mkdir(parents=True, exist_ok=True)
    (d / "cpu.stat").write_text(f"usage_usec {cpu_seconds * 1_000_000}\n")
    (d / "io.stat").write_text(f"8:0 rbytes={read_bytes} wbytes=0 rios=1 wios=0\n")
    (d / "memory.stat").write_text(f"anon {256 * 2**20}\nfile_mapped 0\n")
    (d / "cgroup.procs").write_text("")


def run_agent(server: ServerProcess, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AFMON_SERVER_URL": server.url,
        "AFMON_TOKEN": server.token,
        "AFMON_FACILITY": server.facility,
        "AFMON_NODE": "e2e-node",
        "AFMON_SPOOL_DIR": str(tmp / "spool"),
        "AFMON_CGROUP_ROOT": str(tmp / "cgroup"),
        "AFMON_TIMEOUT_SECONDS": "3",
        "AFMON_HEPSCORE23_PER_CORE": "15.5",
    }
    return subprocess.run(
        [sys.executable, "-m", "afmon.collectors.agent", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def member_usage(server: ServerProcess) -> dict[str, float]:
    rows = httpx.get(
        f"{server.url}/api/v1/usage", params={"start": 0, "end": 4e9, "by": "member"}, timeout=30
    ).json()
    return {r["resource"]: r["amount"] for r in rows if r["member"] == MEMBER}


def test_agent_to_server_with_an_outage_in_between(
    tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "cgroup.controllers").write_text("cpu io memory pids\n")
    identity = tmp_path / "identity.toml"
    identity.write_text(IDENTITY)
    # the test writes the cgroup's CPU counter by hand, 25-50 s per run seconds apart: more
    # than this machine's cores could do, which the server refuses as beyond_capacity
    server = server_factory(identity_file=identity, dashboard="false", capacity_slack="1000")

    write_slice(cgroup, cpu_seconds=100, read_bytes=1_000)
    first = run_agent(server, tmp_path)
    assert first.returncode == 0, first.stderr
    assert member_usage(server).get("cpu_seconds", 0.0) == 0.0  # the first reading is a baseline

    server.stop()
    for cpu, read in ((150, 5_000), (175, 9_000)):
        write_slice(cgroup, cpu_seconds=cpu, read_bytes=read)
        down = run_agent(server, tmp_path)
        assert down.returncode == 1, down.stderr  # kept in the spool
    assert len(list((tmp_path / "spool" / "batches").iterdir())) == 2

    server.start()
    write_slice(cgroup, cpu_seconds=200, read_bytes=10_000)
    last = run_agent(server, tmp_path)
    assert last.returncode == 0, last.stderr

    usage = member_usage(server)
    assert usage["cpu_seconds"] == 100.0
    assert usage["cpu_hs23_seconds"] == 100.0 * 15.5
    assert usage["io_read_bytes"] == 9_000.0
    assert usage["memory_byte_seconds"] > 0
    # the node reported its capacity; the server restarted, so its counter saw 3 batches
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert 'afmon_node_cpu_cores{facility="test-af",node="e2e-node"}' in metrics
    applied = [
        line
        for line in metrics.splitlines()
        if line.startswith('afmon_ingest_batches_total{facility="test-af",outcome="applied"}')
    ]
    assert applied == ['afmon_ingest_batches_total{facility="test-af",outcome="applied"} 3.0']
    state = json.loads((tmp_path / "spool" / "state.json").read_text())
    assert state["next_seq"] == 4  # four runs, four seqs, none reused across restarts
    assert state["dropped_samples"] == 0
