"""The Batch page (`/batch`): batch usage per VO and per member (jobs, core-hours, CPU
efficiency, GPU-hours, HEPscore23-normalised hours), per scheduler account and per QoS (the
way sites report batch usage), core-hours over time, and the batch queue wait next to the
interactive waits. Rules: docs/batch.md."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from dash import Dash, Input, Output, dcc, html

from afmon.aggregator.query.reads import Principal
from afmon.dashboard import figures
from afmon.dashboard.colours import assign
from afmon.dashboard.figures import Column, TableData, fmt_number
from afmon.dashboard.pages.common import PICK_MESSAGE, Context, notice, render_table, role_caption

PATH = "/batch"
TITLE = "Batch"
GRAPH_RESOURCE = "batch_wall_core_seconds"
# latency kinds shown side by side: (kind, label)
WAITS: tuple[tuple[str, str], ...] = (
    ("batch_queue_wait", "Batch queue wait"),
    ("time_to_session", "Time to session"),
    ("time_to_first_worker", "Time to first Dask worker"),
)
HOUR = 3600.0
# the accounting dimensions shown one table each: (dimension, column title)
DIMENSION_TABLES: tuple[tuple[str, str], ...] = (("account", "Account"), ("qos", "QoS"))
NONE_SHOWN = "(none)"  # a job without the attribute (stored as "")


def layout() -> html.Div:
    return html.Div(
        [
            html.H2("Batch usage", id="bat-heading"),
            html.Div(id="bat-intro", className="card"),
            html.Div(
                [html.H3("Per VO"), html.Div(id="bat-vos", className="card")],
                id="bat-vos-section",
            ),
            html.H3("Per member", id="bat-members-heading"),
            html.Div(id="bat-members", className="card"),
            html.H3("Per account", id="bat-accounts-heading"),
            html.Div(id="bat-accounts", className="card"),
            html.H3("Per QoS", id="bat-qos-heading"),
            html.Div(id="bat-qos", className="card"),
            html.Div(
                dcc.Graph(id="bat-core-hours", config={"displaylogo": False}), className="card"
            ),
            html.H3("Waiting: batch queue and interactive"),
            html.Div(id="bat-waits", className="card"),
        ],
        id="batch-page",
    )


# -- pure helpers (tested without a browser) ----------------------------------------------


def _efficiency(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{value:.0%}"


def usage_table(
    df: pd.DataFrame,
    by: str,
    names: Mapping[str, str] | None = None,
    vos: Mapping[str, str] | None = None,
) -> TableData:
    """`Query.batch_usage(by=by)` -> one row per key, most core-hours first; per member with
    each member's VO when `vos` is given."""
    cols = [Column("Member" if by == "member" else by.upper() if by == "vo" else by.title())]
    if by == "member" and vos is not None:
        cols.append(Column("VO"))
    cols += [
        Column("Jobs", True), Column("Wall core-hours", True), Column("CPU hours", True),
        Column("CPU efficiency", True), Column("GPU hours", True),
        Column("Normalised CPU [HS23-hours]", True),
    ]  # fmt: skip
    table = TableData(cols, empty_message="No batch job ended in this range.")
    for r in df.sort_values("batch_wall_core_seconds", ascending=False).itertuples(index=False):
        key = str(getattr(r, by))
        row = [(names or {}).get(key, key)]
        if by == "member" and vos is not None:
            row.append(vos.get(key, ""))
        row += [
            fmt_number(r.batch_jobs, count=True),
            fmt_number(r.batch_wall_core_seconds / HOUR),
            fmt_number(r.batch_cpu_seconds / HOUR),
            _efficiency(r.cpu_efficiency),
            fmt_number(r.batch_gpu_seconds / HOUR),
            fmt_number(r.batch_cpu_hs23_seconds / HOUR),
        ]
        table.rows.append(row)
    return table


def dimension_table(df: pd.DataFrame, by: str, title: str) -> TableData:
    """`Query.batch_by(by=(by,))` -> one row per account (or QoS), most core-hours first;
    jobs without one are under "(none)"."""
    table = TableData(
        [Column(title), Column("Jobs", True), Column("Wall core-hours", True),
         Column("CPU efficiency", True), Column("GPU hours", True)],
        empty_message="No batch job ended in this range.",
    )  # fmt: skip
    for r in df.sort_values("batch_wall_core_seconds", ascending=False).itertuples(index=False):
        table.rows.append([
            str(getattr(r, by)) or NONE_SHOWN, fmt_number(r.batch_jobs, count=True),
            fmt_number(r.batch_wall_core_seconds / HOUR), _efficiency(r.cpu_efficiency),
            fmt_number(r.batch_gpu_seconds / HOUR),
        ])  # fmt: skip
    return table


def waits_table(frames: Mapping[str, pd.DataFrame]) -> TableData:
    """{kind: `latency_percentiles` without grouping} -> one row per kind with waits."""
    table = TableData(
        [Column("Wait"), Column("Count", True), Column("Mean", True), Column("Median", True),
         Column("90th percentile", True)],
        empty_message="No waits recorded in this range.",
    )  # fmt: skip
    for kind, label in WAITS:
        df = frames.get(kind)
        if df is None or df.empty:
            continue
        r = df.iloc[0]
        table.rows.append([
            label, fmt_number(r["count"], count=True), _seconds(r["mean_seconds"]),
            _seconds(r["p50_seconds"]), _seconds(r["p90_seconds"]),
        ])  # fmt: skip
    return table


def _seconds(value: float) -> str:
    if pd.isna(value):
        return "n/a"
    if value >= 3600:
        return f"{value / 3600:,.1f} h"
    if value >= 120:
        return f"{value / 60:,.1f} min"
    return f"{value:,.1f} s"


# -- callbacks ----------------------------------------------------------------------------


def register(app: Dash, ctx: Context) -> None:
    @app.callback(
        Output("bat-intro", "children"),
        Output("bat-vos-section", "style"),
        Output("bat-members-heading", "children"),
        Output("bat-accounts-heading", "children"),
        Output("bat-qos-heading", "children"),
        Output("bat-vos", "children"),
        Output("bat-members", "children"),
        Output("bat-accounts", "children"),
        Output("bat-qos", "children"),
        Output("bat-core-hours", "figure"),
        Output("bat-waits", "children"),
        Input("principal-picker", "value"),
        Input("range", "value"),
    )
    def _batch(principal_key: str | None, range_key: str | None) -> tuple[Any, ...]:
        p = ctx.principal(principal_key)
        if p is None:
            axis = figures.display_unit(GRAPH_RESOURCE).axis
            empty = figures.empty_figure(axis, PICK_MESSAGE)
            headings = ("Per member", "Per account", "Per QoS")
            return notice(PICK_MESSAGE), {}, *headings, [], [], [], [], empty, []
        return _render(ctx, p, range_key)


def _render(ctx: Context, p: Principal, range_key: str | None) -> tuple[Any, ...]:
    w = ctx.window(range_key)
    q = ctx.query
    members = q.members(p)
    names = figures.member_names(members)
    vos = dict(zip(members["member_id"], members["vo"], strict=True))
    mine = p.role == "member"  # a member's jobs are theirs: never shown as their VO's
    per_vo = TableData([]) if mine else usage_table(q.batch_usage(p, w.start, w.end, by="vo"), "vo")
    per_member = usage_table(
        q.batch_usage(p, w.start, w.end, by="member"), "member", names, None if mine else vos
    )
    per_dimension = [
        render_table(
            dimension_table(q.batch_by(p, w.start, w.end, by=(by,)), by, title),
            f"bat-{by}-table",
        )
        for by, title in DIMENSION_TABLES
    ]
    over = q.usage_over_time(p, GRAPH_RESOURCE, w.start, w.end, by="member", step=w.step)
    fig = figures.usage_figure(
        over, GRAPH_RESOURCE, "member", w.start, w.end, w.step, names=names,
        title="Your batch wall core-hours" if mine else "Batch wall core-hours by member",
        colours=assign(over["member"]) if not over.empty else {},
    )  # fmt: skip
    waits = waits_table({
        kind: q.latency_percentiles(p, kind, w.start, w.end, quantiles=(0.5, 0.9))
        for kind, _label in WAITS
    })  # fmt: skip
    intro = html.Div(
        [
            html.Div(f"Viewing as {p.name} ({role_caption(p)}).", id="bat-viewer"),
            html.Div(
                "Jobs count in the hour they started; wall, CPU and GPU time in the hours "
                "they ran. CPU efficiency = CPU time / (wall time x allocated cores)."
            ),
        ]
    )
    headings = (
        ("Your batch jobs", "Your jobs per account", "Your jobs per QoS")
        if mine
        else ("Per member", "Per account", "Per QoS")
    )
    return (
        intro,
        {"display": "none"} if mine else {},
        *headings,
        render_table(per_vo, "bat-vos-table"),
        render_table(per_member, "bat-members-table"),
        *per_dimension,
        fig,
        render_table(waits, "bat-waits-table"),
    )
