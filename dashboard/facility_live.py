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
class LiveView:
    hour_start: float
    use: dict[str, float]  # cores, memory_bytes, gpus, read_bytes_per_s (hour averages)
    capacity: dict[str, float]  # cores, memory_bytes, gpus, nodes
    open_events: dict[str, int]
    slos: list[Tile]
    alerts: int | None  # None: the principal is not shown alerts
    top_vos: TableData
    notes: list[str] = field(default_factory=list)

    def tiles(self) -> list[Any]:
        """The tiles as Dash components (gauges for use against capacity)."""
        hour = f"{fmt_utc(self.hour_start)[11:16]}-{fmt_utc(self.hour_start + HOUR)[11:16]} UTC"
        out = [
            _gauge("cpu", "CPU in use", self.use["cores"], self.capacity["cores"], "cores", hour),
            _gauge(
                "memory",
                "Memory in use",
                self.use["memory_bytes"] / GIB,
                self.capacity["memory_bytes"] / GIB,
                "GiB",
                hour,
            ),
            _gauge("gpus", "GPUs held", self.use["gpus"], self.capacity["gpus"], "GPUs", hour),
            _tile(
                "data",
                "Data read",
                [
                    ("Mean rate", fmt_number(self.use["read_bytes_per_s"] / 1e6, "MB/s")),
                    ("Over", hour),
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


def _gauge(key: str, heading: str, used: float, capacity: float, unit: str, hour: str) -> Any:
    if capacity > 0:
        ratio = used / capacity
        text = f"{fmt_number(used)} of {fmt_number(capacity, unit)} ({100 * ratio:.1f} %)"
        bar = html.Div(
            html.Div(style={"width": f"{min(100.0, 100 * ratio):.1f}%"}), className="gauge"
        )
    else:
        text, bar = f"{fmt_number(used, unit)} (no capacity reported)", html.Div()
    return html.Div(
        [
            html.H4(heading),
            html.Div(text, className="num", id=f"fac-live-{key}"),
            bar,
            html.Div(f"mean over {hour}", className="hint"),
        ],
        className="tile",
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
            Column("Session time [hours]", True),
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
    cap = q.capacity(p)
    capacity = {
        "cores": float(cap["cpu_cores"].sum()),
        "gpus": float(cap["gpus"].sum()),
        "memory_bytes": float(cap["memory_bytes"].sum()),
        "nodes": float(cap["nodes"].sum()),
    }
    alerts = None if p.role == "member" else len(q.alerts(p))
    vos = q.usage_totals(
        p, w.start, w.end, by=("vo",), resources=("cpu_seconds", "session_seconds")
    )
    everyone = None  # an admin's VOs are everyone they may see
    if p.role != "facility_admin":  # a share of everyone's CPU time, not 100 % of one's own
        every = q.usage_totals(LOCAL_ADMIN, w.start, w.end, by=(), resources=("cpu_seconds",))
        everyone = float(every["amount"].sum())
    return LiveView(
        hour,
        use,
        capacity,
        q.open_events(p, ("session", "dask_cluster")),
        slo_tiles(q, p, w, slos),
        alerts,
        top_vos_table(vos, p, everyone),
    )
