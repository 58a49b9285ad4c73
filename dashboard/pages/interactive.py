"""The Interactive page (`/interactive`): how long analysts wait for sessions, Dask workers,
scale-ups and results, against the SLOs.

Per latency kind: the distribution of waits with the SLO as a line, percentiles over time, a
breakdown by profile, and the slowest waits one by one (outliers, not only medians). Every
figure covers one population, named on the page: successful waits only (the default) or all
starts, the failed ones included with their time to failure. Percentiles are exact from the
per-wait records (aggregator/core/latency.py). A member sees only their own waits; a VO
manager their VO's.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

import pandas as pd
import plotly.graph_objects as go
from dash import Dash, Input, Output, dcc, html

from afmon.aggregator.core import latency
from afmon.aggregator.query.reads import Principal, Query
from afmon.dashboard import figures
from afmon.dashboard.figures import Column, TableData, fmt_utc
from afmon.dashboard.pages.common import (
    PICK_MESSAGE,
    Context,
    Window,
    notice,
    render_table,
    role_caption,
)
from afmon.dashboard.theme import PLOT_LAYOUT

PATH = "/interactive"
TITLE = "Interactive"
SHOWN = (
    latency.TIME_TO_SESSION,
    latency.TIME_TO_FIRST_WORKER,
    latency.TIME_TO_SCALE_UP,
    latency.TIME_TO_FINISH,
)
QUANTILES = (0.5, 0.9, 0.99)
NO_WAITS = "No waits of this kind recorded in this range."
POPULATION_LABELS = {
    latency.POPULATION_OK: "Successful waits only",
    latency.POPULATION_ALL: "All starts, failed ones included",
}


def layout() -> html.Div:
    return html.Div(
        [
            html.H2("Interactive waits", id="int-heading"),
            html.Div(id="int-intro", className="card"),
            dcc.RadioItems(
                id="int-kind",
                options=[{"label": latency.KINDS[k], "value": k} for k in SHOWN],
                value=latency.TIME_TO_SESSION,
                inline=True,
                className="radio-inline",
            ),
            dcc.RadioItems(
                id="int-population",
                options=[{"label": v, "value": k} for k, v in POPULATION_LABELS.items()],
                value=latency.POPULATION_OK,
                inline=True,
                className="radio-inline",
            ),
            html.Div(id="int-summary", className="card"),
            html.Div(dcc.Graph(id="int-dist", config={"displaylogo": False}), className="card"),
            html.Div(
                dcc.Graph(id="int-over-time", config={"displaylogo": False}), className="card"
            ),
            html.H3("By profile"),
            html.Div(id="int-profiles", className="card"),
            html.H3("Slowest waits"),
            html.Div(id="int-slowest-caption", className="hint"),
            html.Div(id="int-slowest", className="card"),
        ],
        id="interactive-page",
    )


# -- pure figure and table functions ---------------------------------------------------------


def _label(le: float) -> str:
    lo = latency.lower_bound(le)
    return f"> {lo:g} s" if math.isinf(le) else f"{lo:g}-{le:g} s"


def distribution_figure(buckets: pd.DataFrame, kind: str, slo: float | None) -> go.Figure:
    """Waits per bucket (summed over the window), the SLO bound marked by a line."""
    if buckets.empty:
        return figures.empty_figure("Waits", NO_WAITS)
    per_le = buckets.groupby("le")["count"].sum()
    les = [le for le in latency.BUCKETS_SECONDS if per_le.get(le, 0) or le <= max(per_le.index)]
    labels = [_label(le) for le in les]
    counts = [int(per_le.get(le, 0)) for le in les]
    colors = ["#2e7d32" if slo is None or le <= slo else "#c62828" for le in les]
    fig = go.Figure(go.Bar(x=labels, y=counts, marker_color=colors, name="waits"))
    fig.update_layout(**PLOT_LAYOUT)
    fig.update_layout(title=f"{latency.KINDS[kind]}: distribution", showlegend=False)
    if slo is not None and slo in les:
        fig.add_vline(x=les.index(slo) + 0.5, line_dash="dash", line_color="#c62828")
        fig.add_annotation(
            x=les.index(slo) + 0.5,
            y=max(counts),
            text=f"SLO {slo:g} s",
            showarrow=False,
            xanchor="left",
            yanchor="bottom",
        )
    fig.update_xaxes(title_text="Wait [s]", type="category")
    fig.update_yaxes(title_text="Waits [count]")
    return fig


def percentiles_figure(stats: pd.DataFrame, kind: str, slo: float | None) -> go.Figure:
    """p50/p90/p99 per step (from summed buckets), the SLO as a horizontal line."""
    if stats.empty:
        return figures.empty_figure("Wait [s]", NO_WAITS)
    fig = go.Figure()
    for q in QUANTILES:
        col = f"p{round(q * 100):g}_seconds"
        fig.add_trace(
            go.Scatter(
                x=stats["time"], y=stats[col], mode="lines+markers", name=f"p{round(q * 100):g}"
            )
        )
    fig.update_layout(**PLOT_LAYOUT)
    fig.update_layout(title=f"{latency.KINDS[kind]}: percentiles over time")
    if slo is not None:
        fig.add_hline(
            y=slo, line_dash="dash", line_color="#c62828", annotation_text=f"SLO {slo:g} s"
        )
    fig.update_xaxes(title_text="Time (UTC)")
    fig.update_yaxes(title_text="Wait [s]")
    return fig


def _s(value: float) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{float(value):,.2f}"


def profile_label(name: str) -> str:
    """A profile's name as people write it: "1 cores" -> "1 core" (spawners often
    pluralise blindly)."""
    return re.sub(r"(?<![\d.])1 (core|GPU|CPU|node|worker)s\b", r"1 \1", str(name))


def natural_key(name: str) -> tuple[tuple[int, Any], ...]:
    """Sorts "2 cores" before "16 cores": the numbers in a name compare as numbers."""
    parts = re.split(r"(\d+(?:\.\d+)?)", str(name).lower())
    return tuple((0, float(t)) if i % 2 else (1, t) for i, t in enumerate(parts) if t)


def profiles_table(stats: pd.DataFrame, slo: float | None) -> TableData:
    table = TableData(
        [
            Column("Profile"),
            Column("Waits", True),
            Column("Mean [s]", True),
            *[Column(f"p{round(q * 100):g} [s]", True) for q in QUANTILES],
            Column("Within SLO [%]", True),
        ],
        empty_message=NO_WAITS,
    )
    for r in sorted(stats.to_dict("records"), key=lambda r: natural_key(r["profile"])):
        within = r.get("within_slo_ratio")
        table.rows.append(
            [
                profile_label(r["profile"]),
                f"{int(r['count']):,}",
                _s(r["mean_seconds"]),
                *[_s(r[f"p{round(q * 100):g}_seconds"]) for q in QUANTILES],
                "n/a" if slo is None or within is None else f"{100 * within:.1f}",
            ]
        )
    return table


def slowest_table(events: pd.DataFrame, slo: float | None) -> TableData:
    table = TableData(
        [
            Column("Member"),
            Column("Facility"),
            Column("What"),
            Column("Profile"),
            Column("Asked at (UTC)"),
            Column("Wait [s]", True),
            Column("Outcome"),
            Column("Over SLO"),
        ],
        empty_message=NO_WAITS,
    )
    for r in events.itertuples(index=False):
        over = "yes" if slo is not None and r.seconds > slo else "no"
        table.rows.append(
            [
                str(r.display_name),
                str(r.facility),
                str(r.id),
                profile_label(r.profile),
                fmt_utc(r.start),
                _s(r.seconds),
                str(r.outcome),
                over,
            ]
        )
    return table


def population_caption(population: str) -> str:
    """Which waits the figures cover, in words."""
    return POPULATION_LABELS.get(population, population) + (
        ": a failed start counts with its time to failure."
        if population == latency.POPULATION_ALL
        else ": failed starts are left out (choose all starts to include them)."
    )


def summary_line(
    total: pd.DataFrame, kind: str, slo: float | None, population: str = latency.POPULATION_OK
) -> str:
    if total.empty:
        return NO_WAITS
    r = total.iloc[0]
    n = int(r["count"])
    count = f"{n:,} {'wait' if n == 1 else 'waits'}"
    if population == latency.POPULATION_ALL:
        failed = int(r.get("failed_count", 0) or 0)
        count += f" ({failed:,} of them failed starts)"
    parts = [
        count,
        f"median {_s(r['p50_seconds'])} s",
        f"p90 {_s(r['p90_seconds'])} s",
        f"p99 {_s(r['p99_seconds'])} s",
    ]
    if slo is not None:
        parts.append(f"{100 * r['within_slo_ratio']:.1f} % within the SLO of {slo:g} s")
    label = POPULATION_LABELS.get(population, population).lower()
    return f"{latency.KINDS[kind]}: " + ", ".join(parts) + f" ({label})."


# -- reads -----------------------------------------------------------------------------------


class Figures(NamedTuple):
    """What the page draws, for one principal, kind, window and population."""

    total: pd.DataFrame  # latency_percentiles over the window, one row
    buckets: pd.DataFrame  # latency_buckets over the window
    over_time: pd.DataFrame  # latency_percentiles per step of the window
    profiles: pd.DataFrame  # latency_percentiles by profile
    slowest: pd.DataFrame  # latency_events, the 10 slowest


def read_figures(
    q: Query, p: Principal, kind: str, w: Window, population: str, slo: float | None
) -> Figures:
    """Every figure of the page from one read of the waits (`Query.latency_waits`): the same
    frames as the query methods of each, which would read the same waits once per figure."""
    waits = q.latency_waits(p, kind, w.start, w.end, population=population)
    return Figures(
        total=waits.percentiles(quantiles=QUANTILES, slo_seconds=slo),
        buckets=waits.buckets(),
        over_time=waits.percentiles(step=w.step, quantiles=QUANTILES, slo_seconds=slo),
        profiles=waits.percentiles(by=("profile",), quantiles=QUANTILES, slo_seconds=slo),
        slowest=waits.events(limit=10),
    )


# -- callbacks -------------------------------------------------------------------------------


def register(app: Dash, ctx: Context) -> None:
    @app.callback(
        Output("int-intro", "children"),
        Output("int-summary", "children"),
        Output("int-dist", "figure"),
        Output("int-over-time", "figure"),
        Output("int-profiles", "children"),
        Output("int-slowest", "children"),
        Output("int-slowest-caption", "children"),
        Input("principal-picker", "value"),
        Input("range", "value"),
        Input("int-kind", "value"),
        Input("int-population", "value"),
    )
    def _interactive(
        principal_key: str | None,
        range_key: str | None,
        kind: str | None,
        population: str | None,
    ) -> tuple[Any, ...]:
        p = ctx.principal(principal_key)
        if p is None:
            empty = figures.empty_figure("Wait [s]", PICK_MESSAGE)
            return notice(PICK_MESSAGE), "", empty, empty, [], [], ""
        kind = kind if kind in SHOWN else latency.TIME_TO_SESSION
        pop = population if population in latency.POPULATIONS else latency.POPULATION_OK
        slo = ctx.settings.latency_slo_seconds.get(kind)
        w = ctx.window(range_key)
        intro = (
            f"Your own waits, {p.name}."
            if p.role == "member"
            else f"Waits of everyone you may see ({role_caption(p)})."
        )
        f = read_figures(ctx.query, p, kind, w, pop, slo)
        return (
            html.Div(intro, id="int-viewer"),
            html.Div(
                [
                    html.Div(summary_line(f.total, kind, slo, pop), id="int-summary-text"),
                    html.Div(population_caption(pop), id="int-population-note", className="hint"),
                ]
            ),
            distribution_figure(f.buckets, kind, slo),
            percentiles_figure(f.over_time, kind, slo),
            render_table(profiles_table(f.profiles, slo), "int-profiles-table"),
            render_table(slowest_table(f.slowest, slo), "int-slowest-table"),
            POPULATION_LABELS[pop],
        )
