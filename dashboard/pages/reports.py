"""The reports page (`/reports`): download links for the weekly accounting report.

The files come from the API (`GET /api/v1/reports/weekly`), which builds them for the
reader it authenticates; in local demo mode that reader is the facility admin, so the
links are offered to the facility admin only and nobody else sees another member's data.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from dash import Dash, Input, Output, dcc, html

from afmon.aggregator.report.apel import gpu_resources
from afmon.aggregator.report.quantities import LEVELS
from afmon.aggregator.report.week import Week, iso_utc
from afmon.dashboard.pages.common import PICK_MESSAGE, Context, notice

PATH = "/reports"
TITLE = "Reports"
USES_RANGE = False  # the time range picker is hidden here: nothing on the page follows it
WEEKS_SHOWN = 12
API = "/api/v1/reports/weekly"


def week_options(now: float, n: int = WEEKS_SHOWN) -> list[dict[str, str]]:
    """The last `n` complete ISO weeks, newest first."""
    last = Week.last_complete(now)
    weeks = [last.shifted(-i) for i in range(n)]
    return [
        {"label": f"{w} ({iso_utc(w.start)[:10]} to {iso_utc(w.end - 1)[:10]})", "value": str(w)}
        for w in weeks
    ]


def default_week(options: list[dict[str, str]], last_hour: float | None) -> tuple[str, str]:
    """The week the page opens on: the latest of `options` that holds usage (`last_hour`,
    `Query.last_usage_hour`), else the newest; and a hint when that is not the newest."""
    newest = options[0]["value"]
    week = None if last_hour is None else str(Week.containing(last_hour))
    if week is None or week not in {o["value"] for o in options}:
        return newest, f"No usage is recorded in the last {len(options)} weeks."
    if week == newest:
        return newest, ""
    return week, f"Opened on {week}, the latest week with usage: the weeks after it are empty."


def report_links(week: str) -> list[tuple[str, str]]:
    """(label, href) of every file of the week's report."""

    def href(**params: str) -> str:
        return f"{API}?{urlencode({'week': week, **params})}"

    links = [
        ("JSON (one document)", href(format="json")),
        ("HTML (self-contained, opens offline)", href(format="html")),
    ]
    links += [(f"CSV per {level}", href(format="csv", level=level)) for level in LEVELS]
    links += [
        ("APEL summary v0.3 (month to date)", href(format="apel-v03")),
        ("APEL normalised summary v0.4 (month to date)", href(format="apel-v04")),
    ]
    if any(gpu_resources()):
        links.append(("APEL accelerator records (draft, JSON)", href(format="apel-accelerator")))
    return links


def layout() -> html.Div:
    return html.Div(
        [
            html.H2("Weekly accounting report", id="rep-heading"),
            html.Div(
                [
                    html.Label("ISO week (UTC, Monday to Sunday)", htmlFor="rep-week"),
                    dcc.Dropdown(id="rep-week", clearable=False),
                    html.Div(id="rep-week-hint", className="hint"),
                ],
                className="card",
            ),
            html.Div(id="rep-links", className="card"),
            html.P(
                "Every file is reproducible: the same data and settings give the same bytes. "
                "See docs/report.md for the contents and the APEL mapping.",
                className="hint",
            ),
        ],
        id="reports-page",
    )


def register(app: Dash, ctx: Context) -> None:
    @app.callback(
        Output("rep-week", "options"),
        Output("rep-week", "value"),
        Output("rep-week-hint", "children"),
        Input("principal-picker", "value"),
    )
    def _weeks(principal_key: str | None) -> tuple[list[dict[str, str]], str, str]:
        now = ctx.clock()
        options = week_options(now)
        p = ctx.principal(principal_key)
        if p is None:
            return options, options[0]["value"], ""
        last = ctx.query.last_usage_hour(p, Week.last_complete(now).end)
        return options, *default_week(options, last)

    @app.callback(
        Output("rep-links", "children"),
        Input("principal-picker", "value"),
        Input("rep-week", "value"),
    )
    def _links(principal_key: str | None, week: str | None) -> Any:
        p = ctx.principal(principal_key)
        if p is None:
            return notice(PICK_MESSAGE)
        if p.role != "facility_admin":
            return notice(
                "In local demo mode the report files are built for the facility admin; "
                "pick 'Facility admin' to download them.",
                "rep-not-admin",
            )
        if not week:
            return notice("Pick a week.")
        return html.Ul(
            [
                html.Li(html.A(label, href=href, target="_blank", className="rep-link"))
                for label, href in report_links(week)
            ],
            id="rep-link-list",
        )
