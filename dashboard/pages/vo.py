"""The VO page (`/vo`): one VO's usage per group and per member over time, shares, the member
table (sort, filter, CSV) and the VO across facilities. The data come from
`afmon.dashboard.vo_view`; the VO, group, resource and name filter live in the URL
(`?vo=atlas&group=/atlas/higgs&resource=cpu_seconds&q=ali`), so a view can be shared."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dash_ag_grid as dag
from dash import Dash, Input, Output, State, dcc, html, no_update

from afmon.aggregator.query.reads import Principal
from afmon.aggregator.store.schema import RESOURCES
from afmon.dashboard import figures, theme
from afmon.dashboard.pages.common import (
    PICK_MESSAGE,
    Context,
    notice,
    render_table,
    render_tiles,
    role_caption,
    with_params,
)
from afmon.dashboard.vo_view import VoView, in_sentence, member_columns, vo_members, vo_view

PATH = "/vo"
TITLE = "VO"
URL_STATE = True
DEFAULT_RESOURCE = "cpu_seconds"
PAGE_SIZE = 25
PAGE_SIZES = [PAGE_SIZE, 50, 100]  # AG Grid warns (#94, #95) unless the size is among these
COUNTS = {"sessions"}  # columns of counts: integers, as the header's unit says


def layout(params: Mapping[str, str] | None = None) -> html.Div:
    params = params or {}
    resource = params.get("resource")
    resource = resource if resource in RESOURCES else DEFAULT_RESOURCE
    graph = {"displaylogo": False}
    return html.Div(
        [
            html.H2("VO usage", id="vo-heading"),
            html.Div(id="vo-intro", className="card"),
            html.Div(
                [
                    # the URL's choices are options until the callback knows what is allowed:
                    # a dropdown drops a value that is not among its options
                    _field(
                        "VO",
                        dcc.Dropdown(
                            id="vo-vo",
                            value=params.get("vo"),
                            options=_given(params, "vo"),
                            clearable=False,
                        ),
                    ),
                    _field(
                        "Group",
                        dcc.Dropdown(
                            id="vo-group",
                            value=params.get("group"),
                            placeholder="All groups",
                            options=_given(params, "group"),
                        ),
                    ),
                    _field(
                        "Resource",
                        dcc.Dropdown(
                            id="vo-resource",
                            value=resource,
                            options=figures.resource_options(),
                            clearable=False,
                        ),
                    ),
                    _field(
                        "Member name or ID contains",
                        dcc.Input(
                            id="vo-filter",
                            value=params.get("q", ""),
                            type="text",
                            debounce=True,
                            placeholder="e.g. alice",
                        ),
                    ),
                ],
                className="card filters",
            ),
            dcc.Loading(
                [
                    html.Div(id="vo-message"),
                    html.Div(id="vo-tiles", className="tiles"),
                    html.Div(dcc.Graph(id="vo-by-group", config=graph), className="card"),
                    html.Div(dcc.Graph(id="vo-by-member", config=graph), className="card"),
                    html.Div(dcc.Graph(id="vo-shares", config=graph), className="card"),
                    html.H3("Across facilities"),
                    html.Div(id="vo-facilities", className="card"),
                ],
                delay_show=300,
                type="dot",
            ),
            html.H3("Members"),
            html.Div(
                [
                    html.Div(
                        [
                            html.Button("Download CSV", id="vo-csv-button", className="button"),
                            html.Span(
                                "the members shown, with the filters above, in the units "
                                "of the headers",
                                className="hint",
                            ),
                        ],
                        className="row",
                    ),
                    dcc.Download(id="vo-csv"),
                    dag.AgGrid(
                        id="vo-table",
                        columnDefs=[],
                        rowData=[],
                        defaultColDef=theme.GRID_COLUMN,
                        dashGridOptions={
                            **theme.GRID_OPTIONS,
                            "paginationPageSize": PAGE_SIZE,
                            "paginationPageSizeSelector": PAGE_SIZES,
                        },
                        style={"width": "100%"},
                    ),
                    html.Div(id="vo-table-note", className="empty"),
                ],
                className="card",
            ),
        ],
        id="vo-page",
    )


def _given(params: Mapping[str, str], name: str) -> list[dict[str, str]]:
    return [{"label": params[name], "value": params[name]}] if params.get(name) else []


def _field(label: str, control: Any) -> html.Div:
    return html.Div([html.Label(label), control], className="field")


def _table_columns(resource: str, member: bool = False) -> list[dict[str, Any]]:
    """The member grid's columns: sortable and filterable; numbers right-aligned (counts as
    integers, amounts with 2 decimals or 2 significant figures below 0.01)."""
    cols = []
    for cid, header in member_columns(resource, member):
        col: dict[str, Any] = {"field": cid, "headerName": header}
        # the minimum widths add up to what a 1280-pixel window gives the grid: no scrolling
        if cid == "member":
            col.update(minWidth=140, flex=2)  # names in full
        elif cid == "member_id":
            # long issuer|subject IDs: wrapped, whole in the cell (and on hover)
            col.update(theme.GRID_WRAPPED, tooltipField="member_id", minWidth=130, flex=2)
        elif cid == "group":
            col.update(minWidth=105, tooltipField="group")
        elif cid in COUNTS:
            col.update(theme.GRID_COUNT)
        elif cid not in ("group", "facilities"):
            col.update(theme.GRID_NUMBER)
        cols.append(col)
    return cols


def _tiles(view: VoView, resource: str, p: Principal) -> list[Any]:
    du = figures.display_unit(resource)
    if p.role == "member":  # their own figures, never shown as the VO's
        total = figures.Tile("total", f"Your {in_sentence(du.title)}", [
            ("In this range", du.format(view.total))
        ])  # fmt: skip
        return render_tiles([total], "")
    tiles = [
        figures.Tile("total", f"{view.vo}: {du.title}", [("In this range", du.format(view.total))]),
        figures.Tile("members", "Members", [("With usage in this range", f"{view.active:,}")]),
    ]
    if view.share_of_visible is not None:
        tiles.append(
            figures.Tile("share", view.share_of, [(du.title, f"{view.share_of_visible:.1f} %")])
        )
    return render_tiles(tiles, "")


def _facilities(view: VoView, resource: str) -> Any:
    du = figures.display_unit(resource)
    df = view.facilities
    if df.empty:
        return html.Div(
            view.message or figures.EMPTY_USAGE, className="empty", id="vo-facilities-table"
        )
    table = figures.TableData(
        [
            figures.Column("Facility"),
            figures.Column(f"{du.title} [{du.unit}]", True),
            figures.Column("Share [%]", True),
            figures.Column("Members with usage", True),
        ]
    )
    for r in df.itertuples(index=False):
        table.rows.append(
            [str(r.facility), figures.fmt_plain(r.amount), f"{r.share:.1f}", f"{int(r.members):,}"]
        )
    note = "" if len(df) > 1 else f"This database holds usage of {view.vo} at one facility only."
    return [
        render_table(table, "vo-facilities-table"),
        html.Div(note, className="hint", id="vo-facilities-note"),
    ]


def register(app: Dash, ctx: Context) -> None:
    @app.callback(
        Output("vo-heading", "children"),
        Output("vo-intro", "children"),
        Output("vo-vo", "options"),
        Output("vo-vo", "value"),
        Output("vo-group", "options"),
        Output("vo-message", "children"),
        Output("vo-tiles", "children"),
        Output("vo-by-group", "figure"),
        Output("vo-by-member", "figure"),
        Output("vo-shares", "figure"),
        Output("vo-facilities", "children"),
        Output("vo-table", "columnDefs"),
        Output("vo-table", "rowData"),
        Output("vo-table-note", "children"),
        Input("principal-picker", "value"),
        Input("range", "value"),
        Input("vo-vo", "value"),
        Input("vo-group", "value"),
        Input("vo-resource", "value"),
        Input("vo-filter", "value"),
    )
    def _vo(
        principal_key: str | None,
        range_key: str | None,
        vo: str | None,
        group: str | None,
        resource: str | None,
        text: str | None,
    ) -> tuple[Any, ...]:
        resource = resource or DEFAULT_RESOURCE
        axis = figures.display_unit(resource).axis
        p = ctx.principal(principal_key)
        if p is None:
            empty = figures.empty_figure(axis, PICK_MESSAGE)
            return (
                "VO usage",
                notice(PICK_MESSAGE, "vo-viewer"),
                [],
                no_update,
                [],
                "",
                [],
                empty,
                empty,
                figures.empty_figure("Share [%]", PICK_MESSAGE),
                [],
                [],
                [],
                "",
            )
        view = vo_view(ctx.query, p, ctx.window(range_key), vo, group, resource, text or "")
        intro = html.Div(f"Viewing as {p.name} ({role_caption(p)}).", id="vo-viewer")
        member = p.role == "member"
        heading = f"Your usage in {view.vo}" if member and view.vo else "VO usage"
        vo_options = [{"label": v, "value": v} for v in view.vos]
        if view.vo and view.vo not in view.vos:  # asked for in the URL: keep it, marked
            vo_options.append({"label": f"{view.vo} (not allowed)", "value": view.vo})
        group_options = [{"label": g, "value": g} for g in view.groups]
        message = html.Div(view.message, className="notice", id="vo-notice") if view.message else ""
        if view.by_group is None:  # not allowed, or no members at all: show nothing else
            empty = figures.empty_figure(axis, view.message)
            return (
                heading,
                intro,
                vo_options,
                view.vo,
                group_options,
                message,
                [],
                empty,
                empty,
                figures.empty_figure("Share [%]", view.message),
                [],
                _table_columns(resource, member),
                [],
                view.message,
            )
        rows = view.members.to_dict("records")
        table_note = (
            ""
            if rows
            else (f"No member matches {text!r}." if text else view.message or figures.EMPTY_USAGE)
        )
        return (
            heading,
            intro,
            vo_options,
            view.vo,
            group_options,
            message,
            _tiles(view, resource, p),
            view.by_group,
            view.by_member,
            view.shares,
            _facilities(view, resource),
            _table_columns(resource, member),
            rows,
            table_note,
        )

    @app.callback(
        Output("vo-csv", "data"),
        Input("vo-csv-button", "n_clicks"),
        State("principal-picker", "value"),
        State("range", "value"),
        State("vo-vo", "value"),
        State("vo-group", "value"),
        State("vo-resource", "value"),
        State("vo-filter", "value"),
        prevent_initial_call=True,
    )
    def _csv(
        _clicks: int | None,
        principal_key: str | None,
        range_key: str | None,
        vo: str | None,
        group: str | None,
        resource: str | None,
        text: str | None,
    ) -> Any:
        p = ctx.principal(principal_key)
        if p is None:
            return no_update
        resource = resource or DEFAULT_RESOURCE
        w = ctx.window(range_key)
        found = vo_members(ctx.query, p, w, vo, group, resource, text or "")
        if found is None:
            return no_update
        shown_vo, members = found
        frame = members.rename(columns=dict(member_columns(resource, p.role == "member")))
        day = figures.fmt_utc(w.start)[:10]
        name = f"afmon-{shown_vo}-members-{day}-{w.key.split(':')[0]}.csv"
        return {
            "content": frame.to_csv(index=False),
            "filename": name,
            "type": "text/csv",
            "base64": False,
        }

    @app.callback(
        Output("url", "search", allow_duplicate=True),
        Input("vo-vo", "value"),
        Input("vo-group", "value"),
        Input("vo-resource", "value"),
        Input("vo-filter", "value"),
        State("url", "search"),
        prevent_initial_call=True,
    )
    def _to_url(
        vo: str | None,
        group: str | None,
        resource: str | None,
        text: str | None,
        search: str | None,
    ) -> str:
        new = with_params(search, vo=vo, group=group, resource=resource, q=text)
        return no_update if new == (search or "") else new
