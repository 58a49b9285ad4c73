"""The Usage patterns page (`/usage`): failure rates of batch jobs, server starts and Dask
computations, failed batch jobs by state and exit code, active members per week by access
method, and bytes read per input data format. Rules: docs/data.md."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from dash import Dash, Input, Output, dcc, html

from afmon.aggregator.query import access, failures, formats
from afmon.aggregator.query.reads import Principal
from afmon.dashboard import figures
from afmon.dashboard.figures import Column, TableData, fmt_number
from afmon.dashboard.pages.common import PICK_MESSAGE, Context, notice, render_table, role_caption

PATH = "/usage"
TITLE = "Usage patterns"
ACTIVITIES = {
    "batch": "Batch jobs",
    "session_start": "Session starts",
    "dask_computation": "Dask computations",
}
METHODS = {
    "all": "All active",
    "notebook": "Notebook",
    "terminal": "Terminal / ssh",
    "dask": "Dask",
    "batch": "Batch",
    "data_only": "Data access only",
    "other": "Other",
}
FORMAT_NAMES = {
    "physlite": "PHYSLITE",
    "daod": "DAOD",
    "aod": "AOD",
    "miniaod": "MiniAOD",
    "nanoaod": "NanoAOD",
    "ntuple": "ntuple",
    "other": "other",
}
GB = 1e9


def layout() -> html.Div:
    return html.Div(
        [
            html.H2("Usage patterns", id="use-heading"),
            html.Div(id="use-intro", className="card"),
            html.H3("Failure rates"),
            html.Div(id="use-failures", className="card"),
            html.H3("Failed batch jobs by state and exit code"),
            html.Div(id="use-batch-failures", className="card"),
            html.H3("Active members by access method"),
            html.Div(id="use-access", className="card"),
            html.H3("Active members by home institution"),
            html.Div(id="use-institutions", className="card"),
            html.H3("Data read by input format"),
            html.Div(id="use-formats", className="card"),
            html.Div(
                dcc.Graph(id="use-format-bytes", config={"displaylogo": False}), className="card"
            ),  # fmt: skip
        ],
        id="usage-page",
    )


# -- pure helpers (tested without a browser) ----------------------------------------------


def _name(key: str, by: str, names: Mapping[str, str]) -> str:
    return names.get(key, key) if by == "member" else key


def failure_table(df: pd.DataFrame, by: str, names: Mapping[str, str]) -> TableData:
    """`failures.failure_rates` -> one row per (key, activity)."""
    table = TableData(
        [Column("Member" if by == "member" else by.upper()), Column("Activity"),
         Column("Starts", True), Column("Failed", True), Column("Timed out", True),
         Column("Cancelled", True), Column("Failure rate", True)],
        empty_message="Nothing started in this range.",
    )  # fmt: skip
    for r in df.itertuples(index=False):
        table.rows.append([
            _name(str(getattr(r, by)), by, names), ACTIVITIES[r.activity],
            fmt_number(r.starts, count=True), fmt_number(r.failed, count=True),
            fmt_number(r.timed_out, count=True), fmt_number(r.cancelled, count=True),
            f"{r.failure_rate:.0%}",
        ])  # fmt: skip
    return table


def batch_failure_table(df: pd.DataFrame, names: Mapping[str, str]) -> TableData:
    """`failures.batch_failures(by="member")` -> one row per (member, state, exit code)."""
    table = TableData(
        [Column("Member"), Column("State"), Column("Exit code", True), Column("Jobs", True)],
        empty_message="Every batch job that started in this range succeeded.",
    )
    for r in df.itertuples(index=False):
        table.rows.append([
            names.get(r.member, r.member), r.state, str(r.exit_code),
            fmt_number(r.jobs, count=True),
        ])  # fmt: skip
    return table


UNKNOWN_INSTITUTION = "(unknown)"  # members whose identity entry names none


def access_table(df: pd.DataFrame) -> TableData:
    """`access.active_by_method` -> one row per period (and institution, when `df` has them),
    one column per method."""
    keys = ["period", "institution"] if "institution" in df.columns else ["period"]
    head = [Column("Week"), *([Column("Institution")] if len(keys) > 1 else [])]
    table = TableData(
        [*head, *(Column(label, True) for label in METHODS.values())],
        empty_message="No member was active in this range.",
    )
    for key, g in df.groupby(keys, sort=True):
        counts = dict(zip(g["method"], g["members"], strict=True))
        cells = [str(k) or UNKNOWN_INSTITUTION for k in key]
        table.rows.append([*cells, *(fmt_number(counts.get(m, 0), count=True) for m in METHODS)])
    return table


def format_table(df: pd.DataFrame, names: Mapping[str, str]) -> TableData:
    """`formats.read_by_format(by="member")` -> one row per (member, format)."""
    table = TableData(
        [Column("Member"), Column("Format"), Column("Read [GB]", True), Column("Files", True)],
        empty_message="No data read via XRootD with a known format in this range.",
    )
    for r in df.itertuples(index=False):
        table.rows.append([
            names.get(r.member, r.member), FORMAT_NAMES[r.format],
            fmt_number(r.read_bytes / GB), fmt_number(r.files, count=True),
        ])  # fmt: skip
    return table


def format_figure(df: pd.DataFrame) -> go.Figure:
    """Bytes read per format (GB), the caller's scope summed."""
    axis = "Read via XRootD [GB]"
    if df.empty:
        return figures.empty_figure(axis, "No data read with a known format in this range.")
    sums = df.groupby("format")["read_bytes"].sum().reindex(list(FORMAT_NAMES)).dropna()
    fig = go.Figure(go.Bar(x=[FORMAT_NAMES[f] for f in sums.index], y=(sums / GB).tolist(),
                           name="read"))  # fmt: skip
    fig.update_layout(title="Data read by input format", yaxis_title=axis, showlegend=False)
    return fig


# -- callbacks ----------------------------------------------------------------------------


def register(app: Dash, ctx: Context) -> None:
    @app.callback(
        Output("use-intro", "children"),
        Output("use-failures", "children"),
        Output("use-batch-failures", "children"),
        Output("use-access", "children"),
        Output("use-institutions", "children"),
        Output("use-formats", "children"),
        Output("use-format-bytes", "figure"),
        Input("principal-picker", "value"),
        Input("range", "value"),
    )
    def _usage(principal_key: str | None, range_key: str | None) -> tuple[Any, ...]:
        p = ctx.principal(principal_key)
        if p is None:
            empty = figures.empty_figure("Read via XRootD [GB]", PICK_MESSAGE)
            return notice(PICK_MESSAGE), [], [], [], [], [], empty
        return _render(ctx, p, range_key)


def _render(ctx: Context, p: Principal, range_key: str | None) -> tuple[Any, ...]:
    w = ctx.window(range_key)
    q = ctx.query
    names = figures.member_names(q.members(p))
    by = "member"
    rates = failures.failure_rates(q, p, w.start, w.end, by=by)
    batch = failures.batch_failures(q, p, w.start, w.end, by="member")
    methods = access.active_by_method(q, p, w.start, w.end, period="week")
    homes = access.active_by_method(q, p, w.start, w.end, period="week", by="institution")
    read = formats.read_by_format(q, p, w.start, w.end, by="member")
    intro = html.Div(
        [
            html.Div(f"Viewing as {p.name} ({role_caption(p)}).", id="use-viewer"),
            html.Div(
                "Failure rate = failed / starts; a timed-out start is a failure, a cancelled "
                "one is not. Active members count under every access method they used."
            ),
        ]
    )
    return (
        intro,
        render_table(failure_table(rates, by, names), "use-failures-table"),
        render_table(batch_failure_table(batch, names), "use-batch-failures-table"),
        render_table(access_table(methods), "use-access-table"),
        render_table(access_table(homes), "use-institutions-table"),
        render_table(format_table(read, names), "use-formats-table"),
        format_figure(read),
    )
