"""Dashboard callback latency on a year of ledger: p50/p95 per callback of every page.

Fills a SQLite ledger with `--members` members (4 VOs, 2 facilities) over `--days` days of
hourly rollups, each member busy `--active-hours` hours a day (cpu_seconds,
memory_byte_seconds, session_seconds; plus sessions, latency histograms, nodes and an alert)
and `--waits` JupyterHub starts over the last 30 days (per-wait `spawn` records and their
histograms, as the Interactive page and the facility's SLO tiles read them).
The rows are written directly with executemany: this is a benchmark fixture, not the ingest
path. Then every page's callbacks are POSTed to Dash's `/_dash-update-component` endpoint (the
WSGI app in process, as a browser's request would reach it) with the payloads the browser sends
on page load: the layout's own control values, the principal and the time range. Like the
server once started, the process's start-up heap is frozen out of the garbage collector. Prints
per callback and range the first (cold) call and p50/p95 over `--rounds` more; the goal is
p95 < 200 ms. `--pages` measures only some pages; `--before-after` measures the Interactive
page twice in the same run, with a read of the waits per figure (as it was) and with one read
for all (as it is), and checks that both answer the same bytes.

    python bench/dashboard.py [--members 1000] [--days 365] [--active-hours 4] [--rounds 15]
        [--waits 10000] [--db FILE] [--pages /interactive] [--before-after]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from afmon.aggregator.core import latency
from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.reads import Query
from afmon.aggregator.store.db import create_schema, make_engine, placeholder
from afmon.aggregator.store.rollup import backfill_daily
from afmon.dashboard import app as dash_app
from afmon.dashboard.app import create_dash
from afmon.dashboard.pages import interactive

END = 1_798_761_600  # 2027-01-01 00:00 UTC
NOW = END - 1800.0
VOS = {"atlas": 0.4, "cms": 0.3, "lhcb": 0.2, "dune": 0.1}
GROUPS = 3  # per VO
FACILITIES = ("af-a", "af-b")
RESOURCES = {  # resource -> (unit, amount of one busy hour)
    "cpu_seconds": ("s", 3600.0 * 4),
    "memory_byte_seconds": ("B·s", 3600.0 * 8e9),
    "session_seconds": ("s", 3600.0),
}
RANGES = ("24h", "7d", "30d")


def fill(
    url: str, members: int, days: int, active_hours: int, waits: int = 0, seed: int = 1
) -> int:
    """Write the fixture; returns the number of usage rows."""
    engine = make_engine(url)
    create_schema(engine)
    rng = random.Random(seed)
    vo_names = list(VOS)
    people = []
    for i in range(members):
        vo = rng.choices(vo_names, weights=list(VOS.values()))[0]
        grp = f"/{vo}/g{i % GROUPS}"
        fac = FACILITIES[0] if rng.random() < 0.7 else FACILITIES[1]
        people.append((f"iss-{vo}|m{i:04d}", vo, grp, fac, f"Member {i:04d}"))
    ph = placeholder(engine)
    start = END - days * 86400
    rows = 0
    with engine.begin() as conn:
        raw = conn.connection.driver_connection
        cur = raw.cursor()
        cur.executemany(
            f"INSERT INTO member (id, issuer, subject, vo, grp, display_name, groups) VALUES "
            f"({', '.join([ph] * 7)})",
            [(m, m.split("|")[0], m.split("|")[1], vo, g, n, "[]") for m, vo, g, _f, n in people],
        )
        cur.executemany(
            f"INSERT INTO account (facility, local, member_id, valid_from) VALUES ({ph}, {ph}, "
            f"{ph}, 0)",
            [(f, m.split("|")[1], m) for m, _vo, _g, f, _n in people],
        )
        for day in range(days):
            batch = []
            for m, vo, g, f, _n in people:
                for h in rng.sample(range(24), active_hours):
                    hour = start + day * 86400 + h * 3600
                    for res, (unit, amount) in RESOURCES.items():
                        batch.append((f, vo, g, m, res, hour, amount * rng.random(), unit))
            cur.executemany(f"INSERT INTO usage VALUES ({', '.join([ph] * 8)})", batch)
            rows += len(batch)
            lat = [
                (
                    FACILITIES[0],
                    vo,
                    f"/{vo}/g0",
                    people[0][0],
                    "time_to_session",
                    "default",
                    start + day * 86400 + h * 3600,
                    le,
                    rng.randint(0, 20),
                    5.0 * le,
                )
                for vo in VOS
                for h in range(0, 24, 3)
                for le in (5.0, 10.0, 30.0)
            ]
            cur.executemany(f"INSERT INTO latency VALUES ({', '.join([ph] * 10)})", lat)
        cur.executemany(
            f"INSERT INTO node (facility, node, cpu_cores, memory_bytes, updated) VALUES "
            f"({ph}, {ph}, 64, 274877906944, {ph})",
            [(FACILITIES[i % 2], f"wn-{i:03d}", NOW) for i in range(50)],
        )
        cur.executemany(
            f"INSERT INTO event (facility, kind, id, node, local_user, member_id, start, "
            f'"end", attrs) VALUES ({", ".join([ph] * 9)})',
            [
                (
                    f,
                    "session",
                    f"s-{i}",
                    "wn-000",
                    m.split("|")[1],
                    m,
                    NOW - 3600 * (i % 48),
                    None if i % 10 == 0 else NOW - 60 * (i % 48),
                    "{}",
                )
                for i, (m, _vo, _g, f, _n) in enumerate(people * 5)
            ],
        )
    if waits:
        fill_waits(engine, people, waits, rng)
    with engine.begin() as conn:
        backfill_daily(conn)  # the daily rollup that ingest keeps beside the hourly rows
        conn.execute(text("ANALYZE"))
    return rows


def fill_waits(engine: Any, people: list[tuple[str, ...]], n: int, rng: random.Random) -> None:
    """`n` JupyterHub starts over the last 30 days as the ledger keeps them: a `spawn` event
    each (the per-wait record; attrs as the hub probe writes them, `progress_seconds` making
    each one different), about 1 in 10 failed or timed out, and the successful waits in the
    latency histograms of their member, profile and hour."""
    ph = placeholder(engine)
    events = []
    hist: dict[tuple[Any, ...], list[float]] = {}
    for i in range(n):
        m, vo, g, f, _n = rng.choice(people[1:] or people)  # people[0] has histogram rows
        start = NOW - rng.uniform(0, 30 * 86400)
        wait = rng.lognormvariate(2.1, 1.1)  # median ~8 s, a tail into minutes
        outcome = rng.choices(["ok", "failed", "timeout"], weights=[90, 7, 3])[0]
        profile = rng.choice(["small", "medium", "gpu", "default"])
        attrs = {"profile": profile, "outcome": outcome, "source": "stream", "server": "",
                 "options": "{}", "progress_seconds": round(wait * rng.random(), 6)}  # fmt: skip
        if outcome != "ok":
            attrs["error"] = "Spawn failed: pod did not start"
        events.append(
            (f, "spawn", f"sp-{i}", "hub", m.split("|")[1], m, start, start + wait,
             json.dumps(attrs))
        )  # fmt: skip
        if outcome == "ok":
            le = latency.bucket_of(wait)
            key = (f, vo, g, m, "time_to_session", profile, int(start // 3600) * 3600, le)
            slot = hist.setdefault(key, [0, 0.0])
            slot[0] += 1
            slot[1] += wait
    with engine.begin() as conn:
        cur = conn.connection.driver_connection.cursor()
        cur.executemany(
            f"INSERT INTO event (facility, kind, id, node, local_user, member_id, start, "
            f'"end", attrs) VALUES ({", ".join([ph] * 9)})',
            events,
        )
        cur.executemany(
            f"INSERT INTO latency VALUES ({', '.join([ph] * 10)})",
            [(*k, int(c), s) for k, (c, s) in hist.items()],
        )


def _component_values(layout: Any) -> dict[str, dict[str, Any]]:
    """id -> props of every component with an id in a layout tree."""
    out: dict[str, dict[str, Any]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, list | tuple):
            for n in node:
                walk(n)
            return
        if not hasattr(node, "to_plotly_json"):
            return
        props = node.to_plotly_json()["props"]
        if isinstance(props.get("id"), str):
            out[props["id"]] = props
        walk(props.get("children"))

    walk(layout)
    return out


def page_callbacks(app: Any, page: Any, principal: str, range_key: str) -> list[tuple[str, dict]]:
    """(callback key, request body) of each data callback of `page`, as on page load."""
    values = _component_values(app.layout())
    values.update(
        _component_values(page.layout({}) if getattr(page, "URL_STATE", False) else page.layout())
    )
    values["principal-picker"] = {"value": principal}
    values["range"] = {"value": range_key}
    out = []
    for key, spec in app.callback_map.items():
        ids = {d["id"] for d in spec["inputs"] + spec["state"]} - {"principal-picker", "range"}
        outs = [part.rsplit(".", 1) for part in key.strip(".").split("...")]
        if (
            not all(o[0] in values for o in outs)
            or not ids <= set(values)
            or any(o[0] == "url" for o in outs)
            or not spec["inputs"]
        ):
            continue
        if any(d["id"] == "principal-picker" for d in spec["inputs"] + spec["state"]) is False:
            continue

        def props(deps: list[dict[str, str]]) -> list[dict[str, Any]]:
            return [
                {
                    **d,
                    "value": values[d["id"]].get(
                        d["property"], 1 if d["property"] == "n_clicks" else None
                    ),
                }
                for d in deps
            ]

        outputs: Any = [{"id": o[0], "property": o[1].split("@")[0]} for o in outs]
        body = {
            "output": key,
            "outputs": outputs if key.startswith("..") else outputs[0],
            "inputs": props(spec["inputs"]),
            "state": props(spec["state"]),
            "changedPropIds": [],
        }
        out.append((key, body))
    return out


def per_figure_reads(
    q: Query, p: Any, kind: str, w: Any, population: str, slo: float | None
) -> interactive.Figures:
    """The Interactive page's reads before they were one: a query method per figure, each
    reading the same waits again (`--before-after` measures the page with these too)."""
    stats: dict[str, Any] = {
        "quantiles": interactive.QUANTILES, "slo_seconds": slo, "population": population
    }  # fmt: skip
    return interactive.Figures(
        total=q.latency_percentiles(p, kind, w.start, w.end, **stats),
        buckets=q.latency_buckets(p, kind, w.start, w.end, population=population),
        over_time=q.latency_percentiles(p, kind, w.start, w.end, step=w.step, **stats),
        profiles=q.latency_percentiles(p, kind, w.start, w.end, by=("profile",), **stats),
        slowest=q.latency_events(p, kind, w.start, w.end, limit=10, population=population),
    )


def _time(client: Any, key: str, body: dict, rounds: int) -> tuple[float, float, float, bytes]:
    """The first (cold) call, p50 and p95 over `rounds` more in ms, and the response."""
    t0 = time.perf_counter()
    r = client.post("/_dash-update-component", json=body)  # the first, cold call
    first = (time.perf_counter() - t0) * 1000
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        r = client.post("/_dash-update-component", json=body)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code in (200, 204), (key, r.status_code, r.data[:300])
    p95 = statistics.quantiles(times, n=20)[-1] if len(times) > 1 else times[0]
    return first, statistics.median(times), p95, r.data


def measure(
    app: Any,
    rounds: int,
    principal: str,
    pages: set[str] | None = None,
    before_after: bool = False,
) -> list[tuple[str, str, str, float, float, float]]:
    client = app.server.test_client()
    rows = []
    for path, page in dash_app.PAGES.items():
        if pages is not None and path not in pages:
            continue
        for range_key in RANGES:
            for key, body in page_callbacks(app, page, principal, range_key):
                name = ", ".join(o.split(".")[0] for o in key.strip(".").split("...")[:3])
                if before_after and page is interactive:
                    # the same callback with a read per figure, in the same run on the same data
                    shipped = interactive.read_figures
                    interactive.read_figures = per_figure_reads
                    try:
                        *before, before_body = _time(client, key, body, rounds)
                    finally:
                        interactive.read_figures = shipped
                    rows.append((f"{path} (before)", name, range_key, *before))
                    *after, after_body = _time(client, key, body, rounds)
                    assert after_body == before_body, f"{path} {range_key}: responses differ"
                    rows.append((f"{path} (after)", name, range_key, *after))
                    continue
                *timings, _body = _time(client, key, body, rounds)
                rows.append((path, name, range_key, *timings))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--active-hours", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--principal", default="admin", help='"admin", "vo:atlas", "member:<id>"')
    ap.add_argument("--db", type=Path, help="reuse (or create) this SQLite file")
    ap.add_argument(
        "--waits", type=int, default=10_000, help="JupyterHub starts over the last 30 days"
    )
    ap.add_argument("--pages", help='only these pages, e.g. "/interactive,/" (default: all)')
    ap.add_argument(
        "--before-after",
        action="store_true",
        help="also measure /interactive with a read per figure (its reads before they were "
        "one) and check that both give the same response",
    )
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="afmon-bench-dash-")
    path = args.db or Path(tmp.name) / "ledger.sqlite"
    url = f"sqlite:///{path}"
    if not path.exists():
        t0 = time.perf_counter()
        n = fill(url, args.members, args.days, args.active_hours, args.waits)
        print(
            f"filled {n:,} usage rows ({args.members} members x {args.days} days x "
            f"{args.active_hours} h x {len(RESOURCES)} resources), {args.waits:,} waits in "
            f"{time.perf_counter() - t0:.0f} s"
        )
    app = create_dash(Query(make_engine(url)), ServerSettings(local_mode=True), clock=lambda: NOW)
    gc.collect()
    gc.freeze()  # as the server does once started (aggregator/web/app.py, lifespan)
    pages = set(args.pages.split(",")) if args.pages else None
    rows = measure(app, args.rounds, args.principal, pages, args.before_after)
    print(f"\nprincipal {args.principal}, {args.rounds} rounds per callback\n")
    print("| page | callback (first outputs) | range | first call ms | p50 ms | p95 ms |")
    print("|---|---|---|---|---|---|")
    for path, name, range_key, first, p50, p95 in rows:
        flag = "" if p95 < 200 else " (over goal)"
        print(f"| {path} | {name} | {range_key} | {first:.0f} | {p50:.0f} | {p95:.0f}{flag} |")
    worst = max(rows, key=lambda r: r[5])
    print(f"\nslowest p95: {worst[5]:.0f} ms ({worst[0]} {worst[1]}, {worst[2]})")
    tmp.cleanup()


if __name__ == "__main__":
    main()
