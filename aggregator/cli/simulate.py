"""`afmon simulate`: post a simulated facility's batches to a running server."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def cmd_simulate(args: argparse.Namespace) -> int:
    import httpx

    from afmon.collectors.simulator import FacilitySimulator, Poster, backfill

    sim = FacilitySimulator(
        facility=args.facility,
        nodes=args.nodes,
        members_per_vo=args.members_per_vo,
        seed=args.seed,
        rich=not args.basic,
    )
    if args.identity_out:
        Path(args.identity_out).write_text(sim.identity_toml())
        print(f"identity map for the simulated members written to {args.identity_out}")
    poster = Poster(args.url, args.token)
    now = time.time()
    try:
        n = backfill(sim, poster, now - args.hours * 3600, now)
        print(f"posted {n} batches covering {args.hours} h")
        while args.live:
            time.sleep(sim.interval)
            for batch in sim.batches(now, time.time(), ticks_per_batch=1):
                poster.post(batch)
    except (httpx.HTTPError, RuntimeError) as exc:
        sys.exit(f"afmon simulate: cannot post to {args.url}: {exc}")
    except KeyboardInterrupt:
        return 0
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sim = sub.add_parser("simulate", help="post a simulated facility's batches to a server")
    sim.add_argument("--url", default="http://127.0.0.1:8600", help="aggregator URL")
    sim.add_argument(
        "--token",
        default=os.environ.get("AFMON_TOKEN", ""),
        help="the facility's agent token (AFMON_TOKEN)",
    )
    sim.add_argument("--facility", default="demo-af")
    sim.add_argument("--nodes", type=int, default=8)
    sim.add_argument("--members-per-vo", type=int, default=5)
    sim.add_argument("--hours", type=float, default=24.0, help="history to simulate")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--live", action="store_true", help="keep going in real time afterwards")
    sim.add_argument(
        "--basic",
        action="store_true",
        help="only sessions, CPU, memory and IO (default: also spawn waits, Dask, batch jobs, "
        "GPUs and data access)",
    )
    sim.add_argument("--identity-out", help="write the simulated members' identity map here")
    sim.set_defaults(func=cmd_simulate)
