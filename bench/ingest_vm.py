"""Ingest throughput into VictoriaMetrics: line protocol straight in, against through afmon.

In one run, on the same samples, each into its own fresh VictoriaMetrics:
  (a) direct: afmon's own points (store.tsdb.line_protocol, millisecond line protocol),
      gzip'd, POSTed to VictoriaMetrics' /api/v2/write, one request per batch;
  (b) afmon: the same batches as wire JSON POSTed to a real `afmon serve` (SQLite, no
      dashboard) with AFMON_TSDB_URL and AFMON_TSDB_RAW_ONLY set, timed until its outbox is
      drained into VictoriaMetrics (so both sides end with the samples in VictoriaMetrics);
  (c) the same as (b), but raw samples are kept in SQLite's `sample` table too (the default).
Prints samples per second of each and the ratios; checks VictoriaMetrics holds them all.

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

from afmon.aggregator.store.tsdb import line_protocol, series_head  # noqa: E402
from afmon.collectors import wire  # noqa: E402


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
    bodies = [
        gzip.compress(
            line_protocol([(series_head(b, s), s.times, s.values) for s in b.series]),
            compresslevel=5,
        )
        for b in batches
    ]
    headers = {"Content-Encoding": "gzip"}
    with httpx.Client(timeout=120) as client:
        started = time.perf_counter()
        for body in bodies:
            r = client.post(f"{url}/api/v2/write?precision=ms", content=body, headers=headers)
            r.raise_for_status()
        elapsed = time.perf_counter() - started
    return sum(b.sample_count for b in batches) / elapsed


def through_afmon(batches: list[wire.Batch], db: Path, vm_url: str, raw_only: bool) -> float:
    """Samples/s through `afmon serve` (SQLite) into VictoriaMetrics, until the outbox is
    drained."""

    def drained() -> bool:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT COUNT(*) FROM tsdb_outbox").fetchone()[0] == 0

    env = {
        "AFMON_DATABASE_URL": f"sqlite:///{db}",
        "AFMON_TSDB_URL": vm_url,
        "AFMON_TSDB_FLUSH_SECONDS": "0.05",
        "AFMON_TSDB_RAW_ONLY": str(raw_only).lower(),
    }
    return serve_and_post(batches, env, until=drained)


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
        vms = [start_vm(Path(tmp) / f"vm-{x}") for x in "abc"]
        try:
            direct_rate = direct(batches, vms[0][1])
            raw_only_rate = through_afmon(batches, Path(tmp) / "b.sqlite", vms[1][1], True)
            both_rate = through_afmon(batches, Path(tmp) / "c.sqlite", vms[2][1], False)
            stored = [stored_samples(url) for _proc, url in vms]
        finally:
            for proc, _url in vms:
                proc.terminate()
                proc.wait(timeout=30)
    print(f"{'path':<56} {'samples/s':>12}")
    print(f"{'(a) line protocol straight into VictoriaMetrics':<56} {direct_rate:>12,.0f}")
    print(f"{'(b) afmon -> VictoriaMetrics, raw samples only there':<56} {raw_only_rate:>12,.0f}")
    print(f"{'(c) afmon -> VictoriaMetrics, raw samples in SQLite too':<56} {both_rate:>12,.0f}")
    print(f"{'ratio (b)/(a)':<56} {raw_only_rate / direct_rate:>12.2f}")
    print(f"{'ratio (c)/(a)':<56} {both_rate / direct_rate:>12.2f}")
    print(
        f"samples in VictoriaMetrics: (a) {stored[0]:,}  (b) {stored[1]:,}  (c) {stored[2]:,}  "
        f"of {total:,}"
    )


if __name__ == "__main__":
    main()
