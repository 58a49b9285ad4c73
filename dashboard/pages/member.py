"""The member page (`/member`): my usage over time, my totals and my sessions.

A member sees only themself; a VO manager or facility admin sees the same page with one
colour per member they may see.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from dash import Dash, Input, Output, dcc, html

from afmon.aggregator.query import events_list
from afmon.aggregator.query.reads import OTHERS
from afmon.dashboard import figures
from afmon.dashboard.colours import PALETTE, assign
from afmon.dashboard.jobs_table import jobs_table
from afmon.dashboard.pages.common import (
    PICK_MESSAGE,
    Context,
    notice,
    render_table,
    render_tiles,
    role_caption,
    titled,
)

PATH = "/member"
TITLE = "My usage"
MAX_SESSIONS = 100  # the newest sessions listed; a page of thousands helps nobody
# a manager or admin sees the largest members one by one, each in a colour of its own, the
# rest as one grey trace
TOP_MEMBERS = len(PALETTE)
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
            html.H3("Batch jobs"),
            html.Div(id="mem-jobs", className="card"),
        ],
        id="member-page",
    )


def register(app: Dash, ctx: Context) -> None:
    @app.callback(
        Output("mem-jobs", "children"),
        Input("principal-picker", "value"),
        Input("range", "value"),
    )
    def _jobs(principal_key: str | None, range_key: str | None) -> Any:
        """The newest batch jobs started in the range (at most `MAX_JOBS`), with efficiency."""
        p = ctx.principal(principal_key)
        if p is None:
            return notice(PICK_MESSAGE)
        w = ctx.window(range_key)
        jobs = events_list.batch_jobs(ctx.query, p, w.start, w.end)
        names = figures.member_names(ctx.query.members(p))
        hint = html.Div(
            f"The newest {events_list.MAX_JOBS} jobs that started in this range are listed "
            "at most. CPU efficiency = CPU time / (wall time x cores).",
            className="hint",
        )
        return [hint, render_table(jobs_table(jobs, names), "mem-jobs-table")]

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
        mine = p.role == "member"
        tile_names = {p.member_id: "Your usage"} if mine and p.member_id else names
        now = ctx.clock()
        running = ctx.query.running_sessions(p, w.start, w.end, now, by="member")
        tiles = figures.totals_tiles(
            totals, "member", names=tile_names, limit=TOP_MEMBERS, running=running
        )
        more = totals["member"].nunique() - TOP_MEMBERS if not totals.empty else 0
        tops = []
        for _g, r in GRAPHS:
            # the largest members of this resource one by one, the rest summed by the query
            ranked = totals[totals["resource"] == r].sort_values(
                ["amount", "member"], ascending=[False, True], kind="stable"
            )
            tops.append((r, ranked, max(0, len(ranked) - TOP_MEMBERS)))
        # one colour per member for the page: the same member, the same colour in each chart
        colours = assign(m for _r, ranked, _f in tops for m in ranked["member"].head(TOP_MEMBERS))
        figs = []
        for r, ranked, folded in tops:
            keep = tuple(ranked["member"].head(TOP_MEMBERS)) if folded else None
            df = ctx.query.usage_over_time(
                p, r, w.start, w.end, by="member", step=w.step, keep=keep
            )
            labels = {**names, OTHERS: f"Other members ({folded})"}
            what = figures.display_unit(r).title
            figs.append(
                figures.usage_figure(
                    df,
                    r,
                    "member",
                    w.start,
                    w.end,
                    w.step,
                    names=labels,
                    title=titled(p, what) if mine else f"{titled(p, what)} by member",
                    colours=colours,
                )
            )
        if more > 0:
            intro += (
                f" The {TOP_MEMBERS} largest CPU users are shown one by one, {more:,} more "
                "as one; the VO page lists every member."
            )
        shown = ctx.query.sessions(p, w.start, w.end, newest=MAX_SESSIONS)
        sessions = figures.sessions_table(shown, now, names)
        found = ctx.query.session_count(p, w.start, w.end) if len(shown) == MAX_SESSIONS else 0
        started = totals[totals["resource"] == "sessions"]["amount"].sum() if len(totals) else 0
        summary = sessions_summary(max(found, len(shown)), int(started), running)
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
            [summary, render_table(sessions, "mem-sessions-table")],
        )


def sessions_summary(listed: int, started: int, running: pd.DataFrame) -> html.Div:
    """How the sessions in the table relate to the totals: those that started in the range
    and ended (what the ledger counts), those still running (their time so far in the tiles'
    "Running now"), and those that began before the range (their time inside it counted)."""
    live = int(running["sessions"].sum()) if not running.empty else 0
    before = max(0, listed - started - live)
    word = "session" if listed == 1 else "sessions"
    return html.Div(
        f"{listed:,} {word} in this range: {started:,} started in it and ended (the totals "
        f"above), {live:,} still running, {before:,} started before it.",
        className="hint",
        id="mem-sessions-summary",
    )
