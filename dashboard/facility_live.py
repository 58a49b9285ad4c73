"""The "now" part of the facility page, from the query layer: CPU, memory, GPU and data use in
the last full hour against capacity, open sessions and Dask clusters, the interactive SLOs
(p95 against target), firing alerts and the top VOs of the range.

"Now" is the last full UTC hour of the ledger: the hour that is running is still filling up,
so its amounts would read low. Capacity is what the nodes' agents last reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from dash import dcc, html

from afmon.aggregator.core import latency
from afmon.aggregator.query.operations import NODE_STALE_SECONDS
from afmon.aggregator.query.reads import DATA_RESOURCES, LOCAL_ADMIN, Principal, Query
from afmon.dashboard.figures import GIB, Column, TableData, Tile, fmt_number, fmt_plain, fmt_utc
from afmon.dashboard.pages.common import Window

HOUR = 3600
LIVE_RESOURCES = ("cpu_seconds", "memory_byte_seconds", "gpu_allocated_seconds")
READ_RESOURCES = tuple(r for r, (d, _s, _v) in DATA_RESOURCES.items() if d == "read")
SLO_KINDS = (latency.TIME_TO_SESSION, latency.TIME_TO_FIRST_WORKER)
TOP_VOS = 5
NO_VO_USAGE = "No VO used anything in this range."


@dataclass
class LiveNow:
    """Use in the last full hour against what the live nodes offer; one read
    (`live_now`) for every tile and page that shows it (the facility page, the GPUs page)."""

    hour_start: float
    use: dict[str, float]  # cores, memory_bytes, gpus, read_bytes_per_s (hour averages)
    capacity: dict[str, float]  # cores, memory_bytes, gpus, nodes: live nodes only
    stale: dict[str, float]  # the same of the nodes whose agent is silent (NODE_STALE_SECONDS)

    @property
    def hour(self) -> str:
        return f"{fmt_utc(self.hour_start)[11:16]}-{fmt_utc(self.hour_start + HOUR)[11:16]} UTC"

    def gauge(self, key: str, prefix: str = "fac-live") -> html.Div:
        """The tile of `key` (cpu, memory, gpus): mean use over the hour of the live capacity,
        saying what silent nodes hold and that it is left out."""
        heading, used, cap, stale, unit = {
            "cpu": ("CPU in use", self.use["cores"], self.capacity["cores"],
                    self.stale["cores"], "cores"),
            "memory": ("Memory in use", self.use["memory_bytes"] / GIB,
                       self.capacity["memory_bytes"] / GIB, self.stale["memory_bytes"] / GIB,
                       "GiB"),
            "gpus": ("GPUs held", self.use["gpus"], self.capacity["gpus"], self.stale["gpus"],
                     "GPUs"),
        }[key]  # fmt: skip
        what = "GPU" if key == "gpus" else "capacity"
        note = self._stale_note(stale, unit, key == "gpus")
        return _gauge(key, heading, used, cap, unit, self.hour, prefix, note, what)

    def _stale_note(self, amount: float, unit: str, count: bool = False) -> str:
        n = int(self.stale["nodes"])
        if not n and not amount:
            return ""
        nodes = f"{n:,} silent node{'s' if n != 1 else ''}" if n else "silent nodes"
        return (
            f"{nodes} ({fmt_number(amount, unit, count=count)}) left out: no report for over "
            f"{NODE_STALE_SECONDS / 60:.0f} min"
        )


def live_now(q: Query, p: Principal, now: float) -> LiveNow:
    """Use in the last full UTC hour (the ledger) and the capacity of the nodes heard from
    within NODE_STALE_SECONDS, with what the silent ones hold."""
    hour = float(int(now // HOUR) * HOUR - HOUR)
    totals = q.usage_totals(
        p, hour, hour + HOUR, by=(), resources=(*LIVE_RESOURCES, *READ_RESOURCES)
    )
    amount = dict(zip(totals["resource"], totals["amount"].astype(float), strict=True))
    use = {
        "cores": amount.get("cpu_seconds", 0.0) / HOUR,
        "memory_bytes": amount.get("memory_byte_seconds", 0.0) / HOUR,
        "gpus": amount.get("gpu_allocated_seconds", 0.0) / HOUR,
        "read_bytes_per_s": sum(amount.get(r, 0.0) for r in READ_RESOURCES) / HOUR,
    }
    cap = q.capacity(p, now)
    keys = {"cores": "cpu_cores", "gpus": "gpus", "memory_bytes": "memory_bytes", "nodes": "nodes"}
    capacity = {k: float(cap[c].sum()) for k, c in keys.items()}
    stale = {k: float(cap[f"stale_{c}"].sum()) for k, c in keys.items()}
    return LiveNow(hour, use, capacity, stale)


@dataclass
class LiveView:
    now: LiveNow
    open_events: dict[str, int]
    slos: list[Tile]
    alerts: int | None  # None: the principal is not shown alerts
    top_vos: TableData
    notes: list[str] = field(default_factory=list)

    def tiles(self) -> list[Any]:
        """The tiles as Dash components (gauges for use against capacity)."""
        live = self.now
        out = [
            live.gauge("cpu"),
            live.gauge("memory"),
            live.gauge("gpus"),
            _tile(
                "data",
                "Data read",
                [
                    ("Mean rate", fmt_number(live.use["read_bytes_per_s"] / 1e6, "MB/s")),
                    ("Over", live.hour),
                ],
            ),
            _tile(
                "open",
                "Open now",
                [
                    ("Interactive sessions", f"{self.open_events.get('session', 0):,}"),
                    ("Dask clusters", f"{self.open_events.get('dask_cluster', 0):,}"),
                ],
            ),
        ]
        for t in self.slos:
            out.append(_tile(t.key, t.heading, t.lines, t.tone))
        if self.alerts is None:
            out.append(
                _tile("alerts", "Firing alerts", [("", "shown to admins and VO managers")], "muted")
            )
        else:
            tone = "bad" if self.alerts else "ok"
            link = dcc.Link(f"{self.alerts:,} firing", href="/alerts", id="fac-alerts-link")
            out.append(
                html.Div(
                    [html.H4("Alerts"), html.Div(link, className="big")],
                    className=f"tile {tone}",
                    **{"data-key": "alerts"},
                )
            )
        return out


def _tile(key: str, heading: str, lines: list[tuple[str, str]], tone: str = "") -> html.Div:
    rows = [html.Tr([html.Td(label), html.Td(value, className="num")]) for label, value in lines]
    return html.Div(
        [html.H4(heading), html.Table(html.Tbody(rows))],
        className=f"tile {tone}".strip(),
        **{"data-key": key},
    )


def _gauge(
    key: str,
    heading: str,
    used: float,
    capacity: float,
    unit: str,
    hour: str,
    prefix: str = "fac-live",
    stale: str = "",
    what: str = "capacity",
) -> Any:
    if capacity > 0:
        ratio = used / capacity
        whole = what == "GPU"  # GPUs are counted whole: "of 8 GPUs"
        text = (
            f"{fmt_number(used)} of {fmt_number(capacity, unit, count=whole)} ({100 * ratio:.1f} %)"
        )
        bar = html.Div(
            html.Div(style={"width": f"{min(100.0, 100 * ratio):.1f}%"}), className="gauge"
        )
    else:
        live = " live" if stale else ""
        text, bar = f"{fmt_number(used, unit)} (no{live} {what} reported)", html.Div()
    hints = [html.Div(f"mean over {hour}", className="hint")]
    if stale:
        hints.append(html.Div(stale, className="hint stale", id=f"{prefix}-{key}-stale"))
    return html.Div(
        [html.H4(heading), html.Div(text, className="num", id=f"{prefix}-{key}"), bar, *hints],
        className="tile warn" if stale else "tile",
        **{"data-key": key},
    )


def slo_tiles(q: Query, p: Principal, w: Window, slos: Mapping[str, float]) -> list[Tile]:
    """p95 of each interactive wait in the window against its target (AFMON_LATENCY_SLO_SECONDS).
    One read of each kind's waits (`Query.latency_waits`); its `percentiles` are the frame that
    `latency_percentiles` returns for the same arguments."""
    tiles = []
    for kind in SLO_KINDS:
        target = slos.get(kind)
        stats = q.latency_waits(p, kind, w.start, w.end).percentiles(
            quantiles=(0.95,), slo_seconds=target
        )
        title = f"{latency.KINDS[kind]}, p95"
        if stats.empty:
            tiles.append(Tile(kind, title, [("", "no waits in this range")], "muted"))
            continue
        p95 = float(stats.iloc[0]["p95_seconds"])
        lines = [("p95", f"{p95:,.1f} s"), ("Waits", f"{int(stats.iloc[0]['count']):,}")]
        if target is None:
            tiles.append(Tile(kind, title, [*lines, ("Target", "none set")], "muted"))
            continue
        met = p95 <= target
        lines.append(("Target", f"{target:g} s: {'met' if met else 'missed'}"))
        tiles.append(Tile(kind, title, lines, "ok" if met else "bad"))
    return tiles


def top_vos_table(
    totals: pd.DataFrame, p: Principal | None = None, cpu_everyone: float | None = None
) -> TableData:
    """`usage_totals(by=("vo",), resources=(cpu_seconds, session_seconds))` -> the top VOs,
    each with its share of all the CPU time (`cpu_everyone`, the sum of `totals` when None).

    A member's row is theirs ("You", their share of everyone's CPU time), never their VO's."""
    member = p is not None and p.role == "member"
    table = TableData(
        [
            Column("" if member else "VO"),
            Column("CPU time [core-hours]", True),
            Column("Share of all CPU time [%]", True),
            Column("Session time of ended sessions [hours]", True),
        ],
        empty_message="You used nothing in this range." if member else NO_VO_USAGE,
    )
    if totals.empty:
        return table
    wide = totals.pivot_table(index="vo", columns="resource", values="amount", aggfunc="sum")
    wide = wide.reindex(columns=["cpu_seconds", "session_seconds"]).fillna(0.0)
    cpu_total = float(wide["cpu_seconds"].sum()) if cpu_everyone is None else cpu_everyone
    for vo, row in wide.sort_values("cpu_seconds", ascending=False).head(TOP_VOS).iterrows():
        share = f"{100 * row['cpu_seconds'] / cpu_total:.1f}" if cpu_total else "n/a"
        table.rows.append(
            [
                "You" if member else str(vo),
                fmt_plain(row["cpu_seconds"] / HOUR),
                share,
                fmt_plain(row["session_seconds"] / HOUR),
            ]
        )
    return table


def top_heading(p: Principal) -> str:
    """The heading over `top_vos_table`: whose usage it lists."""
    if p.role == "member":
        return "Your usage in this range"
    if p.role == "vo_manager":
        return f"{p.vo} in this range"
    return "Top VOs in this range"


def live_view(q: Query, p: Principal, w: Window, now: float, slos: Mapping[str, float]) -> LiveView:
    alerts = None if p.role == "member" else len(q.alerts(p))
    vos = q.usage_totals(
        p, w.start, w.end, by=("vo",), resources=("cpu_seconds", "session_seconds")
    )
    everyone = None  # an admin's VOs are everyone they may see
    if p.role != "facility_admin":  # a share of everyone's CPU time, not 100 % of one's own
        every = q.usage_totals(LOCAL_ADMIN, w.start, w.end, by=(), resources=("cpu_seconds",))
        everyone = float(every["amount"].sum())
    return LiveView(
        live_now(q, p, now),
        q.open_events(p, ("session", "dask_cluster")),
        slo_tiles(q, p, w, slos),
        alerts,
        top_vos_table(vos, p, everyone),
    )
