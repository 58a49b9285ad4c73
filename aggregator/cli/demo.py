"""`afmon demo`: a live demo facility on this machine.

Starts the server (local mode, SQLite in the data dir), one real agent that
measures this machine, and a simulated facility that posts like a fleet of
agents: first some hours of history, then live. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import errno
import getpass
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from afmon.collectors.simulator import FacilitySimulator, Poster, backfill

FACILITY = "demo-af"


def _this_user_member(user: str) -> str:
    return (
        '\n[[members]]\nvo = "atlas"\nsubject = "demo-local-user"\n'
        f'display_name = "You ({user} on this machine)"\ngroups = ["/atlas"]\n'
        f'accounts = [{{ facility = "{FACILITY}", local = "{user}" }}]\n'
    )


def _free_port_near(port: int) -> int | None:
    """The first free port above `port` (within 100), to suggest one that will work."""
    for candidate in range(port + 1, min(port + 100, 65535) + 1):
        if _port_problem(candidate) is None:
            return candidate
    return None


def _port_problem(port: int) -> str | None:
    """Why the demo cannot listen on 127.0.0.1:`port`, or None. Checked before anything starts,
    so that a busy port is said in the demo's own words (with `make demo PORT=...`), not as a
    server that exited. SO_REUSEADDR as uvicorn's, so a port left in TIME_WAIT counts as free."""
    if not 1 <= port <= 65535:
        return f"port {port} is not a TCP port (1 to 65535)"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"port {port} is already in use by another program (another afmon demo?"
                    f" `ss -ltnp 'sport = :{port}'` names it)"
                )
            if exc.errno == errno.EACCES:
                return f"port {port} needs root (ports below 1024)"
            return f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}"
    return None


def _port_advice(port: int, problem: str) -> str:
    free = _free_port_near(max(port, 1024))
    other = free if free is not None else 8700
    return (
        f"afmon demo: {problem}; choose another port with `make demo PORT={other}` or "
        f"`afmon demo --port {other}`" + (f" ({free} is free now)" if free is not None else "")
    )


def _wait_healthy(url: str, server: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(
                f"the server exited with status {server.returncode}; see its log above"
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the server did not answer {url}/healthz within {timeout:.0f} s")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(data_dir: Path, port: int = 8600, hours: float = 24.0, nodes: int = 8) -> int:
    problem = _port_problem(port)
    if problem is not None:
        print(_port_advice(port, problem), file=sys.stderr)
        return 2
    data_dir.mkdir(parents=True, exist_ok=True)
    sim = FacilitySimulator(facility=FACILITY, nodes=nodes, rich=True)
    identity = data_dir / "identity.toml"
    identity.write_text(sim.identity_toml(_this_user_member(getpass.getuser())))
    token = secrets.token_urlsafe(24)
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AFMON_DATABASE_URL": f"sqlite:///{(data_dir / 'afmon.sqlite').resolve()}",
        "AFMON_FACILITY_TOKENS": json.dumps({FACILITY: token}),
        "AFMON_LOCAL_MODE": "true",
        "AFMON_IDENTITY_FILE": str(identity.resolve()),
        "AFMON_HOST": "127.0.0.1",
        "AFMON_PORT": str(port),
        "AFMON_LOG_LEVEL": "warning",
    }
    procs: list[subprocess.Popen[bytes]] = []
    # SIGTERM (from a service manager, or `timeout`) stops the demo like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        print(f"afmon demo: starting the server on {url} (data in {data_dir})", flush=True)
        server = [sys.executable, "-m", "afmon.aggregator.cli", "serve"]
        procs.append(subprocess.Popen(server, env=env))
        _wait_healthy(url, procs[0])
        agent_env = {
            **env,
            "AFMON_SERVER_URL": url,
            "AFMON_TOKEN": token,
            "AFMON_FACILITY": FACILITY,
            "AFMON_INTERVAL_SECONDS": "10",
            "AFMON_SPOOL_DIR": str((data_dir / "agent-spool").resolve()),
            # the demo shows you: measured even when you run it as root or a system account
            "AFMON_MIN_UID": str(min(1000, os.getuid())),
        }
        print("afmon demo: starting a real agent measuring this machine", flush=True)
        agent = [sys.executable, "-m", "afmon.collectors.agent"]
        procs.append(subprocess.Popen(agent, env=agent_env))
        poster = Poster(url, token)
        now = time.time()
        # A restarted demo goes on where the last one stopped instead of simulating the
        # same hours a second time with other sessions.
        mark = data_dir / "simulated-until"
        start = now - hours * 3600
        if mark.exists():
            start = max(start, float(mark.read_text()))
        backfill(sim, poster, start, now)
        mark.write_text(repr(now))
        print(
            f"\nafmon demo is live: open {url}/  (API docs {url}/docs, metrics {url}/metrics)\n"
            f"{len(sim.nodes)} simulated nodes and this machine report every 10 s. "
            "Press Ctrl-C to stop.",
            flush=True,
        )
        while True:
            time.sleep(sim.interval)
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[2]} exited with status {p.returncode}")
            now = time.time()
            for batch in sim.batches(start, now, ticks_per_batch=1):  # goes on from its last tick
                poster.post(batch)
            mark.write_text(repr(now))
    except KeyboardInterrupt:
        print("\nafmon demo: stopping", flush=True)
        return 0
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"afmon demo: {exc}", file=sys.stderr)
        return 1
    finally:
        _stop(procs)


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(Path(args.data_dir), port=args.port, hours=args.hours, nodes=args.nodes)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = sub.add_parser(
        "demo", help="a live demo facility: server, a real agent on this machine, simulated nodes"
    )
    demo.add_argument("--data-dir", default="var/demo", help="where the demo keeps its files")
    demo.add_argument(
        "--port",
        type=int,
        default=8600,
        help="dashboard/API port (default 8600; `make demo PORT=8700` passes it)",
    )
    demo.add_argument(
        "--hours",
        type=float,
        default=24.0,
        help="history to simulate before going live (default 24)",
    )
    demo.add_argument("--nodes", type=int, default=8, help="simulated nodes (default 8)")
    demo.set_defaults(func=cmd_demo)
