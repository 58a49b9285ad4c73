"""The member page (`/member`): my usage over time, my totals and my sessions.

A member sees only themself; a VO manager or facility admin sees the same page with one
colour per member they may see.
"""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, dcc, html

from afmon.aggregator.query.reads import OTHERS
from afmon.dashboard import figures
from afmon.dashboard.pages.common import (
    PICK_MESSAGE,
    Context,
    notice,
    render_table,
    render_tiles,
    role_caption,
)

PATH = "/member"
TITLE = "My usage"
MAX_SESSIONS = 100  # the newest sessions listed; a page of thousands helps nobody
TOP_MEMBERS = 10  # a manager or admin sees the largest members one by one, the rest as one
# (graph id, resource) shown over time
GRAPHS: tuple[tuple[str, str], ...] = (
    ("mem-cpu", "cpu_seconds"),
    ("mem-memory", "memory_byte_seconds"),
    ("mem-session-time", "session_seconds"),
)


def layout() -> html.Div:
    return html.Div(
        [
            html.H2("My usage", id="mem-heading"),
            html.Div(id="mem-intro", className="card"),
            html.Div(id="mem-tiles", className="tiles"),
            *[
                html.Div(dcc.Graph(id=gid, config={"displaylogo": False}), className="card")
                for gid, _r in GRAPHS
            ],
            html.H3("Sessions"),
            html.Div(id="mem-sessions", className="card"),
        ],
        id="member-page",
    )


def register(app: Dash, ctx: Context) -> None:
    @app.callback(
        Output("mem-heading", "children"),
        Output("mem-intro", "children"),
        Output("mem-tiles", "children"),
        *[Output(gid, "figure") for gid, _r in GRAPHS],
        Output("mem-sessions", "children"),
        Input("principal-picker", "value"),
        Input("range", "value"),
    )
    def _member(principal_key: str | None, range_key: str | None) -> tuple[Any, ...]:
        p = ctx.principal(principal_key)
        if p is None:
            empty = [
                figures.empty_figure(figures.display_unit(r).axis, PICK_MESSAGE) for _g, r in GRAPHS
            ]
            return (TITLE, notice(PICK_MESSAGE), [], *empty, [])
        w = ctx.window(range_key)
        names = figures.member_names(ctx.query.members(p))
        if p.role == "member":
            heading, intro = TITLE, f"Usage of {p.name}, and nobody else's."
        else:
            heading = "Usage per member"
            intro = f"You are not a member: showing every member you may see ({role_caption(p)})."
        totals = ctx.query.usage_totals(
            p, w.start, w.end, by=("member",), resources=figures.TILE_RESOURCES
        )
        tiles = figures.totals_tiles(totals, "member", names=names, limit=TOP_MEMBERS)
        more = totals["member"].nunique() - TOP_MEMBERS if not totals.empty else 0
        figs = []
        for _g, r in GRAPHS:
            # the largest members of this resource one by one, the rest summed by the query
            ranked = totals[totals["resource"] == r].sort_values(
                ["amount", "member"], ascending=[False, True], kind="stable"
            )
            folded = max(0, len(ranked) - TOP_MEMBERS)
            keep = tuple(ranked["member"].head(TOP_MEMBERS)) if folded else None
            df = ctx.query.usage_over_time(
                p, r, w.start, w.end, by="member", step=w.step, keep=keep
            )
            labels = {**names, OTHERS: f"Other members ({folded})"}
            figs.append(figures.usage_figure(df, r, "member", w.start, w.end, w.step, names=labels))
        if more > 0:
            intro += (
                f" The {TOP_MEMBERS} largest CPU users are shown one by one, {more:,} more "
                "as one; the VO page lists every member."
            )
        shown = ctx.query.sessions(p, w.start, w.end, newest=MAX_SESSIONS)
        sessions = figures.sessions_table(shown, ctx.clock(), names)
        found = ctx.query.session_count(p, w.start, w.end) if len(shown) == MAX_SESSIONS else 0
        if found > MAX_SESSIONS:
            sessions.rows.append(
                [
                    f"... and {found - MAX_SESSIONS:,} older sessions in "
                    "this range (narrow the range to see them)",
                    *[""] * 5,
                ]
            )
        return (
            heading,
            html.Div(intro, id="mem-viewer"),
            render_tiles(tiles, figures.EMPTY_USAGE),
            *figs,
            render_table(sessions, "mem-sessions-table"),
        )
