"""The Facilities page (`/facilities`): the facilities the viewer sees, side by side: active
members, CPU hours, sessions, interactive SLO attainment, the data-source mix, batch CPU
efficiency and GPU busy share (aggregator/query/comparison.py). On a VO-level afmon that
receives the ledgers of several facilities (docs/federation.md) it compares them; a member
sees their own use per facility."""

from __future__ import annotations

from typing import Any

import pandas as pd
from dash import Dash, Input, Output, html

from afmon.aggregator.query.comparison import facility_comparison
from afmon.dashboard.figures import Column, TableData, fmt_number
from afmon.dashboard.pages.common import PICK_MESSAGE, Context, notice, render_table

PATH = "/facilities"
TITLE = "Facilities"


def layout() -> html.Div:
    return html.Div(
        [
            html.H2("Facilities side by side", id="fcmp-heading"),
            html.Div(id="fcmp-intro", className="card"),
            html.Div(id="fcmp-table", className="card"),
        ],
        id="facilities-page",
    )


def _share(value: Any) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{100 * float(value):.1f} %"


def _seconds(value: Any) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{float(value):,.1f} s"


def comparison_table(df: pd.DataFrame, mine: bool) -> TableData:
    """`facility_comparison` rows -> one display row per facility."""
    columns = [
        Column("Facility"),
        Column("Active members", True),
        Column("Your CPU hours" if mine else "CPU hours", True),
        Column("Sessions", True),
        Column("Time to session p95", True),
        Column("Within SLO", True),
        Column("First worker p95", True),
        Column("Within SLO (worker)", True),
        Column("Read local", True),
        Column("Read cache", True),
        Column("Read remote", True),
        Column("Batch CPU efficiency", True),
        Column("GPU busy", True),
    ]
    rows = [
        [
            r.facility,
            fmt_number(r.active_members, count=True),
            fmt_number(r.cpu_hours),
            fmt_number(r.sessions, count=True),
            _seconds(r.time_to_session_p95_seconds),
            _share(r.time_to_session_within_slo_ratio),
            _seconds(r.time_to_first_worker_p95_seconds),
            _share(r.time_to_first_worker_within_slo_ratio),
            _share(r.data_read_local_share),
            _share(r.data_read_cache_share),
            _share(r.data_read_remote_share),
            _share(r.batch_cpu_efficiency),
            _share(r.gpu_busy_ratio),
        ]
        for r in df.itertuples(index=False)
    ]
    return TableData(columns, rows, "No facility has usage in this range.")


def intro(p_role: str, n: int) -> str:
    whose = {
        "member": "Your own use",
        "vo_manager": "Your VO's use",
    }.get(p_role, "Use")
    return (
        f"{whose} at {n} facilit{'y' if n == 1 else 'ies'} in this range. Percentiles and SLO "
        "shares are those of successful waits; data shares are of the bytes read via XRootD."
    )


def register(app: Dash, ctx: Context) -> None:
    @app.callback(
        Output("fcmp-intro", "children"),
        Output("fcmp-table", "children"),
        Input("principal-picker", "value"),
        Input("range", "value"),
    )
    def _facilities(principal_key: str | None, range_key: str | None) -> tuple[Any, Any]:
        p = ctx.principal(principal_key)
        if p is None:
            return notice(PICK_MESSAGE), []
        w = ctx.window(range_key)
        df = facility_comparison(ctx.query, p, w.start, w.end, ctx.settings.latency_slo_seconds)
        table = comparison_table(df, p.role == "member")
        return intro(p.role, len(df)), render_table(table, "fcmp-grid")
