"""What every page shares: who is looking (the principal), the time window, and the
small components that render `figures.TableData` and `figures.Tile`."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import flask
import pandas as pd
from dash import html

from afmon.aggregator.auth.login import SESSION_COOKIE, Sessions
from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.reads import LOCAL_ADMIN, Principal, Query
from afmon.aggregator.store.schema import UNMAPPED
from afmon.dashboard.colours import assign
from afmon.dashboard.figures import TableData, Tile, fmt_utc

# -- time window ---------------------------------------------------------------------------

RANGES: dict[str, tuple[str, int, str]] = {
    # key: (label, length in seconds, step)
    "24h": ("Last 24 h", 24 * 3600, "hour"),
    "7d": ("Last 7 d", 7 * 86400, "hour"),
    "30d": ("Last 30 d", 30 * 86400, "day"),
}
DEFAULT_RANGE = "24h"
CUSTOM = "custom"
# Hourly steps up to a week (168 points), UTC days beyond; a custom range is capped so that no
# trace has more than MAX_POINTS points (two years of days), which a browser draws at ease.
HOURLY_UP_TO_SECONDS = 7 * 86400
MAX_POINTS = 731
DAY = 86400


@dataclass(frozen=True)
class Window:
    """[start, end) in epoch seconds (UTC), aligned to whole steps, and the step."""

    key: str
    start: float
    end: float
    step: str
    note: str = ""

    @property
    def points(self) -> int:
        return int((self.end - self.start) // (3600 if self.step == "hour" else DAY))

    def describe(self) -> str:
        steps = "hourly" if self.step == "hour" else "daily (UTC days)"
        text = f"{fmt_utc(self.start)} to {fmt_utc(self.end)}, {steps} steps"
        return f"{text}. {self.note}" if self.note else text


def step_for(length: float) -> str:
    """The resolution of a range: hours up to a week, UTC days beyond."""
    return "hour" if length <= HOURLY_UP_TO_SECONDS else "day"


def custom_key(first: str | None, last: str | None) -> str | None:
    """`custom:<first day>:<last day>` (UTC dates, both included), or None when unreadable."""
    try:
        a, b = (datetime.strptime((d or "")[:10], "%Y-%m-%d").date() for d in (first, last))
    except ValueError:
        return None
    a, b = min(a, b), max(a, b)
    return f"{CUSTOM}:{a.isoformat()}:{b.isoformat()}"


def parse_custom(key: str) -> tuple[str, str] | None:
    """The (first, last) day of a custom key, or None when `key` is not a valid one."""
    parts = key.split(":")
    if len(parts) != 3 or parts[0] != CUSTOM:
        return None
    canonical = custom_key(parts[1], parts[2])
    return (parts[1], parts[2]) if canonical == key else None


def _custom_window(key: str) -> Window:
    first, last = parse_custom(key) or ("", "")
    start = datetime.strptime(first, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    end = datetime.strptime(last, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() + DAY
    step = step_for(end - start)
    note = ""
    if step == "day" and (end - start) / DAY > MAX_POINTS:
        start = end - MAX_POINTS * DAY
        note = (
            f"Range shortened to its last {MAX_POINTS} days: at most {MAX_POINTS} points per trace"
        )
    return Window(key, start, end, step, note)


def time_window(key: str, now: float) -> Window:
    """A preset window ends at the end of the current hour (or UTC day for daily steps); a
    custom one (`custom:<first>:<last>`) spans whole UTC days, both ends included."""
    if parse_custom(key or ""):
        return _custom_window(key)
    note = "" if key in RANGES or not key else f"Unknown range {key!r}: showing the last 24 h"
    _label, length, step = RANGES.get(key, RANGES[DEFAULT_RANGE])
    width = 3600 if step == "hour" else DAY
    end = float(-(-int(now) // width) * width)
    if end == now:  # exactly on a boundary: still show the step that is starting
        end += width
    key = key if key in RANGES else DEFAULT_RANGE
    return Window(key, end - length, end, step, note)


def range_options(custom: str | None = None) -> list[dict[str, str]]:
    """The presets and, when a custom range is set, a "Custom" option that stands for it."""
    options = [{"label": label, "value": key} for key, (label, _l, _s) in RANGES.items()]
    if custom:
        options.append({"label": "Custom (below)", "value": custom})
    return options


# -- state in the URL ------------------------------------------------------------------------


def parse_search(search: str | None) -> dict[str, str]:
    """`?a=1&b=2` -> {"a": "1", "b": "2"} (the first value of each name)."""
    return {k: v[0] for k, v in parse_qs((search or "").lstrip("?")).items() if v}


def make_search(params: Mapping[str, str | None]) -> str:
    """The inverse of `parse_search`; empty values are left out."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return f"?{urlencode(kept)}" if kept else ""


def range_params(key: str | None) -> dict[str, str | None]:
    """The URL parameters that stand for a range key."""
    custom = parse_custom(key or "")
    if custom:
        return {"range": CUSTOM, "from": custom[0], "to": custom[1]}
    return {"range": key or DEFAULT_RANGE, "from": None, "to": None}


def range_from_params(params: Mapping[str, str]) -> str | None:
    """The range key that URL parameters name, or None when they name none (or a bad one)."""
    name = params.get("range")
    if name == CUSTOM:
        return custom_key(params.get("from"), params.get("to"))
    return name if name in RANGES else None


def with_params(search: str | None, **updates: str | None) -> str:
    """`search` with some parameters set (None removes one), in a stable order."""
    params: dict[str, str | None] = dict(parse_search(search))
    params.update(updates)
    return make_search(params)


# -- principal -----------------------------------------------------------------------------

ADMIN_KEY = "admin"
VO_COLOURS_SECONDS = 60.0


def principal_options(members: pd.DataFrame) -> list[dict[str, str]]:
    """Picker options: the facility admin, a manager per VO, every member (demo mode only)."""
    real = members[members["vo"] != UNMAPPED]
    options = [{"label": "Facility admin (sees every facility)", "value": ADMIN_KEY}]
    options += [
        {"label": f"VO manager of {vo}", "value": f"vo:{vo}"} for vo in sorted(set(real["vo"]))
    ]
    options += [
        {"label": f"Member: {m.display_name} ({m.vo})", "value": f"member:{m.member_id}"}
        for m in real.itertuples(index=False)
    ]
    return options


def principal_for(key: str | None, members: pd.DataFrame) -> Principal | None:
    """The principal a picker value stands for, or None when it names nobody known."""
    if key == ADMIN_KEY:
        return LOCAL_ADMIN
    kind, _, rest = (key or "").partition(":")
    real = members[members["vo"] != UNMAPPED]
    if kind == "vo" and rest in set(real["vo"]):
        return Principal("vo_manager", vo=rest, name=f"VO manager of {rest}")
    if kind == "member":
        hit = real[real["member_id"] == rest]
        if not hit.empty:
            m = hit.iloc[0]
            return Principal("member", member_id=rest, vo=m["vo"], name=m["display_name"])
    return None


@dataclass
class Context:
    """What the page callbacks need: the query layer, the settings and a clock."""

    query: Query
    settings: ServerSettings
    clock: Callable[[], float] = field(default=time.time)
    sessions: Sessions | None = None
    _vos: tuple[float, dict[str, str]] | None = field(default=None, repr=False)

    @property
    def login_enabled(self) -> bool:
        return bool(self.sessions and self.settings.sign_in_issuers)

    def signed_in(self) -> Principal | None:
        """The principal of the browser's sign-in session (read from the request's cookie)."""
        if self.sessions is None or not flask.has_request_context():
            return None
        return self.sessions.load(flask.request.cookies.get(SESSION_COOKIE), self.clock())

    def principal(self, key: str | None) -> Principal | None:
        """Local mode: resolve the picker's value. Otherwise: the signed-in principal."""
        if not self.settings.local_mode:
            return self.signed_in()
        return principal_for(key, self.query.members(LOCAL_ADMIN))

    def window(self, key: str | None) -> Window:
        return time_window(key or DEFAULT_RANGE, self.clock())

    def vo_colours(self) -> dict[str, str]:
        """Every VO's colour (and the unmapped accounts'), placed among all the VOs known, not
        only those a principal sees: a VO has one colour for everyone, on every page. Read
        again at most once a minute (an identity file load adds VOs rarely)."""
        now = time.monotonic()
        if self._vos is None or now - self._vos[0] > VO_COLOURS_SECONDS:
            names = set(self.query.members(LOCAL_ADMIN)["vo"]) | {UNMAPPED}
            self._vos = (now, assign(names))
        return self._vos[1]

    def slo_seconds(self, kind: str) -> float | None:
        return self.settings.latency_slo_seconds.get(kind)


SIGN_IN_MESSAGE = (
    "Sign-in is not configured on this server, so no data is shown. An operator configures "
    "it with AFMON_OIDC_ISSUERS and AFMON_OIDC_CLIENT_ID (docs/security.md), or starts a "
    "local demo with AFMON_LOCAL_MODE=true."
)
SIGNED_OUT_MESSAGE = "Sign in (top of the page) to see usage: yours, your VO's or your facility's."
PICK_MESSAGE = "Pick who you are in the yellow banner above to see usage."


def notice(text: str, id_: str = "notice") -> html.Div:
    return html.Div(text, id=id_, className="notice")


def role_caption(p: Principal) -> str:
    if p.role == "facility_admin":
        return "facility admin: every VO and member" + (
            f" at {p.facility}" if p.facility else " at every facility"
        )
    if p.role == "vo_manager":
        return f"VO manager of {p.vo}: that VO's members only"
    return f"member {p.name}: your own usage only"


def whose(p: Principal, vo: str | None = None) -> str:
    """Whose figures a page shows, to start a title: "Your" for a member (their own usage,
    never their VO's), "atlas's" for a VO manager or for a VO an admin picked, else ""."""
    if p.role == "member":
        return "Your"
    who = vo or (p.vo if p.role == "vo_manager" else None)
    return f"{who}'s" if who else ""


def titled(p: Principal, what: str, vo: str | None = None) -> str:
    """`what` ("CPU time") said with whose it is: "Your CPU time", "atlas's CPU time"."""
    owner = whose(p, vo)
    if not owner:
        return what
    return f"{owner} {what if what[:2].isupper() else what[:1].lower() + what[1:]}"


# -- rendering -----------------------------------------------------------------------------


def table_csv(data: TableData) -> str:
    """The table as CSV: the column headers (units in them) and the cells exactly as shown."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.name for c in data.columns])
    writer.writerows(data.rows)
    return out.getvalue()


def csv_link(data: TableData, id_: str) -> html.A:
    """A "Download CSV" link carrying the table itself (a data: URL), so the file holds what
    the page shows, with no server round trip and no callback per table."""
    return html.A(
        "Download CSV",
        href="data:text/csv;charset=utf-8," + quote(table_csv(data)),
        download=f"{id_}.csv",
        id=f"{id_}-csv",
        className="csv-link",
    )


def render_table(data: TableData, id_: str) -> html.Div:
    if not data.rows:
        return html.Div(data.empty_message, id=id_, className="empty")
    head = html.Tr([html.Th(c.name, className="num" if c.numeric else None) for c in data.columns])
    body: list[Any] = [
        html.Tr(
            [
                html.Td(v, className="num" if c.numeric else None)
                for c, v in zip(data.columns, row, strict=True)
            ]
        )
        for row in data.rows
    ]
    table = html.Table([html.Thead(head), html.Tbody(body)], id=id_, className="data")
    return html.Div([table, csv_link(data, id_)], className="table-block")


def render_tiles(tiles: list[Tile], empty: str) -> list[Any]:
    if not tiles:
        return [html.Div(empty, className="empty")]
    return [
        html.Div(
            [
                html.H4(t.heading),
                html.Table(
                    html.Tbody(
                        [
                            html.Tr([html.Td(label), html.Td(value, className="num")])
                            for label, value in t.lines
                        ]
                    )
                ),
            ],
            className=f"tile {t.tone}".strip(),
            **{"data-key": t.key},
        )
        for t in tiles
    ]
