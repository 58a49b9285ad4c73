"""Ingest throughput: the aggregator over HTTP against the SQLite storage floor.

In one run, on the same rows:
  (a) floor: plain sqlite3 executemany into a table with the same indexes as
      afmon's raw-sample table (WAL, synchronous=FULL as afmon), one transaction per batch;
  (b) afmon: the same batches, gzip'd wire JSON, POSTed over HTTP to a real
      `afmon serve` process (SQLite, no dashboard), which decodes, de-duplicates,
      maps identities, writes the raw samples and updates the ledger.
Prints samples per second for both and their ratio.

    python bench/ingest.py [--batches 100] [--series 50] [--samples 100]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from afmon.collectors import wire

START = 1_790_000_000.0
TOKEN = secrets.token_urlsafe(32)  # a strong one: `afmon serve` refuses weak tokens


def make_batches(n_batches: int, n_series: int, n_samples: int) -> list[wire.Batch]:
    """CPU counters of `n_series` users on one node, `n_samples` 10-s samples per batch."""
    batches = []
    for b in range(n_batches):
        t0 = START + b * n_samples * 10
        times = [t0 + 10 * i for i in range(n_samples)]
        series = [
            wire.Series(
                metric="user_cpu_seconds",
                unit="seconds",
                kind="counter",
                labels={"node": "bench-node", "user": f"user{u:04d}"},
                times=times,
                values=[(b * n_samples + i) * 2.5 for i in range(n_samples)],
                created=START,
            )
            for u in range(n_series)
        ]
        batches.append(
            wire.Batch(
                version=wire.WIRE_VERSION,
                agent_id="bench-agent",
                facility="bench",
                node="bench-node",
                seq=b + 1,
                sent_at=t0,
                series=series,
            )
        )
    return batches


def floor(batches: list[wire.Batch], path: Path) -> float:
    """Samples/s of plain executemany with afmon's sample table and index."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # as afmon: durable before acknowledged
    conn.execute(
        "CREATE TABLE sample (series_id INTEGER NOT NULL, time FLOAT NOT NULL, "
        "value FLOAT NOT NULL, PRIMARY KEY (series_id, time))"
    )
    rows_per_batch = [
        [
            (sid, t, v)
            for sid, s in enumerate(b.series, 1)
            for t, v in zip(s.times, s.values, strict=True)
        ]
        for b in batches
    ]
    started = time.perf_counter()
    for rows in rows_per_batch:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO sample (series_id, time, value) VALUES (?, ?, ?)", rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return sum(map(len, rows_per_batch)) / elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_post(
    batches: list[wire.Batch],
    extra_env: dict[str, str],
    until: Callable[[], bool] | None = None,
) -> float:
    """Samples/s of the batches POSTed to a real `afmon serve` (timed until `until()` is
    true, when given: e.g. until the time-series outbox is drained)."""
    port = free_port()
    env = {
        **os.environ,
        "AFMON_PORT": str(port),
        "AFMON_FACILITY_TOKENS": json.dumps({"bench": TOKEN}),
        "AFMON_DASHBOARD": "false",
        "AFMON_LOG_LEVEL": "warning",
        "AFMON_MAX_FUTURE_SKEW_SECONDS": str(10 * 365 * 86400),
        "AFMON_INGEST_RATE_PER_AGENT": "100000",
        **extra_env,
    }
    server = subprocess.Popen([sys.executable, "-m", "afmon.aggregator.cli", "serve"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=120) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("bench: the afmon server did not start")
                time.sleep(0.2)
            headers = {
                "Authorization": f"Bearer {TOKEN}",
                "Content-Type": wire.CONTENT_TYPE,
                "Content-Encoding": "gzip",
            }
            bodies = [wire.encode(b, compress=True) for b in batches]  # the agent's work
            started = time.perf_counter()
            for body in bodies:
                r = client.post(f"{url}/api/v1/ingest", content=body, headers=headers)
                if r.status_code != 200 or r.json()["status"] != "applied":
                    raise SystemExit(f"bench: batch refused: {r.status_code} {r.text}")
            while until is not None and not until():
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    return sum(b.sample_count for b in batches) / elapsed


def through_afmon(batches: list[wire.Batch], workdir: Path) -> float:
    """Samples/s of the same batches POSTed to a real `afmon serve` process on SQLite."""
    return serve_and_post(batches, {"AFMON_DATABASE_URL": f"sqlite:///{workdir}/afmon.sqlite"})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--series", type=int, default=50, help="series per batch")
    parser.add_argument("--samples", type=int, default=100, help="samples per series per batch")
    args = parser.parse_args()
    batches = make_batches(args.batches, args.series, args.samples)
    total = sum(b.sample_count for b in batches)
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"{total:,} samples in {len(batches)} batches of {batches[0].sample_count:,}",
            file=sys.stderr,
        )
        floor_rate = floor(batches, Path(tmp) / "floor.sqlite")
        afmon_rate = through_afmon(batches, Path(tmp))
    print(f"{'path':<52} {'samples/s':>12}")
    print(f"{'(a) SQLite executemany, same rows and index (floor)':<52} {floor_rate:>12,.0f}")
    print(f"{'(b) afmon: HTTP POST -> decode -> store + ledger':<52} {afmon_rate:>12,.0f}")
    print(f"{'ratio (b)/(a)':<52} {afmon_rate / floor_rate:>12.2f}")


if __name__ == "__main__":
    main()
