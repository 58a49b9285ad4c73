"""Pure functions: DataFrames from the query layer -> plotly figures and table/tile data.

Nothing here touches the database or Dash; the page callbacks fetch frames through
`afmon.aggregator.query.reads.Query` and hand them to these functions. Every number leaves here
with a unit: ledger amounts are in base units (s, B, B·s) and are converted to
readable ones (hours, GB, GB-hours) by `display_unit`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd
import plotly.graph_objects as go

from afmon.aggregator.query.reads import OTHERS
from afmon.aggregator.store.schema import RESOURCES
from afmon.dashboard.colours import OTHERS_COLOUR, PALETTE, assign, chart_colours
from afmon.dashboard.theme import PLOT_LAYOUT

HOUR = 3600.0
GB = 1e9  # decimal gigabyte, as used for memory-time and IO totals
GIB = 2.0**30  # binary gibibyte, as used for node memory
STEP_SECONDS = {"hour": 3600, "day": 86400}
EMPTY_USAGE = "No usage recorded in this range yet."

# Ledger unit -> (factor to apply, readable unit)
_BY_UNIT: dict[str, tuple[float, str]] = {
    "s": (1 / HOUR, "hours"),
    "HS23·s": (1 / HOUR, "HS23-hours"),
    "B·s": (1 / (GB * HOUR), "GB-hours"),
    "B": (1 / GB, "GB"),
    "1": (1.0, "count"),
}
# CPU seconds are core-seconds: one busy core for one hour is one core-hour. Counts are
# named after what they count.
_UNIT_OVERRIDES = {
    "cpu_seconds": "core-hours",
    "sessions": "sessions",
    "dask_clusters": "clusters",
    "batch_jobs": "jobs",
    "batch_wall_core_seconds": "core-hours",
    "batch_cpu_seconds": "core-hours",
    "batch_gpu_seconds": "GPU-hours",
}

# The ledger holds a session's time and count once it has ended (aggregator/ledger/events.py):
# its titles say so, and a page adds the running sessions' time so far as such (`running`).
_TITLE_OVERRIDES = {
    "session_seconds": "Session time of ended sessions",
    "sessions": "Sessions started and ended",
}

# Short names for axis titles (the catalog's titles are for tiles and menus).
_AXIS_NAMES = {
    "cpu_hs23_seconds": "CPU time x HEPscore23",
    "memory_byte_seconds": "Memory x time",
    "io_read_bytes": "Bytes read",
    "io_write_bytes": "Bytes written",
    "session_seconds": "Session time",
    "sessions": "Sessions started",
    # a y axis title longer than the plot is high is cut off: these say it shorter
    "batch_wall_core_seconds": "Batch wall x cores",
    "batch_cpu_seconds": "Batch CPU time",
    "batch_gpu_seconds": "Batch wall x GPUs",
    "batch_cpu_hs23_seconds": "Batch CPU x HEPscore23",
    "batch_wall_core_hs23_seconds": "Batch wall x cores x HS23",
    "data_unverified_bytes": "Bytes under unverified names",
    "gpu_active_seconds": "GPU time busy",
    "spawn_failures": "Failed server starts",
}


@dataclass(frozen=True)
class DisplayUnit:
    """How a ledger resource is shown: amount * factor, in `unit`, on axis `axis`."""

    resource: str
    title: str
    factor: float
    unit: str
    count: bool = False

    @property
    def axis(self) -> str:
        """Axis title: a short name and the unit shown, e.g. "CPU time [core-hours]"."""
        return f"{_AXIS_NAMES.get(self.resource, self.title)} [{self.unit}]"

    def format(self, amount: float | None) -> str:
        """A ledger amount (base unit) as readable text with its unit."""
        value = None if amount is None else amount * self.factor
        return fmt_number(value, self.unit, count=self.count)


def display_unit(resource: str) -> DisplayUnit:
    r = RESOURCES[resource]
    factor, unit = _BY_UNIT.get(r.unit, (1.0, r.unit))
    return DisplayUnit(
        resource,
        _TITLE_OVERRIDES.get(resource, r.title),
        factor,
        _UNIT_OVERRIDES.get(resource, unit),
        count=r.unit == "1",
    )


def resource_options() -> list[dict[str, str]]:
    """Dropdown options for every accounted resource, labelled with the unit shown."""
    return [
        {"label": f"{d.title} ({d.unit})", "value": name}
        for name in RESOURCES
        for d in [display_unit(name)]
    ]


def fmt_number(value: float | None, unit: str = "", count: bool = False) -> str:
    """A number for people: thousands separators and 2 decimals; below 0.01 at most two
    significant figures (never "0.00" for something that is not 0); counts as integers."""
    if value is None or pd.isna(value):
        return "n/a"
    if count:
        text = f"{value:,.0f}"
        if text == "1" and unit.endswith("s"):
            unit = unit[:-1]  # 1 session, 2 sessions
    else:
        text = fmt_plain(float(value))
    return f"{text} {unit}".rstrip()


def fmt_plain(value: float) -> str:
    """`fmt_number` without a unit, for table cells whose header names the unit."""
    if value == 0:
        return "0"
    if abs(value) < 0.01:  # two significant figures, in decimals (no exponent)
        digits = 1 - math.floor(math.log10(abs(value)))
        if abs(round(value, digits)) < 0.01:
            return f"{value:.{digits}f}".rstrip("0")
    return f"{value:,.2f}"


def fmt_utc(epoch: float | None) -> str:
    if epoch is None or pd.isna(epoch):
        return "n/a"
    return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- figures -------------------------------------------------------------------------------


def buckets(start: float, end: float, step: str) -> pd.DatetimeIndex:
    """Every bucket start in [start, end), in UTC."""
    width = STEP_SECONDS[step]
    first = int(start // width) * width
    return pd.DatetimeIndex(
        pd.to_datetime(list(range(first, int(end), width)), unit="s", utc=True)
    ).as_unit("ns")


def empty_figure(axis_title: str, message: str = EMPTY_USAGE) -> go.Figure:
    hidden = {"showticklabels": False, "showgrid": False}
    layout = {
        **PLOT_LAYOUT,
        "xaxis": {"title": {"text": "Time (UTC)"}, **hidden},
        "yaxis": {"title": {"text": axis_title}, **hidden},
        "annotations": [
            {
                "text": message,
                "showarrow": False,
                "xref": "paper",
                "yref": "paper",
                "x": 0.5,
                "y": 0.5,
                "font": {"size": 16, "color": "#52606d"},
            }
        ],
    }
    return go.Figure(layout=layout, _validate=False)  # plain values: see usage_figure


def usage_figure(
    df: pd.DataFrame,
    resource: str,
    by: str,
    start: float,
    end: float,
    step: str,
    names: Mapping[str, str] | None = None,
    title: str | None = None,
    colours: Mapping[str, str] | None = None,
) -> go.Figure:
    """Stacked bars of `usage_over_time` output: one bar per step, one colour per `by` key.

    Buckets without usage are shown as zero over the whole window; amounts are converted
    to the readable unit of `display_unit(resource)`, which the y axis names. Each key has
    its colour of `colours` (the dimension's map, `afmon.dashboard.colours`), never one
    another trace of the chart has; beyond `len(PALETTE)` keys the smallest are summed into
    one grey "others" trace (as are the query's own `OTHERS`).
    """
    du = display_unit(resource)
    per = "per hour" if step == "hour" else "per day (UTC)"
    title_layout = {"title": {"text": f"{title or du.title}, {per}", "x": 0, "font": {"size": 15}}}
    if df.empty or not (df["amount"] != 0).any():
        fig = empty_figure(du.axis)
        fig.update_layout(**title_layout)
        return fig
    frame = df.assign(time=pd.to_datetime(df["time"], utc=True).dt.as_unit("ns"))
    wide = frame.pivot_table(index="time", columns=by, values="amount", aggfunc="sum")
    wide = wide.reindex(buckets(start, end, step), fill_value=0.0).fillna(0.0) * du.factor
    wide, folded = fold_others(wide)
    order = [k for k in wide.sum().sort_values(ascending=False).index if k != OTHERS]
    colour = chart_colours(order, colours if colours is not None else assign(order))
    labels = dict(names or {})
    if folded and OTHERS not in labels:
        labels[OTHERS] = f"Others ({folded})"
    number = ",.0f" if du.count else ",.3f"
    # the ISO strings plotly would write, made once; the figure is built unvalidated (plain
    # numbers and strings): validation copies every array of every trace, a third of the time
    # of a callback with a dozen traces
    x = [t.isoformat() for t in wide.index]
    traces = []
    for key in [*order, *([OTHERS] if OTHERS in wide.columns else [])]:
        label = labels.get(key, key)
        traces.append(
            {
                "type": "bar",
                "x": x,
                "y": wide[key].tolist(),
                "name": str(label),
                "marker": {"color": OTHERS_COLOUR if key == OTHERS else colour[key]},
                # each bar spans its whole bucket [start, start + step)
                "xperiod": STEP_SECONDS[step] * 1000,
                "xperiodalignment": "middle",
                "hovertemplate": f"%{{y:{number}}} {du.unit}<extra>{label}</extra>",
            }
        )
    layout = {
        **PLOT_LAYOUT,
        **title_layout,
        "barmode": "stack",
        "bargap": 0.1,
        "showlegend": True,
        "xaxis": {"title": {"text": "Time (UTC)"}, "range": [x[0], _range_end(end, step)]},
        "yaxis": {"title": {"text": du.axis}, "rangemode": "tozero", "automargin": True},
    }
    return go.Figure(data=traces, layout=layout, _validate=False)


def fold_others(wide: pd.DataFrame, limit: int = len(PALETTE)) -> tuple[pd.DataFrame, int]:
    """Columns beyond the `limit` largest (an `OTHERS` column aside) summed into `OTHERS`,
    so that every trace drawn one by one has a colour of its own: (frame, columns folded)."""
    named = [c for c in wide.columns if c != OTHERS]
    if len(named) <= limit:
        return wide, 0
    ranked = wide[named].sum().sort_values(ascending=False, kind="stable").index
    rest = list(ranked[limit:])
    out = wide[list(ranked[:limit])].copy()
    out[OTHERS] = wide[rest].sum(axis=1) + (wide[OTHERS] if OTHERS in wide.columns else 0.0)
    return out, len(rest)


def _range_end(end: float, step: str) -> str:
    width = STEP_SECONDS[step]
    return pd.Timestamp(int(-(-end // width) * width), unit="s", tz="UTC").isoformat()


# -- tables and tiles ----------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    numeric: bool = False


@dataclass
class TableData:
    """Column headers (with units) and rows of display strings."""

    columns: list[Column]
    rows: list[list[str]] = field(default_factory=list)
    empty_message: str = "Nothing to show."


def nodes_table(df: pd.DataFrame, now: float | None = None) -> TableData:
    """`Query.nodes` -> cores, memory in GiB, HEPscore23 per core, busy %, last update (UTC)
    and, with `now` (and `stale` in `df`), whether the node is live: a stale node's last CPU
    busy is not shown as if it were current, and its status says how long it has been silent."""
    status = now is not None and "stale" in df.columns
    table = TableData(
        [
            Column("Facility"),
            Column("Node"),
            Column("CPU cores", True),
            Column("Memory [GiB]", True),
            Column("HEPscore23 per core", True),
            Column("CPU busy [%]", True),
            Column("Last update (UTC)"),
            *([Column("Status")] if status else []),
        ],
        empty_message="No node has reported yet.",
    )
    for r in df.itertuples(index=False):
        stale = status and bool(r.stale)
        busy = _num(r.cpu_busy_ratio, "{:,.1f}", 100.0)
        row = [
            str(r.facility),
            str(r.node),
            _num(r.cpu_cores, "{:,.0f}"),
            _num(r.memory_bytes, "{:,.1f}", 1 / GIB),
            _num(r.hepscore23_per_core, "{:,.2f}"),
            f"({busy} when last heard)" if stale else busy,
            fmt_utc(r.updated),
        ]
        if status:
            heard = r.last_seen is not None and not pd.isna(r.last_seen)
            silent = f"silent {(now - float(r.last_seen)) / 60:,.0f} min" if heard else "silent"
            row.append(f"{silent}: not in live capacity" if stale else "live")
        table.rows.append(row)
    return table


def _num(value: float | None, template: str, factor: float = 1.0) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    return template.format(float(value) * factor)


def sessions_table(
    df: pd.DataFrame, now: float, names: Mapping[str, str] | None = None
) -> TableData:
    """`Query.sessions` -> member, facility, node, start/end (UTC), duration in hours."""
    table = TableData(
        [
            Column("Member"),
            Column("Facility"),
            Column("Node"),
            Column("Start (UTC)"),
            Column("End (UTC)"),
            Column("Duration [hours]", True),
        ],
        empty_message="No interactive sessions in this range.",
    )
    for r in df.sort_values("start", ascending=False).itertuples(index=False):
        running = r.end is None or pd.isna(r.end)
        stop = now if running else float(r.end)
        hours = max(0.0, stop - float(r.start)) / HOUR
        name = (names or {}).get(r.member_id) or r.display_name
        table.rows.append(
            [
                str(name),
                str(r.facility),
                str(r.node),
                fmt_utc(r.start),
                "still running" if running else fmt_utc(r.end),
                fmt_plain(hours) + (" (so far)" if running else ""),
            ]
        )
    return table


@dataclass(frozen=True)
class Tile:
    """A card with a heading and (label, value-with-unit) lines."""

    key: str
    heading: str
    lines: list[tuple[str, str]]
    tone: str = ""  # "ok", "bad" or "muted": the colour of the tile's edge


TILE_RESOURCES: tuple[str, ...] = (
    "cpu_seconds",
    "cpu_hs23_seconds",
    "memory_byte_seconds",
    "session_seconds",
    "sessions",
)


def totals_tiles(
    df: pd.DataFrame,
    by: str,
    resources: Sequence[str] = TILE_RESOURCES,
    names: Mapping[str, str] | None = None,
    limit: int | None = None,
    running: pd.DataFrame | None = None,
) -> list[Tile]:
    """`Query.usage_totals(by=(by,))` -> one tile per key, largest CPU user first (the
    `limit` largest only, when given). `running` (`Query.running_sessions` by the same key)
    adds each key's sessions still running and their time so far, which the ledger does not
    hold yet; a key with only running sessions gets a tile too."""
    run: dict[str, tuple[int, float]] = {}
    if running is not None and not running.empty:
        run = {
            str(k): (int(n), float(t)) for k, n, t in running[[by, "sessions", "seconds"]].values
        }
    if df.empty and not run:
        return []
    wide = (
        df.pivot_table(index=by, columns="resource", values="amount", aggfunc="sum")
        if not df.empty
        else pd.DataFrame()
    )
    wide.index = wide.index.astype(str)
    wide = wide.reindex(index=wide.index.union(list(run)), columns=list(resources)).fillna(0.0)
    wide = wide.sort_values(by=list(resources[:1]), ascending=False, kind="stable")
    tiles = []
    for key, row in wide.head(limit).iterrows():
        lines = []
        for r in resources:
            du = display_unit(r)
            lines.append((du.title, du.format(row[r])))
        if run:
            n, seconds = run.get(str(key), (0, 0.0))
            text = fmt_number(n, "sessions", count=True)
            lines.append(("Running now", f"{text}, {fmt_number(seconds / HOUR, 'hours')} so far"))
        tiles.append(Tile(str(key), str((names or {}).get(key, key)), lines))
    return tiles


def member_names(df: pd.DataFrame) -> dict[str, str]:
    """`Query.members` -> {member_id: display name}."""
    return dict(zip(df["member_id"], df["display_name"], strict=True))
