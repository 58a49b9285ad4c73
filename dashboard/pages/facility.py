"""The facility page (`/`): usage per VO over time, totals per VO, active members, nodes."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from dash import Dash, Input, Output, dcc, html

from dashboard import figures
from dashboard.pages.common import (
    PICK_MESSAGE,
    Context,
    notice,
    render_table,
    render_tiles,
    role_caption,
)

PATH = "/"
TITLE = "Facility"
DEFAULT_RESOURCE = "cpu_seconds"


def layout() -> html.Div:
    return html.Div(
        [
            html.H2("Facility usage"),
            html.Div(id="fac-summary", className="card summary"),
            html.H3("Totals per VO in this range"),
            html.Div(id="fac-tiles", className="tiles"),
            html.Div(
                [
                    html.Label("Resource", htmlFor="fac-resource"),
                    dcc.Dropdown(
                        id="fac-resource",
                        options=figures.resource_options(),
                        value=DEFAULT_RESOURCE,
                        clearable=False,
                        className="picker",
                    ),
                    dcc.Loading(
                        dcc.Graph(id="fac-usage", config={"displaylogo": False}),
                        delay_show=300,
                    ),
                ],
                className="card",
            ),
            html.H3("Nodes"),
            html.Div(id="fac-nodes", className="card"),
        ],
        id="facility-page",
    )


def register(app: Dash, ctx: Context) -> None:
    @app.callback(
        Output("fac-summary", "children"),
        Output("fac-tiles", "children"),
        Output("fac-nodes", "children"),
        Input("principal-picker", "value"),
        Input("range", "value"),
    )
    def _overview(principal_key: str | None, range_key: str | None) -> tuple[Any, Any, Any]:
        p = ctx.principal(principal_key)
        if p is None:
            return notice(PICK_MESSAGE), [], []
        w = ctx.window(range_key)
        active = ctx.query.active_members(p, w.start, w.end)
        totals = ctx.query.usage_totals(p, w.start, w.end, by=("vo",),
                                        resources=figures.TILE_RESOURCES)
        tiles = figures.totals_tiles(totals, "vo")
        summary = [
            html.Div([
                html.Div("Viewing as"), html.Div(p.name, className="big", id="fac-viewer"),
                html.Div(role_caption(p)),
            ]),
            html.Div([
                html.Div("Active members"),
                html.Div(f"{active}", className="big", id="fac-active"),
                html.Div("members with any usage in this range" + (
                    " (unmapped accounts count as one per facility)"
                    if p.role == "facility_admin" else ""
                )),
            ]),
        ]
        if p.role == "facility_admin":
            nodes = render_table(figures.nodes_table(ctx.query.nodes(p)), "fac-nodes-table")
        else:
            nodes = html.Div("Node details are visible to facility admins only.",
                             className="empty", id="fac-nodes-table")
        return (
            summary,
            render_tiles(tiles, figures.EMPTY_USAGE),
            nodes,
        )

    @app.callback(
        Output("fac-usage", "figure"),
        Input("principal-picker", "value"),
        Input("range", "value"),
        Input("fac-resource", "value"),
    )
    def _usage(principal_key: str | None, range_key: str | None, resource: str | None) -> go.Figure:
        resource = resource or DEFAULT_RESOURCE
        p = ctx.principal(principal_key)
        if p is None:
            return figures.empty_figure(figures.display_unit(resource).axis, PICK_MESSAGE)
        w = ctx.window(range_key)
        df = ctx.query.usage_over_time(p, resource, w.start, w.end, by="vo", step=w.step)
        return figures.usage_figure(df, resource, "vo", w.start, w.end, w.step,
                                    title=f"{figures.display_unit(resource).title} by VO")
