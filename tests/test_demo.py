"""`afmon demo` end to end: server, real agent and simulator start, data shows, Ctrl-C stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.conftest import free_port


def test_demo_starts_shows_data_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFMON_")}
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "afmon.aggregator.cli",
            "demo",
            "--data-dir",
            str(tmp_path / "demo"),
            "--port",
            str(port),
            "--hours",
            "2",
            "--nodes",
            "2",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    children: list[psutil.Process] = []
    output: list[str] = []
    try:
        deadline = time.monotonic() + 120
        assert demo.stdout is not None
        for line in demo.stdout:
            output.append(line)
            if "afmon demo is live" in line or time.monotonic() > deadline:
                break
        assert any("afmon demo is live" in line for line in output), "".join(output)
        assert f"http://127.0.0.1:{port}/" in "".join(output)
        children = psutil.Process(demo.pid).children(recursive=True)
        assert len(children) == 2  # the server and the agent

        url = f"http://127.0.0.1:{port}"
        usage = httpx.get(
            f"{url}/api/v1/usage",
            params={"start": 0, "end": time.time() + 3600, "by": "vo"},
            timeout=30,
        ).json()
        vos = {row["vo"] for row in usage if row["resource"] == "cpu_seconds"}
        assert {"atlas", "cms", "lhcb"} <= vos
        # the real agent measuring this machine reports its node within a couple of intervals
        node_deadline = time.monotonic() + 60
        while time.monotonic() < node_deadline:
            metrics = httpx.get(f"{url}/metrics", timeout=30).text
            real_nodes = [
                line
                for line in metrics.splitlines()
                if line.startswith("afmon_node_cpu_cores{") and "sim-node" not in line
            ]
            if real_nodes:
                break
            time.sleep(2)
        assert real_nodes, "the real agent's node never appeared in /metrics"
        assert httpx.get(f"{url}/", timeout=30).status_code == 200
    finally:
        demo.send_signal(signal.SIGTERM)  # as a service manager would; Ctrl-C is the same
        rest, _ = demo.communicate(timeout=60)
        output.append(rest)
    assert demo.returncode == 0, "".join(output)
    assert "stopping" in "".join(output)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_a_busy_port_is_said_with_how_to_choose_another(tmp_path: Path) -> None:
    """`make demo` on a busy 8600 once said only "the server exited with status 3"."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AFMON_")}
        demo = subprocess.run(
            [sys.executable, "-m", "afmon.aggregator.cli", "demo", "--port", str(port),
             "--data-dir", str(tmp_path / "demo")],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert demo.returncode == 2, demo.stdout + demo.stderr
    line = demo.stderr.strip()
    assert f"port {port} is already in use" in line
    assert "make demo PORT=" in line and "afmon demo --port " in line
    assert "exited" not in line and "Traceback" not in line
    assert not (tmp_path / "demo").exists()  # nothing started, nothing written
