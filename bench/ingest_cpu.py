"""The server's CPU per agent batch, in one process: what bench/load.py's capacity is made of.

The same batches as bench/load.py (`make_agent`: 241 one-sample series and the session events
per batch, gzip'd wire JSON) go through what `POST /api/v1/ingest` does with them, without
HTTP: `wire.decode_records`, `Ingestor.judge`, `Ingestor.apply` on a fresh SQLite file
(WAL, synchronous=FULL, as `afmon serve` opens it), one after the other. Each agent's first
batch is applied untimed (its series exist, as in the load bench). Prints the CPU time per
batch by stage and the wall time (which adds the WAL fsync of each commit); `--profile` adds
cProfile's table of the functions by own time.

    python bench/ingest_cpu.py                    # 20 agents x 16 batches
    python bench/ingest_cpu.py --profile          # and where the time goes
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import pstats
import sys
import tempfile
import time
from pathlib import Path

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.identity.accounts import IdentityMap
from afmon.aggregator.ingest.apply import Ingestor
from afmon.aggregator.store.db import create_schema, make_engine
from afmon.collectors import wire


def load_bench():  # noqa: ANN201  (bench/load.py, loaded by path: bench is no package)
    spec = importlib.util.spec_from_file_location("bench_load", Path(__file__).with_name("load.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["bench_load"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=20, help="simulated agents [20]")
    p.add_argument("--batches", type=int, default=16, help="batches per agent [16]")
    p.add_argument("--users", type=int, default=47, help="accounts per node [47: 241 series]")
    p.add_argument("--profile", action="store_true", help="print cProfile's table too")
    args = p.parse_args(argv)
    load = load_bench()
    start = float(int((time.time() - args.batches * 10 - 7200) // 3600 * 3600))
    agents = [
        load.make_agent("closed", i, args.batches, users=args.users, start=start, interval=10.0,
                        facility="cpu", run_id="cpu")
        for i in range(args.agents)
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="afmon-ingest-cpu-") as tmp:
        url = f"sqlite:///{tmp}/afmon.sqlite"
        engine = make_engine(url)
        create_schema(engine)
        settings = ServerSettings(database_url=url, facility_tokens={"cpu": "t" * 32})
        ingestor = Ingestor(engine, IdentityMap(engine), settings)
        stages = {"decode": 0.0, "judge": 0.0, "apply": 0.0}

        def one(body: bytes) -> None:
            t0 = time.process_time()
            batch, malformed = wire.decode_records(body, max_decompressed=1 << 26)
            t1 = time.process_time()
            refused = [*malformed, *ingestor.judge(batch)]
            t2 = time.process_time()
            result = ingestor.apply(batch, refused)
            t3 = time.process_time()
            if result.status != "applied" or result.refused:
                sys.exit(f"bench: a batch was not applied whole: {result}")
            stages["decode"] += t1 - t0
            stages["judge"] += t2 - t1
            stages["apply"] += t3 - t2

        for agent in agents:
            one(agent.bodies[0])
        stages.update(decode=0.0, judge=0.0, apply=0.0)
        bodies = [a.bodies[k] for k in range(1, args.batches) for a in agents]
        profiler = cProfile.Profile() if args.profile else None
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        for body in bodies:
            one(body)
        if profiler:
            profiler.disable()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        engine.dispose()
    n = len(bodies)
    series = len(wire.decode(agents[0].bodies[0]).series)
    print(f"{n} batches of {series} series, one process, SQLite (synchronous=FULL)")
    print(f"{'stage':<10} {'CPU ms/batch':>12}")
    for name, seconds in stages.items():
        print(f"{name:<10} {seconds * 1000 / n:>12.2f}")
    print(f"{'total CPU':<10} {cpu * 1000 / n:>12.2f}")
    print(f"{'wall':<10} {wall * 1000 / n:>12.2f}   ({n / wall:,.0f} batches/s, one at a time)")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
