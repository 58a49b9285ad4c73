"""The data page (`/data`): data-access rates by source (local, cache, remote), per member and
VO, the busiest XRootD servers, and the cache share (docs/data.md).

"local" adds two ledger resources that never hold the same byte: the host probe's POSIX IO
(`io_read_bytes`, `io_write_bytes`) and XRootD servers whose role is local storage. The pure
functions below turn `Query.data_usage` / `Query.data_servers` frames into figures and tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from dash import Dash, Input, Output, dcc, html

from afmon.aggregator.query.reads import OTHERS, Principal
from afmon.dashboard import figures
from afmon.dashboard.colours import OTHERS_COLOUR, assign, chart_colours
from afmon.dashboard.figures import Column, TableData, Tile, fmt_number
from afmon.dashboard.pages.common import (
    PICK_MESSAGE,
    Context,
    notice,
    render_table,
    render_tiles,
    role_caption,
)
from afmon.dashboard.theme import PLOT_LAYOUT

PATH = "/data"
TITLE = "Data"
SOURCES = ("local", "cache", "remote")
COLOURS = {"local": "#0072B2", "cache": "#009E73", "remote": "#E69F00"}
MB, GB = 1e6, 1e9
RATE_AXIS = "Read rate [MB/s]"
EMPTY = "No data access recorded in this range yet."
NO_SERVER = (
    "No XRootD server sent its own counters (summary stream) in this range. The reads above "
    "are what is attributed to members: the servers' per-user records and the nodes' POSIX IO."
)
FILES_NOTE = (
    "Files opened: what the servers' per-user records reported (n/a: none for that member; "
    "POSIX IO counts no opens). The servers' own counters below count every open."
)
UNVERIFIED = "data_unverified_bytes"  # XRootD bytes under an asserted identity (docs/data.md)


def cache_share(read_by_source: Mapping[str, float]) -> float | None:
    """Bytes read from caches over all bytes read; None when nothing was read."""
    total = sum(read_by_source.get(s, 0.0) for s in SOURCES)
    return read_by_source.get("cache", 0.0) / total if total else None


def _share_text(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.1f} %"


def tiles(df: pd.DataFrame, unverified: float = 0.0, heading: str = "Data moved") -> list[Tile]:
    """`data_usage` (totals) -> one tile: read per source, written, cache share, and the
    bytes moved under an unverified (asserted) identity when there are any."""
    if df.empty or not df["amount"].any():
        return []
    sums = df.groupby(["direction", "source"])["amount"].sum()
    read = {s: float(sums.get(("read", s), 0.0)) for s in SOURCES}
    written = float(sums.xs("written", level=0).sum()) if "written" in sums.index else 0.0
    lines = [(f"Read, {s}", fmt_number(read[s] / GB, "GB")) for s in SOURCES]
    lines += [
        ("Written, all sources", fmt_number(written / GB, "GB")),
        ("Cache share of reads", _share_text(cache_share(read))),
    ]
    if unverified:
        lines.append(("Identity unverified", fmt_number(unverified / GB, "GB")))
    return [Tile("all", heading, lines)]


def servers_tile(df: pd.DataFrame) -> Tile:
    """`data_servers` -> what the XRootD servers' own counters say, beside the attributed
    bytes: they count every byte and open, attributed to a member or not."""
    if df.empty:
        return Tile("servers", "XRootD servers' own counters", [("", "none reported")], "muted")
    lines = [
        ("Servers reporting", f"{len(df):,}"),
        ("Read", fmt_number(float(df["read_bytes"].sum()) / GB, "GB")),
        ("Files opened", fmt_number(float(df["files_opened"].sum()), count=True)),
        ("Not attributed, out", fmt_number(float(df["unattributed_out_bytes"].sum()) / GB, "GB")),
    ]
    return Tile("servers", "XRootD servers' own counters", lines)


def rate_figure(
    df: pd.DataFrame,
    key: str,
    start: float,
    end: float,
    step: str,
    names: Mapping[str, str] | None = None,
    colours: Mapping[str, str] | None = None,
) -> go.Figure:
    """`data_usage` (over time) -> stacked bars of the average read rate per step, by `key`,
    each key in its colour (`colours`, or the sources' own); beyond the palette's size the
    smallest keys are one grey "others" trace."""
    reads = df[(df["direction"] == "read") & (df["amount"] > 0)]
    if reads.empty:
        return figures.empty_figure(RATE_AXIS, EMPTY)
    width = figures.STEP_SECONDS[step]
    index = figures.buckets(start, end, step)
    frame = reads.assign(time=pd.to_datetime(reads["time"], utc=True).dt.as_unit("ns"))
    wide = frame.pivot_table(index="time", columns=key, values="amount", aggfunc="sum")
    wide = wide.reindex(index, fill_value=0.0).fillna(0.0) / width / MB
    wide.columns = [str(c) for c in wide.columns]
    wide, folded = figures.fold_others(wide)
    shown = sorted(c for c in wide.columns if c != OTHERS)
    colour = chart_colours(shown, colours if colours is not None else COLOURS)
    fig = go.Figure()
    for k in [*shown, *([OTHERS] if folded else [])]:
        label = f"Others ({folded})" if k == OTHERS else (names or {}).get(k, k)
        tint = OTHERS_COLOUR if k == OTHERS else colour[k]
        fig.add_bar(x=wide.index, y=wide[k].tolist(), name=label, marker_color=tint)
    fig.update_layout(**PLOT_LAYOUT, barmode="stack")
    fig.update_xaxes(title_text="Time (UTC)")
    fig.update_yaxes(title_text=RATE_AXIS, automargin=True)
    return fig


def members_table(df: pd.DataFrame, counts: pd.DataFrame, members: pd.DataFrame) -> TableData:
    """Per member (by VO, then name): VO, bytes read per source and written (GB), files
    opened (n/a where no open count was reported for the member: POSIX IO counts none, and an
    XRootD server only through its per-user monitoring), cache share, and the bytes moved
    under a user name no authentication vouched for (`counts`: usage_totals by member of
    data_files_opened and data_unverified_bytes)."""
    table = TableData(
        [
            Column("Member"),
            Column("VO"),
            *[Column(f"Read {s} [GB]", True) for s in SOURCES],
            Column("Written [GB]", True),
            Column("Files opened", True),
            Column("Cache share", True),
            Column("Identity unverified [GB]", True),
        ],
        empty_message=EMPTY,
    )
    if df.empty or not df["amount"].any():
        return table
    info = members.set_index("member_id")
    files = _per_member(counts, "data_files_opened")
    unverified = _per_member(counts, UNVERIFIED)
    for member, g in df.groupby("member", sort=True):
        sums = g.groupby(["direction", "source"])["amount"].sum()
        read = {s: float(sums.get(("read", s), 0.0)) for s in SOURCES}
        written = float(g[g["direction"] == "written"]["amount"].sum())
        if not any(read.values()) and not written and not files.get(member):
            continue
        name, vo = (
            info.loc[member, ["display_name", "vo"]] if member in info.index else (member, "?")
        )
        table.rows.append(
            [
                str(name),
                str(vo),
                *[fmt_number(read[s] / GB) for s in SOURCES],
                fmt_number(written / GB),
                fmt_number(files[member], count=True) if member in files else "n/a",
                _share_text(cache_share(read)),
                fmt_number(unverified.get(member, 0.0) / GB),
            ]
        )
    table.rows.sort(key=lambda row: (row[1], row[0]))  # by VO, then name
    return table


def _per_member(counts: pd.DataFrame, resource: str) -> dict[str, float]:
    rows = counts[counts["resource"] == resource] if not counts.empty else counts
    return dict(zip(rows["member"], rows["amount"], strict=True)) if not rows.empty else {}


def servers_table(df: pd.DataFrame, seconds: float) -> TableData:
    """`data_servers` -> the busiest servers first, with average rates over `seconds`."""
    table = TableData(
        [
            Column("Server"),
            Column("Role"),
            Column("Read [GB]", True),
            Column("Read rate [MB/s]", True),
            Column("Written [GB]", True),
            Column("Files opened", True),
            Column("Network out [GB]", True),
            Column("Unattributed out [GB]", True),
            Column("Restarts", True),
        ],
        empty_message=NO_SERVER,
    )
    for r in df.itertuples(index=False):
        table.rows.append(
            [
                r.server,
                r.source,
                fmt_number(r.read_bytes / GB),
                fmt_number(r.read_bytes / max(seconds, 1.0) / MB),
                fmt_number(r.written_bytes / GB),
                fmt_number(r.files_opened, count=True),
                fmt_number(r.link_out_bytes / GB),
                fmt_number(r.unattributed_out_bytes / GB),
                fmt_number(r.restarts, count=True),
            ]
        )
    return table


def layout() -> html.Div:
    def graph(gid: str) -> html.Div:
        return html.Div(dcc.Graph(id=gid, config={"displaylogo": False}), className="card")

    return html.Div(
        [
            html.H2("Data access", id="data-heading"),
            html.Div(id="data-intro", className="card"),
            html.Div(id="data-tiles", className="tiles"),
            html.H3("Read rate by source", id="data-by-source-heading"),
            graph("data-by-source"),
            html.H3("Read rate by member", id="data-by-member-heading"),
            graph("data-by-member"),
            html.Div([html.H3("Read rate by VO"), graph("data-by-vo")], id="data-by-vo-section"),
            html.H3("Members"),
            html.Div(id="data-members", className="card"),
            html.H3("Top servers"),
            html.Div(id="data-servers", className="card"),
        ],
        id="data-page",
    )


def register(app: Dash, ctx: Context) -> None:
    @app.callback(
        Output("data-intro", "children"),
        Output("data-by-source-heading", "children"),
        Output("data-by-member-heading", "children"),
        Output("data-by-vo-section", "style"),
        Output("data-tiles", "children"),
        Output("data-by-source", "figure"),
        Output("data-by-member", "figure"),
        Output("data-by-vo", "figure"),
        Output("data-members", "children"),
        Output("data-servers", "children"),
        Input("principal-picker", "value"),
        Input("range", "value"),
    )
    def _data(principal_key: str | None, range_key: str | None) -> tuple[Any, ...]:
        p = ctx.principal(principal_key)
        if p is None:
            empty = figures.empty_figure(RATE_AXIS, PICK_MESSAGE)
            headings = ("Read rate by source", "Read rate by member", {})
            return (notice(PICK_MESSAGE), *headings, [], empty, empty, empty, [], [])
        return _render(ctx, p, range_key)


def _render(ctx: Context, p: Principal, range_key: str | None) -> tuple[Any, ...]:
    w = ctx.window(range_key)
    q = ctx.query
    members = q.members(p)
    names = figures.member_names(members)
    totals = q.data_usage(p, w.start, w.end, by="member")
    over = {by: q.data_usage(p, w.start, w.end, by=by, step=w.step) for by in ("member", "vo")}
    counts = q.usage_totals(
        p, w.start, w.end, by=("member",), resources=("data_files_opened", UNVERIFIED)
    )
    elapsed = min(w.end, ctx.clock()) - w.start
    server_tiles: list[Tile] = []
    if p.role == "facility_admin":
        by_server = q.data_servers(p, w.start, w.end)
        server_tiles.append(servers_tile(by_server))
        servers = render_table(servers_table(by_server, elapsed), "data-servers-table")
    else:
        servers = notice(
            "Server totals mix every member's data: facility admins only.", "data-servers-note"
        )
    intro = html.Div(
        f"Bytes read and written by source, attributed to members ({role_caption(p)}): "
        "XRootD servers' per-user records and the nodes' POSIX IO. Local = POSIX IO plus "
        "XRootD servers configured as local storage; rates are averages per step."
        + (
            " The servers' own counters (every byte and open, attributed or not) are in "
            "their own tile and the table at the bottom."
            if p.role == "facility_admin"
            else ""
        ),
        id="data-viewer",
    )
    mine = p.role == "member"  # their own bytes: never shown as their VO's
    unverified = sum(_per_member(counts, UNVERIFIED).values())
    shown = over["member"]["member"] if not over["member"].empty else []
    return (
        intro,
        "Your read rate by source" if mine else "Read rate by source",
        "Your read rate" if mine else "Read rate by member",
        {"display": "none"} if mine else {},
        render_tiles(
            tiles(totals, unverified, "Your data moved" if mine else "Data moved by members")
            + server_tiles,
            EMPTY,
        ),
        rate_figure(over["member"], "source", w.start, w.end, w.step),
        rate_figure(over["member"], "member", w.start, w.end, w.step, names, assign(shown)),
        rate_figure(over["vo"], "vo", w.start, w.end, w.step, colours=ctx.vo_colours()),
        [
            render_table(members_table(totals, counts, members), "data-members-table"),
            html.Div(FILES_NOTE, className="hint", id="data-files-note"),
        ],
        servers,
    )
