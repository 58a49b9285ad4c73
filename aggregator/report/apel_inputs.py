"""What the report's APEL summaries need beyond the month-to-date ledger totals.

The APEL server keys a summary on NodeCount and Processors as well as on the user, and
stores NodeCount and Processors NOT NULL; every summary also carries the first and last
end time of what it sums (EarliestEndTime, LatestEndTime, within its month). The ledger
keeps usage per member and hour only, so this module reads, for each month the report's
week touches (from the first of the month to the end of the week):

- batch: the `batch_job` events that ended in it (APEL's rule: a job belongs to the month
  of its end), summed per member, node count and processors, with their first and last
  end. Processors = `attrs.cores` (Slurm AllocCPUS, HTCondor CpusProvisioned/RequestCpus);
  NodeCount = the hosts of `attrs.nodes` (Slurm's NodeList, or a number), else 1 (HTCondor
  jobs run on one machine). Normalisation per job: the HEPscore23 per core of its node in
  the node table (the default per core for nodes without one), as the ingest applies it.
- interactive: per member, the end of the first and of the last hour with interactive
  usage in the month (the ledger accounts sessions and host CPU by the hour).

It also carries the APEL site (`AFMON_APEL_SITE`) and the warnings about what the APEL
files cannot carry as configured. The result is the `apel` section of the report document,
so the APEL files are rendered from the document like every other format.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, text

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.base import Principal, scope_sql
from afmon.aggregator.query.reads import Query
from afmon.aggregator.report.quantities import num
from afmon.aggregator.store.db import read_connection
from afmon.aggregator.store.schema import UNMAPPED

HOUR = 3600
INTERACTIVE_RESOURCES = ("session_seconds", "sessions", "cpu_seconds")
_GROUP = re.compile(r"\[([^\]]*)\]")
BatchKey = tuple[str, str, str, str, int, int]  # facility, vo, group, member, nodes, procs
KEYS_PER_READ = 200  # 4 parameters each: within SQLite's oldest limit of 999 per statement


def count_hosts(nodelist: str) -> int:
    """Hosts in a Slurm hostlist (`c[01-03,7],gpu1` -> 5; `r[1-2]-n[1-4]` -> 8); 0 for
    none (`None assigned`, empty). A part it cannot read counts as one host."""
    text_ = nodelist.strip()
    if not text_ or text_.lower().startswith(("none", "(null)")):
        return 0
    hosts, depth, start = 0, 0, 0
    for i, ch in enumerate(text_ + ","):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            hosts += _hosts_of(text_[start:i])
            start = i + 1
    return hosts


def _hosts_of(expr: str) -> int:
    """Hosts of one hostlist expression: the product of its bracket groups' sizes."""
    if not expr:
        return 0
    n = 1
    for group in _GROUP.findall(expr):
        size = 0
        for part in group.split(","):
            lo, sep, hi = part.partition("-")
            size += int(hi) - int(lo) + 1 if sep and lo.isdigit() and hi.isdigit() else 1
        n *= max(size, 1)
    return n


def _number(attrs: dict[str, Any], name: str) -> float | None:
    v = attrs.get(name)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def node_count(attrs: dict[str, Any]) -> int:
    """A job's NodeCount: `attrs.nodes` as a number or a Slurm hostlist; 1 without it."""
    n = _number(attrs, "nodes")
    if n is None and isinstance(attrs.get("nodes"), str):
        n = float(count_hosts(attrs["nodes"]))
    return int(n) if n is not None and n >= 1 else 1


def processors(attrs: dict[str, Any]) -> int:
    """A job's Processors: its cores (the ledger refuses a job without them); 1 without."""
    n = _number(attrs, "cores")
    return int(round(n)) if n is not None and n >= 1 else 1


@dataclass
class BatchSum:
    """One APEL batch summary being added up (seconds; HS23-seconds)."""

    jobs: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    wall_hs23: float = 0.0
    cpu_hs23: float = 0.0
    earliest_end: float = math.inf
    latest_end: float = -math.inf

    def add(self, wall: float, cpu: float, hs23: float, end: float, counts: bool) -> None:
        self.jobs += 1 if counts else 0
        self.wall += wall
        self.cpu += cpu
        self.wall_hs23 += wall * hs23
        self.cpu_hs23 += cpu * hs23
        self.earliest_end = min(self.earliest_end, end)
        self.latest_end = max(self.latest_end, end)


def _rows(query: Query, sql: str, params: dict[str, Any]) -> Iterator[Row[Any]]:
    """Rows read as the query layer reads (on its engine, without the SQLite write lock):
    the events are streamed, not made into a frame, as a month can hold many jobs."""
    with read_connection(query._engine) as conn:  # the query layer's own engine
        yield from conn.execute(text(sql), params)


def _filters(
    facility: str | None, vo: str | None, fcol: str, vcol: str
) -> tuple[str, dict[str, Any]]:
    """The report's --facility/--vo filters as SQL (" AND ..."), as the builder applies them."""
    conds: list[str] = []
    params: dict[str, Any] = {}
    if facility is not None:
        conds.append(f"{fcol} = :apel_facility")
        params["apel_facility"] = facility
    if vo is not None:
        conds.append(f"{vcol} = :apel_vo")
        params["apel_vo"] = vo
    return "".join(f" AND {c}" for c in conds), params


def _hepscores(query: Query, default: float) -> dict[tuple[str, str], float]:
    """(facility, node) -> the node's HEPscore23 per core; the ingest's default elsewhere."""
    out = {}
    for facility, node, hs in _rows(
        query, "SELECT facility, node, hepscore23_per_core FROM node", {}
    ):
        out[(str(facility), str(node))] = float(hs) if hs else default
    return out


def batch_sums(
    query: Query,
    p: Principal,
    start: float,
    end: float,
    default_hs23: float,
    facility: str | None = None,
    vo: str | None = None,
) -> dict[BatchKey, BatchSum]:
    """Mapped members' `batch_job` runs that ended in [start, end), per APEL key."""
    cond, params = scope_sql(p, member="e.member_id", vo="m.vo", facility="e.facility")
    extra, more = _filters(facility, vo, "e.facility", "m.vo")
    sql = (
        'SELECT e.facility, m.vo, m.grp, e.member_id, e.node, e."end", e.start, e.attrs '
        "FROM event e JOIN member m ON m.id = e.member_id "
        'WHERE e.kind = \'batch_job\' AND e."end" >= :apel_s AND e."end" < :apel_e '
        f"AND m.vo <> :apel_unmapped AND {cond}{extra}"
    )
    args = {"apel_s": start, "apel_e": end, "apel_unmapped": UNMAPPED, **params, **more}
    hs23 = _hepscores(query, default_hs23)
    sums: dict[BatchKey, BatchSum] = {}
    for fac, vo_, grp, member, node, t_end, t_start, raw in _rows(query, sql, args):
        attrs = json.loads(raw or "{}")
        key = (str(fac), str(vo_), str(grp), str(member), node_count(attrs), processors(attrs))
        wall = _number(attrs, "wall_seconds")
        job_node = str(attrs.get("node") or node)
        sums.setdefault(key, BatchSum()).add(
            wall=float(t_end) - float(t_start) if wall is None else wall,
            cpu=_number(attrs, "cpu_seconds") or 0.0,
            hs23=hs23.get((str(fac), job_node), default_hs23),
            end=float(t_end),
            counts=attrs.get("requeued") is not True,  # the ledger's rule: a run, not a job
        )
    return sums


def interactive_bounds(
    query: Query,
    p: Principal,
    start: float,
    end: float,
    keys: Iterable[tuple[str, str, str, str]],
    facility: str | None = None,
    vo: str | None = None,
) -> dict[tuple[str, str, str, str], tuple[int, int]]:
    """(facility, vo, group, member) -> the ends of the first and last hour in [start, end)
    with interactive usage (sessions or host CPU), for those of `keys` that have any: the
    month to date's keys, which hold every key with usage in the window. The first and the
    last hour are each one seek on the ledger's primary key per key and resource (grouping
    the month's hourly rows instead took seconds for 10,000 members)."""
    cond, params = scope_sql(p)
    extra, more = _filters(facility, vo, "facility", "vo")

    def hour(i: int, order: str) -> str:
        return (
            "(SELECT hour FROM usage WHERE facility = k.f AND vo = k.v AND grp = k.g "
            f"AND member_id = k.m AND resource = :apel_r{i} AND hour >= :apel_s "
            f"AND hour < :apel_e AND amount <> 0 AND {cond}{extra} ORDER BY hour {order} LIMIT 1)"
        )

    hours = ", ".join(
        hour(i, o) for i in range(len(INTERACTIVE_RESOURCES)) for o in ("ASC", "DESC")
    )
    fixed = {
        **{f"apel_r{i}": r for i, r in enumerate(INTERACTIVE_RESOURCES)},
        "apel_s": int(start),
        "apel_e": int(end),
        **params,
        **more,
    }
    wanted = sorted({tuple(map(str, k)) for k in keys if k[1] != UNMAPPED})
    out: dict[tuple[str, str, str, str], tuple[int, int]] = {}
    for first in range(0, len(wanted), KEYS_PER_READ):
        chunk = wanted[first : first + KEYS_PER_READ]
        values = ", ".join(f"(:k{j}f, :k{j}v, :k{j}g, :k{j}m)" for j in range(len(chunk)))
        args = dict(fixed)
        for j, (f, v, g, m) in enumerate(chunk):
            args |= {f"k{j}f": f, f"k{j}v": v, f"k{j}g": g, f"k{j}m": m}
        sql = f"WITH k (f, v, g, m) AS (VALUES {values}) SELECT f, v, g, m, {hours} FROM k"
        for f, v, g, m, *found in _rows(query, sql, args):
            seen = [int(h) for h in found if h is not None]
            if seen:
                out[(str(f), str(v), str(g), str(m))] = (min(seen) + HOUR, max(seen) + HOUR)
    return out


def _batch_rows(sums: dict[BatchKey, BatchSum]) -> list[dict[str, Any]]:
    rows = []
    for key in sorted(sums):
        s = sums[key]
        facility, vo, group, member, nodes, procs = key
        rows.append(
            {
                "facility": facility,
                "vo": vo,
                "group": group,
                "member": member,
                "node_count": nodes,
                "processors": procs,
                "jobs": s.jobs,
                "wall_seconds": num(s.wall),
                "cpu_seconds": num(s.cpu),
                "wall_hs23_seconds": num(s.wall_hs23),
                "cpu_hs23_seconds": num(s.cpu_hs23),
                "earliest_end": int(s.earliest_end),
                "latest_end": int(s.latest_end),
            }
        )
    return rows


def warnings(settings: ServerSettings, facilities: Iterable[str]) -> list[str]:
    """What the APEL files cannot carry as configured, for the report's reader."""
    out = []
    if not settings.apel_site:
        named = ", ".join(sorted(set(facilities))) or "the facility"
        out.append(
            "AFMON_APEL_SITE is not set: the APEL records name the facility "
            f"({named}) as Site, where a repository expects the site's official GOCDB "
            "name; set AFMON_APEL_SITE before sending them."
        )
    if not getattr(settings, "report_hs06_per_hs23", None):
        out.append(
            "The APEL v0.3 message has no records: a repository reads its normalised "
            "durations as HEPSPEC06, and afmon measures HEPscore23 only. Send the v0.4 "
            "message (HEPscore23), or set AFMON_REPORT_HS06_PER_HS23 for v0.3 in HEPSPEC06."
        )
    return out


def section(
    query: Query,
    p: Principal,
    settings: ServerSettings,
    months: list[dict[str, Any]],
    facility: str | None = None,
    vo: str | None = None,
) -> dict[str, Any]:
    """The report document's `apel` section for its `month_to_date` rows (`months`)."""
    out = []
    facilities = {m["facility"] for month in months for m in month["members"]}
    for month in months:
        lo, hi = month["window"]["start_epoch"], month["window"]["end_epoch"]
        sums = batch_sums(query, p, lo, hi, settings.default_hepscore23_per_core, facility, vo)
        keys = [(m["facility"], m["vo"], m["group"], m["member"]) for m in month["members"]]
        bounds = interactive_bounds(query, p, lo, hi, keys, facility, vo)
        facilities |= {k[0] for k in sums}
        out.append(
            {
                "month": month["month"],
                "batch": _batch_rows(sums),
                "interactive": [
                    dict(zip(("facility", "vo", "group", "member"), k, strict=True))
                    | {"earliest_end": a, "latest_end": b}
                    for k, (a, b) in sorted(bounds.items())
                ],
            }
        )
    return {
        "site": settings.apel_site,
        "warnings": warnings(settings, facilities),
        "months": out,
    }
