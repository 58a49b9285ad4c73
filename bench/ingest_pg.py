"""Ingest throughput on PostgreSQL: afmon over HTTP against plain COPY, on the same rows.

In one run, each in a fresh database on the same PostgreSQL:
  (a) floor: psycopg 3 `COPY sample FROM STDIN` into a table like afmon's raw-sample table
      (same primary key), one transaction per batch;
  (b) afmon: the same batches, gzip'd wire JSON, POSTed to a real `afmon serve` process on
      PostgreSQL (no dashboard): decode, de-duplicate, identities, samples (by COPY), ledger.
Prints samples per second for both and their ratio.

    python bench/ingest_pg.py [--batches 50] [--series 50] [--samples 100] [--admin-url URL]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parent))
from ingest import make_batches, serve_and_post  # noqa: E402

from afmon.collectors import wire  # noqa: E402

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def floor(batches: list[wire.Batch], url: str) -> float:
    rows_per_batch = [
        [
            (sid, t, v)
            for sid, s in enumerate(b.series, 1)
            for t, v in zip(s.times, s.values, strict=True)
        ]
        for b in batches
    ]
    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TABLE sample (series_id INTEGER NOT NULL, time FLOAT NOT NULL, "
            "value FLOAT NOT NULL, PRIMARY KEY (series_id, time))"
        )
        conn.commit()
        started = time.perf_counter()
        for rows in rows_per_batch:
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy("COPY sample (series_id, time, value) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        elapsed = time.perf_counter() - started
    return sum(map(len, rows_per_batch)) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--series", type=int, default=50, help="series per batch")
    parser.add_argument("--samples", type=int, default=100, help="samples per series per batch")
    parser.add_argument("--admin-url", default=ADMIN, help="a PostgreSQL database to CREATE from")
    args = parser.parse_args()
    batches = make_batches(args.batches, args.series, args.samples)
    total = sum(b.sample_count for b in batches)
    print(f"{total:,} samples in {len(batches)} batches", file=sys.stderr)
    names = [f"afmon_bench_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    base = args.admin_url.rsplit("/", 1)[0]
    with psycopg.connect(args.admin_url, autocommit=True) as admin:
        for n in names:
            admin.execute(f'CREATE DATABASE "{n}"')
        try:
            floor_rate = floor(batches, f"{base}/{names[0]}")
            afmon_url = f"{base.replace('postgresql://', 'postgresql+psycopg://')}/{names[1]}"
            afmon_rate = serve_and_post(batches, {"AFMON_DATABASE_URL": afmon_url})
        finally:
            for n in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')
    print(f"{'path':<52} {'samples/s':>12}")
    print(f"{'(a) PostgreSQL COPY, same rows and key (floor)':<52} {floor_rate:>12,.0f}")
    print(f"{'(b) afmon: HTTP POST -> decode -> store + ledger':<52} {afmon_rate:>12,.0f}")
    print(f"{'ratio (b)/(a)':<52} {afmon_rate / floor_rate:>12.2f}")


if __name__ == "__main__":
    main()
