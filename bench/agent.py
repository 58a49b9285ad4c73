"""The node agent's own CPU per collection cycle, with N real processes on this machine.

Starts N sleeping processes (`sleep`; as root spread over --uids uids from 4201 up, which the
agent reports as members, else all of this account), then runs K times what `afmon-agent`
does each interval: every probe of the default settings collects (the host probe reads /proc,
and saves its state in the spool directory), the batch is encoded, gzip'd and written to the
spool (fsync), and the spool is flushed: one POST to a receiver on 127.0.0.1 that answers
`applied` (a child process, so its CPU is not counted here). CPU is this process's user +
system time (resource.getrusage) per cycle, so its share of one core at a 10 s interval is
cpu_per_cycle / 10 s. RSS is this process's resident memory after the cycles.

    python -m bench.agent [--processes 1000] [--cycles 30] [--uids 8] [--pace 0]
                          [--interval 10] [--profile]      (from the repository root)

--pace sleeps between cycles (caches go cold as in a real agent's 10 s wait); --profile runs
the cycles under cProfile and prints the functions that cost most.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from afmon.collectors.probes.registry import build_probes
from afmon.collectors.push import PushLoop
from afmon.collectors.settings import AgentSettings
from afmon.collectors.spool import Spool

FIRST_UID = 4201
SLEEP = shutil.which("sleep") or "/bin/sleep"

# The receiver: reads each POST's body and answers what the aggregator answers for a new batch.
RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"status":"applied"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@contextmanager
def sleepers(count: int, uids: int) -> Iterator[list[int]]:
    """`count` sleeping processes, spread over `uids` uids when root; killed on the way out."""
    as_root = os.geteuid() == 0
    children: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(count):
            user = FIRST_UID + i % uids if as_root else None
            children.append(subprocess.Popen([SLEEP, "3600"], user=user, cwd="/"))
        yield [c.pid for c in children]
    finally:
        for child in children:
            child.kill()
        for child in children:
            child.wait()


@contextmanager
def receiver() -> Iterator[str]:
    """The URL of a local HTTP receiver in a child process."""
    child = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        child.kill()
        child.wait()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_cycle(loop: PushLoop, spool: Spool) -> dict[str, Callable[[], object]]:
    """One interval of `PushLoop.run_forever`, in its three parts (spool_batch, then flush)."""
    batch: list[object] = []

    def collect() -> None:
        now = loop.clock()
        batch[:] = [loop.build_batch(now, spool.allocate_seq(), spool.agent_id)]

    def write() -> None:
        spool.put(batch.pop())  # type: ignore[arg-type]

    def send() -> None:
        result = loop.flush()
        if result.error or result.pending:
            raise SystemExit(f"the receiver did not take the batch: {result}")

    return {"collect": collect, "spool": write, "send": send}


def run(args: argparse.Namespace) -> None:
    with (
        sleepers(args.processes, args.uids) as pids,
        receiver() as url,
        tempfile.TemporaryDirectory(dir=args.spool_parent) as tmp,
        httpx.Client(timeout=10) as client,
    ):
        settings = AgentSettings(server_url=url, facility="bench", spool_dir=Path(tmp))
        spool = Spool(settings.spool_dir, lock=True)
        loop = PushLoop(
            probes=build_probes(settings, settings.spool_dir),
            spool=spool,
            client=client,
            server_url=settings.server_url,
            token="bench",
            facility=settings.facility,
            node=settings.node,
            interval=args.interval,
        )
        parts = make_cycle(loop, spool)
        for part in parts.values():  # the first cycle: baselines, connection, imports
            part()
        in_proc = sum(1 for name in os.listdir("/proc") if name.isdigit())
        spent = {name: [] for name in parts} | {"cycle": []}
        profiler = cProfile.Profile() if args.profile else None
        for _ in range(args.cycles):
            if args.pace:
                time.sleep(args.pace)
            if profiler is not None:
                profiler.enable()
            start = last = cpu_seconds()
            for name, part in parts.items():
                part()
                now = cpu_seconds()
                spent[name].append(now - last)
                last = now
            spent["cycle"].append(last - start)
            if profiler is not None:
                profiler.disable()
        rss = rss_mib()
    ms = {name: 1000 * statistics.fmean(values) for name, values in spent.items()}
    share = ms["cycle"] / 1000 / args.interval
    print(
        f"{'processes':>9} {'started':>7} {'cycles':>6} {'collect ms':>10} {'spool ms':>8} "
        f"{'send ms':>7} {'cycle ms':>8} {'median ms':>9} {f'core @ {args.interval:g} s':>11} "
        f"{'RSS MiB':>7}"
    )
    print(
        f"{in_proc:>9} {len(pids):>7} {args.cycles:>6} {ms['collect']:>10.2f} "
        f"{ms['spool']:>8.2f} {ms['send']:>7.2f} {ms['cycle']:>8.2f} "
        f"{1000 * statistics.median(spent['cycle']):>9.2f} {share:>11.2%} {rss:>7.1f}"
    )
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--processes", type=int, default=1000, help="sleepers to start [1000]")
    parser.add_argument("--cycles", type=int, default=30, help="cycles measured [30]")
    parser.add_argument("--uids", type=int, default=8, help="uids the sleepers run as [8]")
    parser.add_argument("--interval", type=float, default=10.0, help="agent interval [10]")
    parser.add_argument("--pace", type=float, default=0.0, help="seconds between cycles [0]")
    parser.add_argument("--spool-parent", default=None, help="where the spool goes [$TMPDIR]")
    parser.add_argument(
        "--profile", type=int, nargs="?", const=25, default=0, help="print the top N [25]"
    )
    run(parser.parse_args())


if __name__ == "__main__":
    main()
