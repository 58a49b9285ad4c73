"""The alerts page (`/alerts`): firing alerts first, then the last resolved ones."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from dash import Dash, Input, Output, html

from afmon.dashboard.figures import Column, TableData, fmt_utc
from afmon.dashboard.pages.common import PICK_MESSAGE, Context, notice, render_table

PATH = "/alerts"
TITLE = "Alerts"
RECENT_RESOLVED = 20


def alerts_table(df: pd.DataFrame, empty: str) -> TableData:
    """Rows of display strings: alert, severity, where, value, since, summary."""
    columns = [
        Column("alert"),
        Column("severity"),
        Column("where"),
        Column("value", numeric=True),
        Column("since (UTC)"),
        Column("resolved (UTC)"),
        Column("summary"),
    ]
    rows = []
    for r in df.itertuples(index=False):
        labels = json.loads(r.labels)
        where = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
        resolved = fmt_utc(r.resolved_at) if r.status == "resolved" else ""
        rows.append(
            [
                r.rule,
                r.severity,
                where,
                f"{r.value:.4g}",
                fmt_utc(r.active_since),
                resolved,
                r.summary,
            ]
        )
    return TableData(columns, rows, empty)


def layout() -> html.Div:
    return html.Div(
        [
            html.H2("Alerts"),
            html.H3("Firing alerts"),
            html.Div(id="alerts-firing", className="card"),
            html.H3("Recently resolved"),
            html.Div(id="alerts-resolved", className="card"),
        ],
        id="alerts-page",
    )


def register(app: Dash, ctx: Context) -> None:
    @app.callback(
        Output("alerts-firing", "children"),
        Output("alerts-resolved", "children"),
        Input("principal-picker", "value"),
        Input("range", "value"),
    )
    def _alerts(principal_key: str | None, _range: str | None) -> tuple[Any, Any]:
        p = ctx.principal(principal_key)
        if p is None:
            return notice(PICK_MESSAGE), []
        firing = ctx.query.alerts(p, ("firing",))
        resolved = ctx.query.alerts(p, ("resolved",)).head(RECENT_RESOLVED)
        return (
            render_table(alerts_table(firing, "No alert is firing."), "alerts-firing-table"),
            render_table(
                alerts_table(resolved, "No alert was resolved yet."), "alerts-resolved-table"
            ),
        )
