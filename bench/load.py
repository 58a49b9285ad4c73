"""Fleet-scale ingest: N simulated node agents against a real `afmon serve`, side by side with
VictoriaMetrics receiving the same samples as line protocol, in the same run.

Every simulated agent sends what the real one (`afmon-agent`, collectors/push.py) sends each
interval: one gzip'd wire batch built with afmon.collectors.wire, one sample per series, for
--users local accounts x 5 metrics (user_cpu_seconds, user_io_read_bytes, user_io_write_bytes,
user_memory_rss_bytes, user_processes, as the host probe makes them), the node's 4 capacity
series and the agent's 2 spool series (241 samples with the default 47 users), plus its
JupyterHub session events (a session starts every 3rd batch and ends 30 batches later).
Every batch is built and compressed before anything is timed (that is the agent's work).
Each agent first sends one batch untimed (the fleet is already known to the server: series
exist), then its share of the scenario:

  closed   capacity: --closed-agents agents each post --closed-batches batches back to back
           (the next as soon as the last is answered);
  open     latency at a given fleet: --open-agents agents each post one batch per --interval,
           spread evenly over the interval, for --open-seconds; latency is counted from when
           the batch was due, so a server that falls behind shows it;
  catchup  after an outage: --catchup-agents agents each flush a spool of --catchup-minutes of
           batches at once, oldest first, one request at a time per agent; the drain time is
           the time until the last spool is empty.

Each scenario runs against afmon and then against VictoriaMetrics (`victoria-metrics` from
Debian, /api/v2/write?precision=ms) with the same samples (afmon's own line protocol,
afmon.aggregator.store.tsdb.line_protocol, gzip'd), the same client (httpx, asyncio, one
connection per agent at most) and the same concurrency. A failed request (transport error,
429, 5xx) is counted as an error and retried with backoff as the agent does; 400/413/422 are
not retried.

At the end the ledger is checked against the truth: the server's database is read (ledger
totals per resource, daily rollup, raw samples, applied batches, ended sessions) and compared
with what the bench computes from the batches it had acknowledged (counters: last minus first
value, the first sample being a baseline; memory: value x time between samples; sessions:
duration and count of the ended ones). Any difference exits with status 1.

    python bench/load.py --quick                 # < 1 min: a smoke run
    python bench/load.py                         # the defaults below
    python bench/load.py --database postgresql+psycopg://postgres@127.0.0.1:5432/afmon_load \\
        --workers 2                              # PostgreSQL, 2 worker processes
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import gzip
import json
import math
import os
import random
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

from afmon.aggregator.store.tsdb import line_protocol, series_head
from afmon.collectors import wire
from afmon.collectors.probes.base import sample

T = TypeVar("T")
TOKEN = secrets.token_urlsafe(32)  # a strong one: `afmon serve` refuses weak tokens
MIB = 1024 * 1024
COUNTERS = ("user_cpu_seconds", "user_io_read_bytes", "user_io_write_bytes")
PERMANENT = frozenset({400, 413, 422})  # the agent moves such a batch aside: no retry
MAX_ATTEMPTS = 30
SESSION_EVERY = 3  # batches between session starts on a node
SESSION_LENGTH = 30  # batches a session lasts
GAUGE_MAX_GAP = 600.0  # AFMON_GAUGE_MAX_GAP_SECONDS, the server's default
SCENARIOS = ("closed", "open", "catchup")

DEFAULTS = {
    "users": 47,
    "interval": 10.0,
    "closed_agents": 16,
    "closed_batches": 40,
    "open_agents": 300,
    "open_seconds": 30.0,
    "catchup_agents": 20,
    "catchup_minutes": 30.0,
}
QUICK = {
    "closed_agents": 8,
    "closed_batches": 15,
    "open_agents": 100,
    "open_seconds": 10.0,
    "catchup_agents": 2,
    "catchup_minutes": 30.0,
}


# -- the simulated agents ---------------------------------------------------------------------


@dataclass
class Agent:
    """One simulated node agent and every batch it will send, prepared beforehand."""

    scenario: str
    index: int
    agent_id: str
    node: str
    hs23: float
    bodies: list[bytes] = field(default_factory=list)  # gzip'd wire JSON, batch k has seq k+1
    vm_bodies: list[bytes] = field(default_factory=list)  # gzip'd line protocol, same samples
    times: list[float] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    values: list[array.array] = field(default_factory=list)  # cpu[U] read[U] write[U] rss[U]
    ended: list[list[tuple[str, float, float]]] = field(default_factory=list)  # sessions
    acked: dict[str, bytearray] = field(default_factory=dict)  # server -> 1 per acked batch


def make_agent(
    scenario: str,
    index: int,
    n_batches: int,
    *,
    users: int,
    start: float,
    interval: float,
    facility: str,
    run_id: str,
) -> Agent:
    """An agent of `scenario` with `n_batches` batches, the first at `start` (+ a phase)."""
    rng = random.Random(f"{run_id}-{scenario}-{index}")
    node = f"{scenario}-{index:05d}.af.example.org"
    agent = Agent(
        scenario=scenario,
        index=index,
        agent_id=f"{run_id}-{scenario}-{index:05d}",
        node=node,
        hs23=float(8 + index % 5),  # per node type; the ledger multiplies CPU by it
    )
    names = sorted(f"user{(index * 7 + u) % 1000:04d}" for u in range(users))
    # the counters of users who have been working on this node for a while: the first
    # sample the server sees is a baseline (no `created`, as the host probe sends it)
    cpu = [rng.randrange(0, 400_000) * 0.25 for _ in names]
    read = [rng.randrange(0, 1_000_000) * 4096.0 for _ in names]
    write = [rng.randrange(0, 100_000) * 4096.0 for _ in names]
    rss = [rng.randrange(64, 8192) * float(MIB) for _ in names]
    procs = [rng.randrange(1, 40) for _ in names]
    cores, node_memory = 64, 512 * 1024 * MIB
    spool_created = start - 86_400.0
    node_labels = {"node": node}
    t0 = start + index % 10  # agents' clocks are not in step
    open_sessions: dict[int, tuple[str, str, float]] = {}
    for k in range(n_batches):
        t = t0 + k * interval
        busy = 0.0
        if k:
            for u in range(len(names)):
                used = rng.randrange(0, 161) * 0.25  # up to 4 cores busy for 10 s
                busy += used
                cpu[u] += used
                read[u] += rng.randrange(0, 2560) * 4096.0
                write[u] += rng.randrange(0, 256) * 4096.0
                rss[u] = max(16.0 * MIB, rss[u] + rng.randrange(-64, 65) * float(MIB))
        series: list[wire.Series] = []
        for u, user in enumerate(names):  # what HostProbe._account makes
            labels = {"user": user, "node": node}
            for metric, value in zip(COUNTERS, (cpu[u], read[u], write[u]), strict=True):
                series.append(sample(metric, labels, t, value))
            series.append(sample("user_memory_rss_bytes", labels, t, rss[u]))
            series.append(sample("user_processes", labels, t, procs[u]))
        series.append(sample("node_hepscore23_per_core", node_labels, t, agent.hs23))
        series.append(sample("node_cpu_cores", node_labels, t, cores))
        series.append(sample("node_memory_bytes", node_labels, t, node_memory))
        ratio = min(1.0, busy / (cores * interval)) if k else 0.0
        series.append(sample("node_cpu_busy_ratio", node_labels, t, ratio))
        series.append(  # what PushLoop.collect adds
            sample("agent_spool_dropped_samples", node_labels, t, 0, created=spool_created)
        )
        series.append(sample("agent_spool_batches", node_labels, t, 1))
        events: list[wire.Event] = []
        ended: list[tuple[str, float, float]] = []
        if k % SESSION_EVERY == 0:  # the JupyterHub probe: a session started ...
            sid, user = f"{node}-{k}", names[(k // SESSION_EVERY) % len(names)]
            open_sessions[k] = (sid, user, t)
            events.append(wire.Event("session", sid, user, t, None, {"profile": "4 cores, 8 GiB"}))
        if k - SESSION_LENGTH in open_sessions:  # ... and one ended
            sid, user, began = open_sessions.pop(k - SESSION_LENGTH)
            events.append(wire.Event("session", sid, user, began, t, {"profile": "4 cores, 8 GiB"}))
            ended.append((sid, began, t))
        batch = wire.Batch(
            version=wire.WIRE_VERSION,
            agent_id=agent.agent_id,
            facility=facility,
            node=node,
            seq=k + 1,
            sent_at=t,
            series=series,
            events=events,
        )
        agent.bodies.append(wire.encode(batch, compress=True))  # what the spool holds
        points = [(series_head(batch, s), s.times, s.values) for s in batch.series]
        agent.vm_bodies.append(gzip.compress(line_protocol(points), compresslevel=5))
        agent.times.append(t)
        agent.samples.append(batch.sample_count)
        agent.values.append(array.array("d", cpu + read + write + rss))
        agent.ended.append(ended)
    return agent


# -- servers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench: {what} exited at start:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit(f"bench: {what} not healthy in 90 s:\n{log.read_text()[-3000:]}")


def start_afmon(
    db_url: str, facility: str, workers: int, rate: float, workdir: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "AFMON_PORT": str(port),
        "AFMON_DATABASE_URL": db_url,
        "AFMON_FACILITY_TOKENS": json.dumps({facility: TOKEN}),
        "AFMON_DASHBOARD": "false",
        "AFMON_LOG_LEVEL": "warning",
        "AFMON_INGEST_RATE_PER_AGENT": str(rate),
    }
    cmd = [sys.executable, "-m", "afmon.aggregator.cli", "serve"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    log = workdir / "afmon.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(f"{url}/healthz", proc, log, "afmon serve")
    return proc, url


def start_vm(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("victoria-metrics")
    if binary is None:
        sys.exit("bench: victoria-metrics is needed (Debian package victoria-metrics), or --no-vm")
    port = free_port()
    log = workdir / "vm.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [binary, f"-storageDataPath={workdir / 'vm'}", f"-httpListenAddr=127.0.0.1:{port}"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(f"{url}/health", proc, log, "victoria-metrics")
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Target:
    """Where batches go and what counts as acknowledged."""

    name: str
    url: str
    headers: dict[str, str]
    wire_bodies: bool  # afmon: the wire batch; VictoriaMetrics: its line protocol

    def body(self, agent: Agent, k: int) -> bytes:
        return agent.bodies[k] if self.wire_bodies else agent.vm_bodies[k]


def afmon_target(url: str) -> Target:
    return Target(
        "afmon",
        f"{url}/api/v1/ingest",
        {
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": wire.CONTENT_TYPE,
            "Content-Encoding": "gzip",
        },
        True,
    )


def vm_target(url: str) -> Target:
    return Target("VM", f"{url}/api/v2/write?precision=ms", {"Content-Encoding": "gzip"}, False)


# -- sending ----------------------------------------------------------------------------------


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    lost: int = 0  # batches given up (refused for good, or MAX_ATTEMPTS failures)
    duplicates: int = 0
    stale: int = 0
    first_error: str | None = None

    def error(self, why: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = why


async def send(
    client: httpx.AsyncClient, target: Target, agent: Agent, k: int, stats: Stats, due: float
) -> None:
    """POST batch k of the agent until it is acknowledged, as the agent's push loop does;
    record its latency from `due` (perf_counter time)."""
    body = target.body(agent, k)
    delay = 0.2
    for _attempt in range(MAX_ATTEMPTS):
        try:
            r = await client.post(target.url, content=body, headers=target.headers)
        except httpx.HTTPError as exc:
            stats.error(f"{target.name}: {exc!r}")
            retry_after = ""
        else:
            if 200 <= r.status_code < 300:
                if target.wire_bodies:
                    answer = r.json()
                    stats.stale += answer.get("stale_samples", 0)
                    if answer.get("status") == "duplicate":
                        stats.duplicates += 1
                agent.acked[target.name][k] = 1
                stats.latencies.append(time.perf_counter() - due)
                return
            stats.error(f"{target.name}: HTTP {r.status_code} {r.text[:300]}")
            if r.status_code in PERMANENT:
                stats.lost += 1
                return
            retry_after = r.headers.get("Retry-After", "")
        wait = delay * (0.5 + 0.5 * random.random())  # jitter, as the agent does
        if retry_after.strip().isdigit():
            wait = max(wait, float(retry_after))
        await asyncio.sleep(wait)
        delay = min(delay * 2, 5.0)
    stats.lost += 1


def client_for(concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(timeout=120, limits=limits)


async def warm_up(target: Target, agents: list[Agent]) -> None:
    """Each agent's first batch, 16 at a time, untimed: the fleet was running before."""
    stats, sem = Stats(), asyncio.Semaphore(16)
    async with client_for(16) as client:

        async def one(agent: Agent) -> None:
            async with sem:
                await send(client, target, agent, 0, stats, time.perf_counter())

        await asyncio.gather(*(one(a) for a in agents))
    if stats.lost:
        sys.exit(f"bench: warm-up batches refused by {target.name}: {stats.first_error}")


async def back_to_back(target: Target, agents: list[Agent]) -> tuple[Stats, float]:
    """Every agent posts its batches 1.. one after the other, all agents at once (closed loop,
    catch-up). Returns the stats and the seconds until the last agent is done."""
    stats = Stats()
    async with client_for(len(agents)) as client:

        async def run(agent: Agent) -> None:
            for k in range(1, len(agent.bodies)):
                await send(client, target, agent, k, stats, time.perf_counter())

        started = time.perf_counter()
        await asyncio.gather(*(run(a) for a in agents))
        return stats, time.perf_counter() - started


async def paced(target: Target, agents: list[Agent], interval: float) -> tuple[Stats, float]:
    """Every agent posts batch k at its phase + (k-1) x interval (open loop)."""
    stats = Stats()
    async with client_for(len(agents)) as client:
        t0 = time.perf_counter() + 0.5

        async def run(i: int, agent: Agent) -> None:
            phase = t0 + i * interval / len(agents)
            for k in range(1, len(agent.bodies)):
                due = phase + (k - 1) * interval
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                await send(client, target, agent, k, stats, due)

        await asyncio.gather(*(run(i, a) for i, a in enumerate(agents)))
        return stats, time.perf_counter() - t0


# -- the table --------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    server: str
    batches: int
    samples: int
    seconds: float
    stats: Stats
    interval: float

    @property
    def rate(self) -> float:
        return self.batches / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        lat = sorted(self.stats.latencies)
        if not lat:
            return math.nan
        return lat[min(len(lat) - 1, max(0, math.ceil(q * len(lat)) - 1))] * 1000


def print_table(rows: list[Row], interval: float) -> None:
    head = (
        f"{'scenario':<26} {'server':<6} {'batches':>8} {'seconds':>8} {'batches/s':>10} "
        f"{'samples/s':>10} {f'agents at {interval:g} s':>16} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>7} {'afmon/VM':>10}"
    )
    print(head)
    print("-" * len(head))
    by_key = {(r.scenario, r.server): r for r in rows}
    for r in rows:
        ratio = ""
        vm = by_key.get((r.scenario, "VM"))
        if r.server != "VM" and vm is not None:
            if r.scenario.startswith("open"):  # paced: the same rate; compare the tail
                ratio = f"p99 x{r.pct(0.99) / vm.pct(0.99):.1f}" if vm.pct(0.99) else ""
            elif vm.rate:
                ratio = f"{r.rate / vm.rate:.2f}"
        errors = f"{r.stats.errors}" + (f" ({r.stats.lost} lost)" if r.stats.lost else "")
        print(
            f"{r.scenario:<26} {r.server:<6} {r.batches:>8,} {r.seconds:>8.1f} {r.rate:>10,.0f} "
            f"{r.samples / r.seconds if r.seconds else 0:>10,.0f} {r.rate * interval:>16,.0f} "
            f"{r.pct(0.5):>8.1f} {r.pct(0.99):>8.1f} {errors:>7} {ratio:>10}"
        )
    print(
        "afmon/VM: batches/s of afmon over VictoriaMetrics' (closed, catch-up: capacity); open "
        "loop: both carry the same paced fleet, so afmon's p99 over VictoriaMetrics' instead."
    )
    for r in rows:
        if r.stats.first_error:
            print(f"first error of {r.scenario} / {r.server}: {r.stats.first_error}")


# -- the check against the truth --------------------------------------------------------------

RESOURCES = (
    "cpu_seconds",
    "cpu_hs23_seconds",
    "io_read_bytes",
    "io_write_bytes",
    "memory_byte_seconds",
    "session_seconds",
    "sessions",
)


def truth(agents: list[Agent], server: str, users: int) -> dict[str, float]:
    """What the ledger must hold for the batches the server acknowledged (docs/accounting.md)."""
    tot = dict.fromkeys(RESOURCES, 0.0)
    tot["samples"] = tot["batches"] = tot["ended sessions"] = 0.0
    for a in agents:
        first = last = None
        prev_t = 0.0
        ended: set[str] = set()
        for k, ok in enumerate(a.acked[server]):
            if not ok:
                continue
            tot["batches"] += 1
            tot["samples"] += a.samples[k]
            vals, t = a.values[k], a.times[k]
            if last is not None and t - prev_t <= GAUGE_MAX_GAP:  # memory held since then
                tot["memory_byte_seconds"] += sum(last[3 * users : 4 * users]) * (t - prev_t)
            if first is None:
                first = vals  # the baseline
            last, prev_t = vals, t
            for sid, began, end in a.ended[k]:
                if sid not in ended:
                    ended.add(sid)
                    tot["session_seconds"] += end - began
                    tot["sessions"] += 1
        if first is None or last is None:
            continue
        tot["ended sessions"] += len(ended)
        for i, resource_name in enumerate(("cpu_seconds", "io_read_bytes", "io_write_bytes")):
            part = slice(i * users, (i + 1) * users)
            grown = sum(last[part]) - sum(first[part])
            tot[resource_name] += grown
            if i == 0:
                tot["cpu_hs23_seconds"] += grown * a.hs23
    return tot


def ledger(db_url: str, facility: str) -> tuple[dict[str, float], dict[str, float]]:
    """What the server's database holds for the facility, and the daily rollup's totals."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    f = {"f": facility}
    try:
        with engine.connect() as c:
            got = {
                r: float(v)
                for r, v in c.execute(
                    text("SELECT resource, SUM(amount) FROM usage WHERE facility = :f GROUP BY 1"),
                    f,
                )
            }
            day = {
                r: float(v)
                for r, v in c.execute(
                    text(
                        "SELECT resource, SUM(amount) FROM usage_day WHERE facility = :f GROUP BY 1"
                    ),
                    f,
                )
            }
            got["samples"] = float(
                c.execute(
                    text(
                        "SELECT COUNT(*) FROM sample JOIN series ON series.id = sample.series_id "
                        "WHERE series.facility = :f"
                    ),
                    f,
                ).scalar_one()
            )
            got["batches"] = float(
                c.execute(
                    text("SELECT COUNT(*) FROM applied_batch WHERE facility = :f"), f
                ).scalar_one()
            )
            got["ended sessions"] = float(
                c.execute(
                    text(
                        "SELECT COUNT(*) FROM event WHERE facility = :f AND kind = 'session' "
                        'AND "end" IS NOT NULL'
                    ),
                    f,
                ).scalar_one()
            )
    finally:
        engine.dispose()
    return got, day


def same(a: float, b: float) -> bool:
    """Equal but for float rounding in long sums (one sample lost or doubled is ~1e-6)."""
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1.0)


def check(expected: dict[str, float], got: dict[str, float], day: dict[str, float]) -> bool:
    ok = True
    print(f"\n{'ledger check':<22} {'sent (truth)':>24} {'afmon holds':>24}")
    for key, want in expected.items():
        have = got.get(key, 0.0)
        good = same(want, have)
        ok &= good
        print(f"{key:<22} {want:>24,.2f} {have:>24,.2f}  {'ok' if good else 'MISMATCH'}")
    extra = sorted(set(got) - set(expected))
    if extra:
        ok = False
        print(f"unexpected ledger resources: {', '.join(extra)}  MISMATCH")
    for r in RESOURCES:
        if not same(got.get(r, 0.0), day.get(r, 0.0)):
            ok = False
            print(f"daily rollup of {r}: {day.get(r, 0.0):,.2f}  MISMATCH")
    return ok


def vm_stored(url: str, since: float) -> int:
    httpx.get(f"{url}/internal/force_flush", timeout=30)
    hours = math.ceil((time.time() - since) / 3600) + 1
    r = httpx.get(
        f"{url}/api/v1/query",
        params={
            "query": f'sum(count_over_time({{__name__=~"afmon_.*"}}[{hours}h]))',
            "latency_offset": "1ms",
        },
        timeout=120,
    )
    result = r.json()["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = DEFAULTS
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of under a minute: "
        + ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in QUICK.items())
        + " (options given explicitly win)",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"which to run, comma-separated, of {', '.join(SCENARIOS)} [all]",
    )
    p.add_argument(
        "--users",
        type=int,
        help=f"local accounts per node; 5 samples each, plus 6 node and agent samples per "
        f"batch [{d['users']}: 241 samples]",
    )
    p.add_argument(
        "--interval",
        type=float,
        help=f"seconds between an agent's batches: the time step of the samples, the open "
        f"loop's pace and the 'agents at N s' column (batches/s x interval) [{d['interval']:g}]",
    )
    p.add_argument(
        "--closed-agents",
        type=int,
        help=f"agents posting concurrently in the closed loop [{d['closed_agents']}]",
    )
    p.add_argument(
        "--closed-batches",
        type=int,
        help=f"batches each closed-loop agent posts back to back [{d['closed_batches']}]",
    )
    p.add_argument(
        "--open-agents",
        type=int,
        help=f"fleet size of the open loop, each agent paced at one batch per interval "
        f"[{d['open_agents']}]",
    )
    p.add_argument(
        "--open-seconds",
        type=float,
        help=f"how long the open loop runs (batches per agent = seconds / interval) "
        f"[{d['open_seconds']:g}]",
    )
    p.add_argument(
        "--catchup-agents",
        type=int,
        help=f"agents flushing their spool at once in the catch-up [{d['catchup_agents']}]",
    )
    p.add_argument(
        "--catchup-minutes",
        type=float,
        help=f"minutes of batches in each agent's spool (batches = minutes x 60 / interval) "
        f"[{d['catchup_minutes']:g}]",
    )
    p.add_argument(
        "--database",
        metavar="URL",
        help="afmon's database: a SQLAlchemy URL such as "
        "postgresql+psycopg://postgres@127.0.0.1:5432/afmon_load (created if missing, and "
        "then dropped at the end; an existing one is kept, the bench writes its own facility) "
        "[a fresh SQLite file in a temporary directory]",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="afmon serve --workers: worker processes on one port (PostgreSQL only) [1]",
    )
    p.add_argument(
        "--rate-limit",
        type=float,
        default=100_000.0,
        help="AFMON_INGEST_RATE_PER_AGENT of the server, batches/s per agent; raised from "
        "the server's default of 20 so that the closed loop measures the server, not the "
        "limiter [100000]",
    )
    p.add_argument(
        "--no-vm", action="store_true", help="skip VictoriaMetrics (afmon only, no ratio)"
    )
    args = p.parse_args(argv)
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, QUICK.get(key, value) if args.quick else value)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = set(args.scenarios) - set(SCENARIOS)
    if bad or not args.scenarios:
        p.error(f"--scenarios: choose among {', '.join(SCENARIOS)}")
    for key in DEFAULTS:
        if getattr(args, key) <= 0:
            p.error(f"--{key.replace('_', '-')} must be positive")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.workers > 1 and not (args.database or "").startswith("postgresql"):
        p.error("--workers > 1 needs PostgreSQL (--database postgresql+psycopg://...)")
    return args


def plan(args: argparse.Namespace) -> list[tuple[str, str, int, int]]:
    """(scenario, label, agents, batches per agent including the warm-up one)."""
    out = []
    for s in args.scenarios:
        if s == "closed":
            label = f"closed {args.closed_agents} agents"
            out.append((s, label, args.closed_agents, args.closed_batches + 1))
        elif s == "open":
            n = max(1, round(args.open_seconds / args.interval))
            label = f"open {args.open_agents} agents"
            out.append((s, label, args.open_agents, n + 1))
        else:
            n = max(1, round(args.catchup_minutes * 60 / args.interval))
            label = f"catch-up {args.catchup_agents}x{args.catchup_minutes:g} min"
            out.append((s, label, args.catchup_agents, n + 1))
    return out


class PostgresDatabase:
    """--database on PostgreSQL: create the database when it does not exist, drop it after."""

    def __init__(self, url: str) -> None:
        from sqlalchemy.engine import make_url

        u = make_url(url)
        self.name = u.database
        self.admin = u.set(drivername="postgresql", database="postgres").render_as_string(
            hide_password=False
        )
        self.created = False

    def __enter__(self) -> PostgresDatabase:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.name,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.name}"')
                self.created = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.created:
            import psycopg

            with psycopg.connect(self.admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def run_async(coro: Callable[[], Awaitable[T]]) -> T:
    try:
        from uvloop import new_event_loop  # as the server's uvicorn uses
    except ImportError:
        new_event_loop = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro())  # type: ignore[arg-type]


def measure(
    args: argparse.Namespace,
    steps: list[tuple[str, str, int, int]],
    fleets: dict[str, list[Agent]],
    db_url: str,
    facility: str,
    workdir: Path,
    since: float,
) -> tuple[list[Row], int | None]:
    """Start the servers, run every scenario against each, stop them. Returns the table's
    rows and the samples VictoriaMetrics holds at the end (None without it)."""
    rows: list[Row] = []
    with contextlib.ExitStack() as servers:
        proc, afmon_url = start_afmon(db_url, facility, args.workers, args.rate_limit, workdir)
        servers.callback(stop, proc)
        targets = [afmon_target(afmon_url)]
        vm_url = ""
        if not args.no_vm:
            proc, vm_url = start_vm(workdir)
            servers.callback(stop, proc)
            targets.append(vm_target(vm_url))
        print(
            f"afmon: {'PostgreSQL' if db_url.startswith('postgresql') else 'SQLite'}, "
            f"{args.workers} worker(s), facility {facility}"
            + ("" if args.no_vm else "; VictoriaMetrics: fresh, default flags"),
            file=sys.stderr,
        )
        for scenario, label, _n, _b in steps:
            fleet = fleets[scenario]
            for target in targets:
                run_async(lambda t=target, f=fleet: warm_up(t, f))
                if scenario == "open":
                    stats, seconds = run_async(lambda t=target, f=fleet: paced(t, f, args.interval))
                else:
                    stats, seconds = run_async(lambda t=target, f=fleet: back_to_back(t, f))
                acked = [(a.samples[k], a.acked[target.name][k]) for a in fleet
                         for k in range(1, len(a.bodies))]  # fmt: skip
                batches = sum(ok for _n, ok in acked)
                samples = sum(n for n, ok in acked if ok)
                rows.append(
                    Row(label, target.name, batches, samples, seconds, stats, args.interval)
                )
                print(
                    f"  {label} / {target.name}: {batches:,} batches in {seconds:.1f} s",
                    file=sys.stderr,
                )
        return rows, (None if args.no_vm else vm_stored(vm_url, since))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:  # one connection per agent
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    run_id = secrets.token_hex(3)
    facility = f"load-{run_id}"
    steps = plan(args)
    longest = max(n for *_, n in steps)
    # a timeline in the past (within every retention), whole hours, the same for all agents
    start = float(int((time.time() - longest * args.interval - 7200) // 3600 * 3600))

    prep = time.perf_counter()
    fleets: dict[str, list[Agent]] = {}
    for scenario, _label, n_agents, n_batches in steps:
        fleets[scenario] = [
            make_agent(
                scenario,
                i,
                n_batches,
                users=args.users,
                start=start,
                interval=args.interval,
                facility=facility,
                run_id=run_id,
            )
            for i in range(n_agents)
        ]
    every = [a for fleet in fleets.values() for a in fleet]
    n_bodies = sum(len(a.bodies) for a in every)
    wire_bytes = sum(len(b) for a in every for b in a.bodies)
    vm_bytes = sum(len(b) for a in every for b in a.vm_bodies)
    per_batch = every[0].samples[1] if len(every[0].samples) > 1 else every[0].samples[0]
    print(
        f"{n_bodies:,} batches of {per_batch} samples ({args.users} users x 5 metrics + 6 node "
        f"and agent series, a session start every {SESSION_EVERY} batches, an end "
        f"{SESSION_LENGTH} batches later) prepared in {time.perf_counter() - prep:.1f} s; "
        f"bodies average {wire_bytes / n_bodies / 1024:.1f} KiB wire JSON, "
        f"{vm_bytes / n_bodies / 1024:.1f} KiB line protocol (gzip'd)",
        file=sys.stderr,
    )
    for a in every:
        a.acked = {s: bytearray(len(a.bodies)) for s in ["afmon"] + ["VM"] * (not args.no_vm)}

    with contextlib.ExitStack() as cleanup:
        workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="afmon-load-")))
        db_url = args.database or f"sqlite:///{workdir}/afmon.sqlite"
        db_kind = "PostgreSQL" if db_url.startswith("postgresql") else "SQLite"
        if db_kind == "PostgreSQL":
            cleanup.enter_context(PostgresDatabase(db_url))
        rows, stored_vm = measure(args, steps, fleets, db_url, facility, workdir, start)
        got, day = ledger(db_url, facility)  # read once the servers have stopped

    print()
    print(
        f"afmon on {db_kind}, {args.workers} worker(s); {per_batch} samples per batch; "
        f"{os.cpu_count()} CPUs"
    )
    print_table(rows, args.interval)
    expected = truth(every, "afmon", args.users)
    ok = check(expected, got, day)
    stale = sum(r.stats.stale for r in rows if r.server == "afmon")
    duplicates = sum(r.stats.duplicates for r in rows if r.server == "afmon")
    print(
        f"afmon answered {stale} stale samples and {duplicates} duplicate batches "
        "(retries of batches it had applied)"
    )
    if stale:
        ok = False
    if stored_vm is not None:
        sent_vm = truth(every, "VM", args.users)["samples"]
        print(
            f"VictoriaMetrics holds {stored_vm:,} samples of {sent_vm:,.0f} acknowledged "
            f"({'ok' if stored_vm == sent_vm else 'differs: not counted in the exit status'})"
        )
    print(
        f"\nledger check: {'PASSED' if ok else 'FAILED'}: "
        + (
            "every acknowledged sample and event counted once"
            if ok
            else "the server's ledger differs from what was sent"
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
