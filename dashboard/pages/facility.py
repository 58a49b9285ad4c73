"""The facility page (`/`): live use against capacity, open sessions and Dask clusters, SLO
tiles, firing alerts and top VOs; then usage per VO over time, totals per VO, nodes and, for
facility admins only, the records ingest refused (the quarantine). The resource shown over time
lives in the URL (`?resource=memory_byte_seconds`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from dash import Dash, Input, Output, State, dcc, html, no_update

from afmon.aggregator.query.reads import Principal
from afmon.aggregator.store.schema import RESOURCES
from afmon.dashboard import figures
from afmon.dashboard.facility_live import live_view, top_heading
from afmon.dashboard.figures import Column, TableData, fmt_number, fmt_utc
from afmon.dashboard.pages.common import (
    PICK_MESSAGE,
    Context,
    notice,
    render_table,
    render_tiles,
    role_caption,
    titled,
    with_params,
)

PATH = "/"
TITLE = "Facility"
DEFAULT_RESOURCE = "cpu_seconds"
URL_STATE = True
QUARANTINE_NEWEST = 20  # records listed one by one; the counts cover them all


def quarantine_counts_table(df: pd.DataFrame) -> TableData:
    """`Query.quarantine` counts -> per facility and reason: records waiting, newest (UTC)."""
    table = TableData(
        [Column("Facility"), Column("Reason"), Column("Records", True), Column("Newest")],
        empty_message="No refused records: every record sent was accepted.",
    )
    for r in df.itertuples(index=False):
        table.rows.append(
            [r.facility, r.reason, fmt_number(r.records, count=True), fmt_utc(r.last_received)]
        )
    return table


def quarantine_records_table(df: pd.DataFrame) -> TableData:
    """`Query.quarantine` records -> newest first: when, where from, why."""
    table = TableData(
        [Column("Received"), Column("Facility"), Column("Agent"), Column("Node"),
         Column("Kind"), Column("Reason"), Column("Field"), Column("Message")],
        empty_message="No refused records.",
    )  # fmt: skip
    for r in df.itertuples(index=False):
        table.rows.append(
            [fmt_utc(r.received_at), r.facility, r.agent_id, r.node, r.kind, r.reason, r.field,
             r.message]
        )  # fmt: skip
    return table


def quarantine_view(p: Principal, counts: pd.DataFrame, records: pd.DataFrame) -> list[Any]:
    """The quarantine card: nothing at all for anyone but a facility admin; for an admin the
    pending records counted by facility and reason, the newest ones, and how to replay them."""
    if p.role != "facility_admin":
        return []
    heading = html.H3("Refused records (quarantine)")
    summary = render_table(quarantine_counts_table(counts), "fac-quarantine-counts")
    if records.empty:
        return [heading, html.Div(summary, className="card")]
    total = int(counts["records"].sum())
    where = f" --facility {p.facility}" if p.facility else ""
    hint = html.Div(
        [
            "Records that ingest refused while the rest of their batch was applied, kept as "
            "sent and not replayed yet (all of them, whatever the range). After fixing the "
            "cause (a limit raised, a clock set right; docs/accounting.md) apply them once with ",
            html.Code(f"afmon quarantine replay{where} --reason REASON"),
            "; those that can never apply (the producer's fault) go with ",
            html.Code(f"afmon quarantine drop{where} --reason REASON"),
            ".",
        ],
        className="hint",
        id="fac-quarantine-hint",
    )
    newest: list[Any] = [render_table(quarantine_records_table(records), "fac-quarantine-records")]
    if total > len(records):
        newest.append(
            html.Div(
                [
                    f"The newest {len(records)} of {total} records; ",
                    html.Code("afmon quarantine list"),
                    " shows them all, as sent.",
                ],
                className="hint",
            )  # fmt: skip
        )
    return [
        heading,
        hint,
        html.Div(summary, className="card"),
        html.Div(newest, className="card"),
    ]


def layout(params: Mapping[str, str] | None = None) -> html.Div:
    resource = (params or {}).get("resource")
    resource = resource if resource in RESOURCES else DEFAULT_RESOURCE
    return html.Div(
        [
            html.H2("Facility usage"),
            html.Div(id="fac-summary", className="card summary"),
            html.H3("Now"),
            dcc.Loading(html.Div(id="fac-live", className="tiles"), delay_show=300, type="dot"),
            html.H3("Top VOs in this range", id="fac-top-heading"),
            html.Div(id="fac-top-vos", className="card"),
            html.H3("Totals per VO in this range", id="fac-tiles-heading"),
            html.Div(id="fac-tiles", className="tiles"),
            html.Div(
                [
                    html.Label("Resource", htmlFor="fac-resource"),
                    dcc.Dropdown(
                        id="fac-resource",
                        options=figures.resource_options(),
                        value=resource,
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
            html.Div(id="fac-quarantine"),  # facility admins only: filled by its callback
        ],
        id="facility-page",
    )


def register(app: Dash, ctx: Context) -> None:
    @app.callback(
        Output("fac-summary", "children"),
        Output("fac-tiles-heading", "children"),
        Output("fac-tiles", "children"),
        Output("fac-nodes", "children"),
        Input("principal-picker", "value"),
        Input("range", "value"),
    )
    def _overview(principal_key: str | None, range_key: str | None) -> tuple[Any, ...]:
        p = ctx.principal(principal_key)
        if p is None:
            return notice(PICK_MESSAGE), "Totals in this range", [], []
        w = ctx.window(range_key)
        active = ctx.query.active_members(p, w.start, w.end)
        totals = ctx.query.usage_totals(
            p, w.start, w.end, by=("vo",), resources=figures.TILE_RESOURCES
        )
        now = ctx.clock()
        running = ctx.query.running_sessions(p, w.start, w.end, now, by="vo")
        keys = [*(totals["vo"] if not totals.empty else []), *running["vo"]]
        mine = {} if p.role != "member" else dict.fromkeys(map(str, keys), "You")
        tiles = figures.totals_tiles(totals, "vo", names=mine, running=running)
        heading = {
            "member": "Your totals in this range",
            "vo_manager": f"Totals of {p.vo} in this range",
        }.get(p.role, "Totals per VO in this range")
        summary = [
            html.Div(
                [
                    html.Div("Viewing as"),
                    html.Div(p.name, className="big", id="fac-viewer"),
                    html.Div(role_caption(p)),
                ]
            ),
            html.Div(
                [
                    html.Div("Active members"),
                    html.Div(f"{active}", className="big", id="fac-active"),
                    html.Div(
                        "members with any usage in this range"
                        + (
                            " (unmapped accounts count as one per facility)"
                            if p.role == "facility_admin"
                            else ""
                        )
                    ),
                ]
            ),
        ]
        if p.role == "facility_admin":
            nodes = render_table(
                figures.nodes_table(ctx.query.nodes(p, now), now), "fac-nodes-table"
            )
        else:
            nodes = html.Div(
                "Node details are visible to facility admins only.",
                className="empty",
                id="fac-nodes-table",
            )
        return (
            summary,
            heading,
            render_tiles(tiles, figures.EMPTY_USAGE),
            nodes,
        )

    @app.callback(
        Output("fac-quarantine", "children"),
        Input("principal-picker", "value"),
    )
    def _quarantine(principal_key: str | None) -> list[Any]:
        p = ctx.principal(principal_key)
        if p is None or p.role != "facility_admin":
            return []  # a refused record can name any member: nothing of it for others
        counts, records = ctx.query.quarantine(p, newest=QUARANTINE_NEWEST)
        return quarantine_view(p, counts, records)

    @app.callback(
        Output("fac-live", "children"),
        Output("fac-top-heading", "children"),
        Output("fac-top-vos", "children"),
        Input("principal-picker", "value"),
        Input("range", "value"),
    )
    def _live(principal_key: str | None, range_key: str | None) -> tuple[Any, Any, Any]:
        p = ctx.principal(principal_key)
        if p is None:
            return notice(PICK_MESSAGE, "fac-live-notice"), "Top VOs in this range", []
        w = ctx.window(range_key)
        view = live_view(ctx.query, p, w, ctx.clock(), ctx.settings.latency_slo_seconds)
        return view.tiles(), top_heading(p), render_table(view.top_vos, "fac-top-vos-table")

    @app.callback(
        Output("url", "search", allow_duplicate=True),
        Input("fac-resource", "value"),
        State("url", "search"),
        prevent_initial_call=True,
    )
    def _to_url(resource: str | None, search: str | None) -> Any:
        new = with_params(search, resource=None if resource == DEFAULT_RESOURCE else resource)
        return no_update if new == (search or "") else new

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
        what = figures.display_unit(resource).title
        mine = {} if df.empty or p.role != "member" else dict.fromkeys(df["vo"], "You")
        return figures.usage_figure(
            df,
            resource,
            "vo",
            w.start,
            w.end,
            w.step,
            names=mine,
            title=titled(p, what) if p.role != "facility_admin" else f"{what} by VO",
            colours=ctx.vo_colours(),
        )
