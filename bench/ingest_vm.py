"""Ingest throughput into VictoriaMetrics: line protocol straight in, against through afmon.

In one run, on the same samples, each into its own fresh VictoriaMetrics:
  (a) direct: afmon's own points (tsdb_influx.batch_lines, millisecond line protocol),
      gzip'd, POSTed to VictoriaMetrics' /api/v2/write, one request per batch;
  (b) afmon: the same batches as wire JSON POSTed to a real `afmon serve` (SQLite, no
      dashboard) with AFMON_TSDB_URL set, timed until its outbox is drained into
      VictoriaMetrics (so both sides end with the samples in VictoriaMetrics).
Prints samples per second for both and their ratio; checks VictoriaMetrics holds them all.

    python bench/ingest_vm.py [--batches 50] [--series 50] [--samples 100]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
import ingest  # noqa: E402
from ingest import serve_and_post  # noqa: E402

from aggregator.tsdb_influx import batch_lines  # noqa: E402
from collectors import wire  # noqa: E402


def start_vm(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("victoria-metrics") or sys.exit("bench: victoria-metrics is needed")
    port = ingest.free_port()
    proc = subprocess.Popen(
        [binary, f"-storageDataPath={data}", f"-httpListenAddr=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("bench: victoria-metrics did not start")


def stored_samples(url: str) -> int:
    httpx.get(f"{url}/internal/force_flush", timeout=10)
    r = httpx.get(
        f"{url}/api/v1/query",
        params={
            "query": 'sum(count_over_time({__name__=~"afmon_.*"}[30d]))',
            "latency_offset": "1ms",
        },
        timeout=60,
    )
    result = r.json()["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def direct(batches: list[wire.Batch], url: str) -> float:
    bodies = []
    for b in batches:
        ids = list(range(1, len(b.series) + 1))
        samples = [
            (sid, t, v)
            for sid, s in zip(ids, b.series, strict=True)
            for t, v in zip(s.times, s.values, strict=True)
        ]
        bodies.append(gzip.compress(batch_lines(b, ids, samples).encode(), compresslevel=5))
    headers = {"Content-Encoding": "gzip"}
    with httpx.Client(timeout=120) as client:
        started = time.perf_counter()
        for body in bodies:
            r = client.post(f"{url}/api/v2/write?precision=ms", content=body, headers=headers)
            r.raise_for_status()
        elapsed = time.perf_counter() - started
    return sum(b.sample_count for b in batches) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--series", type=int, default=50, help="series per batch")
    parser.add_argument("--samples", type=int, default=100, help="samples per series per batch")
    args = parser.parse_args()
    # within VictoriaMetrics' default retention (one month): end an hour ago
    span = args.batches * args.samples * 10
    ingest.START = float(int(time.time()) - span - 3600)
    batches = ingest.make_batches(args.batches, args.series, args.samples)
    total = sum(b.sample_count for b in batches)
    print(f"{total:,} samples in {len(batches)} batches", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        vm_a, url_a = start_vm(Path(tmp) / "vm-a")
        vm_b, url_b = start_vm(Path(tmp) / "vm-b")
        try:
            direct_rate = direct(batches, url_a)
            db = Path(tmp) / "afmon.sqlite"

            def drained() -> bool:
                with sqlite3.connect(db) as conn:
                    return conn.execute("SELECT COUNT(*) FROM tsdb_outbox").fetchone()[0] == 0

            afmon_rate = serve_and_post(
                batches,
                {
                    "AFMON_DATABASE_URL": f"sqlite:///{db}",
                    "AFMON_TSDB_URL": url_b,
                    "AFMON_TSDB_FLUSH_SECONDS": "0.05",
                },
                until=drained,
            )
            stored = (stored_samples(url_a), stored_samples(url_b))
        finally:
            for p in (vm_a, vm_b):
                p.terminate()
                p.wait(timeout=30)
    print(f"{'path':<58} {'samples/s':>12}")
    print(f"{'(a) line protocol straight into VictoriaMetrics':<58} {direct_rate:>12,.0f}")
    print(
        f"{'(b) afmon: HTTP -> store + ledger -> outbox -> VictoriaMetrics':<58} "
        f"{afmon_rate:>12,.0f}"
    )
    print(f"{'ratio (b)/(a)':<58} {afmon_rate / direct_rate:>12.2f}")
    print(f"samples in VictoriaMetrics: (a) {stored[0]:,}  (b) {stored[1]:,}  of {total:,}")


if __name__ == "__main__":
    main()
