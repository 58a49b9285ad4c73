"""The GPUs page (`/gpus`): allocated versus active GPU hours per member and VO, by GPU model
(with the normalisation factors of AFMON_GPU_MODEL_FACTORS), the idle-but-held list, and for
facility admins the per-device utilisation heatmap and the MIG layout. Rules: docs/gpu.md.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
from dash import Dash, Input, Output, dcc, html

from afmon.aggregator.query.gpu_breadth import gpu_breadth
from afmon.aggregator.query.reads import Principal
from afmon.collectors.wire import GPU_MODELS
from afmon.dashboard import figures
from afmon.dashboard.facility_live import live_now
from afmon.dashboard.figures import Column, TableData, fmt_number, fmt_utc
from afmon.dashboard.pages.common import PICK_MESSAGE, Context, notice, render_table, role_caption
from afmon.dashboard.theme import PLOT_LAYOUT

PATH = "/gpus"
TITLE = "GPUs"
HELD = ("gpu_allocated_seconds", "gpu_active_seconds")
ADMIN_ONLY = "Device data (utilisation, MIG layout) is for facility admins."


def layout() -> html.Div:
    graph = {"config": {"displaylogo": False}}
    return html.Div(
        [
            html.H2(TITLE, id="gpu-heading"),
            html.Div(id="gpu-intro", className="card"),
            html.Div(id="gpu-live", className="tiles"),
            html.Div(dcc.Graph(id="gpu-held-active", **graph), className="card"),
            html.H3("Allocated and active GPU hours"),
            html.Div(id="gpu-members", className="card"),
            html.Div(id="gpu-vos", className="card"),
            html.H3("By GPU model"),
            html.Div(id="gpu-models", className="card"),
            html.H3("Idle but held"),
            html.Div(id="gpu-idle", className="card"),
            html.H3("Utilisation per device"),
            html.Div(dcc.Graph(id="gpu-heatmap", **graph), className="card"),
            html.H3("MIG layout"),
            html.Div(id="gpu-mig", className="card"),
            html.H3("Access breadth"),
            html.Div(id="gpu-breadth", className="card"),
        ],
        id="gpus-page",
    )


# -- pure helpers (tested without a browser) ----------------------------------------------


def hours(totals: pd.DataFrame, by: str, names: dict[str, str] | None = None) -> pd.DataFrame:
    """`usage_totals(by=(by,), resources=HELD)` -> key, allocated and active GPU hours."""
    cols = ["key", "allocated", "active"]
    if totals.empty:
        return pd.DataFrame(columns=cols)
    wide = totals.pivot_table(index=by, columns="resource", values="amount", aggfunc="sum")
    wide = wide.reindex(columns=list(HELD)).fillna(0.0)
    wide = wide[wide[HELD[0]] > 0]
    keys = [(names or {}).get(str(k), str(k)) for k in wide.index]
    return pd.DataFrame(
        {"key": keys, "allocated": wide[HELD[0]].values / 3600,
         "active": wide[HELD[1]].values / 3600}, columns=cols,
    )  # fmt: skip


def held_active(df: pd.DataFrame, by: str) -> TableData:
    table = TableData(
        [
            Column("VO" if by == "vo" else by.title()),
            Column("Allocated [GPU-h]", True),
            Column("Active [GPU-h]", True),
            Column("Active / allocated", True),
        ],  # fmt: skip
        empty_message="No GPU was held in this window.",
    )
    for r in df.itertuples():
        table.rows.append([r.key, fmt_number(r.allocated), fmt_number(r.active),
                           f"{r.active / r.allocated:.0%}"])  # fmt: skip
    return table


def held_active_figure(df: pd.DataFrame, title: str = "GPU hours per member") -> go.Figure:
    if df.empty:
        return figures.empty_figure("GPU hours", "No GPU was held in this window.")
    fig = go.Figure()
    fig.add_bar(x=list(df["key"]), y=list(df["allocated"]), name="Allocated")
    fig.add_bar(x=list(df["key"]), y=list(df["active"]), name="Active")
    fig.update_layout(**PLOT_LAYOUT, barmode="group", title=title)
    fig.update_yaxes(title_text="GPU hours")
    return fig


def by_model(totals: pd.DataFrame, factors: dict[str, float]) -> TableData:
    """Per model class: allocated and active hours, the factor and normalised hours."""
    table = TableData(
        [
            Column("Model"),
            Column("Allocated [GPU-h]", True),
            Column("Active [GPU-h]", True),
            Column("Factor", True),
            Column("Normalised [GPU-h]", True),
        ],  # fmt: skip
        empty_message="No GPU was held in this window.",
    )
    sums = totals.groupby("resource")["amount"].sum() if not totals.empty else pd.Series()
    for m in GPU_MODELS:
        alloc = float(sums.get(f"gpu_{m}_allocated_seconds", 0.0))
        if alloc:
            active = float(sums.get(f"gpu_{m}_active_seconds", 0.0))
            f = factors.get(m, 1.0)
            table.rows.append([m.upper(), fmt_number(alloc / 3600), fmt_number(active / 3600),
                               fmt_number(f), fmt_number(alloc * f / 3600)])  # fmt: skip
    return table


def idle_table(df: pd.DataFrame, now: float, names: dict[str, str]) -> TableData:
    table = TableData(
        [
            Column("Member"),
            Column("Node"),
            Column("GPU"),
            Column("Model"),
            Column("Since"),
            Column("Until"),
            Column("Idle [h]", True),
        ],  # fmt: skip
        empty_message="No GPU was held idle in this window.",
    )
    for r in df.itertuples():
        end = None if pd.isna(r.end) else r.end
        table.rows.append([
            names.get(r.member_id, r.display_name), r.node, r.gpu, str(r.model).upper(),
            fmt_utc(r.start), "still idle" if end is None else fmt_utc(end),
            fmt_number(((end or now) - r.start) / 3600),
        ])  # fmt: skip
    return table


def mig_table(df: pd.DataFrame) -> TableData:
    table = TableData(
        [
            Column("Node"),
            Column("GPU"),
            Column("Kind"),
            Column("Model / parent"),
            Column("Slices", True),
            Column("Share of GPU", True),
            Column("Busy ratio from"),
            Column("Last seen"),
        ],  # fmt: skip
        empty_message="No GPU has reported in.",
    )
    for r in df.itertuples():
        what = f"{r.name} ({r.model})" if r.kind == "GPU" else f"in {r.parent}"
        table.rows.append([r.node, r.gpu, r.kind, what, r.slices or "", f"{r.fraction:.2f}",
                           r.busy_source or "device", fmt_utc(r.last_seen)])  # fmt: skip
    return table


def heatmap(df: pd.DataFrame) -> go.Figure:
    if df.empty:
        return figures.empty_figure("GPU", "No device utilisation in this window.")
    df = df.assign(device=df["node"] + " / " + df["gpu"])
    grid = df.pivot_table(index="device", columns="time", values="busy_ratio", aggfunc="mean")
    fig = go.Figure(go.Heatmap(z=grid.values * 100, x=list(grid.columns), y=list(grid.index),
                               zmin=0, zmax=100, colorbar={"title": "busy %"}))  # fmt: skip
    fig.update_layout(**PLOT_LAYOUT, title="Utilisation per device (mean per step)")
    fig.update_xaxes(title_text="Time (UTC)")
    return fig


def breadth_table(df: pd.DataFrame) -> TableData:
    """`gpu_breadth` rows -> how widely each facility's GPUs were shared (docs/gpu.md)."""
    columns = [
        Column("Facility"), Column("GPUs", True), Column("GPU hours", True),
        Column("Members served", True), Column("Members per GPU-day", True),
        Column("Several GPUs at once", True), Column("GPU session starts", True),
        Column("GPU session wait p95", True),
    ]  # fmt: skip
    rows = [
        [
            r.facility,
            fmt_number(r.gpus, count=True),
            fmt_number(r.gpu_hours),
            fmt_number(r.members_served, count=True),
            fmt_number(r.members_per_gpu_day),
            fmt_number(r.members_several_gpus, count=True),
            fmt_number(r.gpu_session_waits, count=True),
            "n/a"
            if pd.isna(r.gpu_session_wait_p95_seconds)
            else f"{r.gpu_session_wait_p95_seconds:,.1f} s",
        ]  # fmt: skip
        for r in df.itertuples(index=False)
    ]
    return TableData(columns, rows, "No GPU was held in this range.")


def register(app: Dash, ctx: Context) -> None:
    @app.callback(
        Output("gpu-breadth", "children"),
        Input("principal-picker", "value"),
        Input("range", "value"),
    )
    def _breadth(principal_key: str | None, range_key: str | None) -> Any:
        p = ctx.principal(principal_key)
        if p is None:
            return notice(PICK_MESSAGE)
        w = ctx.window(range_key)
        df = gpu_breadth(ctx.query, p, w.start, w.end, ctx.settings.gpu_profile_pattern)
        return render_table(breadth_table(df), "gpu-breadth-table")

    @app.callback(
        Output("gpu-intro", "children"),
        Output("gpu-live", "children"),
        Output("gpu-held-active", "figure"),
        Output("gpu-members", "children"),
        Output("gpu-vos", "children"),
        Output("gpu-models", "children"),
        Output("gpu-idle", "children"),
        Output("gpu-heatmap", "figure"),
        Output("gpu-mig", "children"),
        Input("principal-picker", "value"),
        Input("range", "value"),
    )
    def _gpus(principal_key: str | None, range_key: str | None) -> tuple[Any, ...]:
        p = ctx.principal(principal_key)
        if p is None:
            empty = figures.empty_figure("GPU hours", PICK_MESSAGE)
            return (notice(PICK_MESSAGE), [], empty, [], [], [], [], empty, [])
        return _render(ctx, p, range_key)


def _render(ctx: Context, p: Principal, range_key: str | None) -> tuple[Any, ...]:
    w = ctx.window(range_key)
    q = ctx.query
    names = figures.member_names(q.members(p))
    models = tuple(f"gpu_{m}_{k}_seconds" for m in GPU_MODELS for k in ("allocated", "active"))
    member_hours = hours(
        q.usage_totals(p, w.start, w.end, by=("member",), resources=HELD), "member", names
    )
    members = held_active(member_hours, "member")
    mine = p.role == "member"  # a member's GPU hours are theirs: never shown as their VO's
    vos: Any = [] if mine else render_table(held_active(
        hours(q.usage_totals(p, w.start, w.end, by=("vo",), resources=HELD), "vo"), "vo"
    ), "gpu-vos-table")  # fmt: skip
    model = by_model(q.usage_totals(p, w.start, w.end, by=("vo",), resources=models),
                     ctx.settings.gpu_model_factors)  # fmt: skip
    idle = idle_table(q.gpu_idle(p, w.start, w.end), ctx.clock(), names)
    if p.role == "facility_admin":
        step = 3600 if w.step == "hour" else 86400
        heat = heatmap(q.gpu_utilisation(p, w.start, w.end, step))
        mig: Any = render_table(mig_table(q.gpu_layout(p)), "gpu-mig-table")
    else:
        heat = figures.empty_figure("GPU", ADMIN_ONLY)
        mig = notice(ADMIN_ONLY, "gpu-mig-notice")
    intro = html.Div(f"GPU time held and busy, seen as {role_caption(p)}.", id="gpu-viewer")
    # the facility page's GPU tile, from the same read: the two never disagree
    live = live_now(q, p, ctx.clock()).gauge("gpus", "gpu-live")
    title = "Your GPU hours" if mine else "GPU hours per member"
    return (
        intro, live, held_active_figure(member_hours, title),
        render_table(members, "gpu-members-table"), vos,
        render_table(model, "gpu-models-table"), render_table(idle, "gpu-idle-table"),
        heat, mig,
    )  # fmt: skip
