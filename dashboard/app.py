"""The Dash app factory: the shell (header, navigation, principal banner, time range)
and a URL router that renders one page module per path.

Pages are plain modules with `layout()` and `register(app, ctx)`; nothing is registered
globally (no `dash.register_page`, no `dash.callback`), so several apps can live in one
process. Nothing connects at import time or in `create_dash`: the layout is a function
that reads the member list when a browser asks for the page.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from dash import Dash, Input, Output, State, callback_context, dcc, html, no_update

from afmon.aggregator import __version__
from afmon.aggregator.auth.login import Sessions
from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.reads import LOCAL_ADMIN, Query
from afmon.dashboard import theme
from afmon.dashboard.pages import (
    alerts,
    batch,
    common,
    facilities,
    facility,
    gpus,
    interactive,
    member,
    reports,
    usage_patterns,
    vo,
)
from afmon.dashboard.pages import data as data_page
from afmon.dashboard.pages.common import ADMIN_KEY, DEFAULT_RANGE, SIGN_IN_MESSAGE, Context

PAGES = {facility.PATH: facility, vo.PATH: vo, member.PATH: member, alerts.PATH: alerts}
NAV_IDS = {
    facility.PATH: "nav-facility",
    vo.PATH: "nav-vo",
    member.PATH: "nav-member",
    alerts.PATH: "nav-alerts",
}
PAGES[reports.PATH] = reports
NAV_IDS[reports.PATH] = "nav-reports"
PAGES[gpus.PATH] = gpus
NAV_IDS[gpus.PATH] = "nav-gpus"
PAGES[batch.PATH] = batch
NAV_IDS[batch.PATH] = "nav-batch"
PAGES[interactive.PATH] = interactive
NAV_IDS[interactive.PATH] = "nav-interactive"
PAGES[data_page.PATH] = data_page
NAV_IDS[data_page.PATH] = "nav-data"
PAGES[usage_patterns.PATH], NAV_IDS[usage_patterns.PATH] = usage_patterns, "nav-usage"
PAGES[facilities.PATH] = facilities
NAV_IDS[facilities.PATH] = "nav-facilities"


def create_dash(
    query: Query,
    settings: ServerSettings,
    *,
    clock: Callable[[], float] = time.time,
    sessions: Sessions | None = None,
) -> Dash:
    """A Dash app reading through `query`; mount `app.server` (Flask, WSGI) at `/`."""
    app = Dash(
        __name__,
        use_pages=False,
        requests_pathname_prefix="/",
        serve_locally=True,
        title="afmon",
        update_title=None,
        include_assets_files=False,
        suppress_callback_exceptions=True,
    )
    app.index_string = theme.INDEX_STRING
    ctx = Context(query, settings, clock, sessions)
    app.layout = lambda: _shell(ctx)
    _register_shell(app, ctx)
    if settings.local_mode or ctx.login_enabled:
        # Without a way to know who asks there is nothing to show: the data callbacks exist
        # only in local mode or with sign-in, and `Context.principal` refuses everyone else.
        for page in PAGES.values():
            page.register(app, ctx)
    return app


def _shell(ctx: Context) -> html.Div:
    return html.Div(
        [
            dcc.Location(id="url", refresh=False),
            html.Header(
                [
                    html.H1("afmon"),
                    html.Span("Analysis Facility monitoring and accounting", className="tagline"),
                    html.Nav(
                        [
                            dcc.Link(page.TITLE, href=path, id=NAV_IDS[path])
                            for path, page in PAGES.items()
                        ]
                    ),
                ],
                className="top",
            ),
            _banner(ctx),
            _controls(ctx),
            dcc.Loading(html.Main(id="page"), delay_show=300, type="dot"),
            html.Footer(
                f"afmon {__version__} · all times in UTC · amounts from the hourly ledger",
                className="bottom",
            ),
        ],
        className="shell",
    )


def _controls(ctx: Context) -> html.Div:
    """The shared time range: presets, or a custom range of whole UTC days (two pickers)."""
    today = datetime.fromtimestamp(ctx.clock(), UTC).date()
    first, last = (today - timedelta(days=13)).isoformat(), today.isoformat()
    return html.Div(
        [
            html.Label("Time range (UTC)", htmlFor="range"),
            dcc.RadioItems(
                id="range",
                options=common.range_options(),
                value=DEFAULT_RANGE,
                inline=True,
                className="radio-inline",
                persistence=True,
                persistence_type="session",
            ),
            html.Div(
                [
                    html.Label("Custom, UTC days:", htmlFor="range-from"),
                    dcc.DatePickerSingle(
                        id="range-from",
                        date=first,
                        display_format="YYYY-MM-DD",
                        max_date_allowed=last,
                        placeholder="first day",
                    ),
                    html.Span("to"),
                    dcc.DatePickerSingle(
                        id="range-to",
                        date=last,
                        display_format="YYYY-MM-DD",
                        placeholder="last day",
                    ),
                    html.Button("Apply", id="range-apply", className="button"),
                ],
                className="dates",
            ),
            html.Span(id="window-text", className="window"),
        ],
        className="controls",
        id="range-controls",
    )


def _banner(ctx: Context) -> html.Div:
    if not ctx.settings.local_mode and ctx.login_enabled:
        return _signin_banner(ctx)
    if not ctx.settings.local_mode:
        return html.Div(
            [
                html.Strong("Sign-in is not configured on this server."),
                html.Span(
                    "No usage is shown until an operator configures sign-in with "
                    "AFMON_OIDC_ISSUERS and AFMON_OIDC_CLIENT_ID (docs/security.md)."
                ),
            ],
            id="signin-banner",
            className="banner signin",
        )
    options = common.principal_options(ctx.query.members(LOCAL_ADMIN))
    return html.Div(
        [
            html.Strong("Local demo mode: no login; pick who you are"),
            html.Div(
                dcc.Dropdown(
                    id="principal-picker",
                    options=options,
                    value=ADMIN_KEY,
                    clearable=False,
                    persistence=True,
                    persistence_type="session",
                ),
                className="picker",
            ),
        ],
        id="demo-banner",
        className="banner demo",
    )


def _signin_banner(ctx: Context) -> html.Div:
    who = ctx.signed_in()
    if who is None:
        links = [
            html.A(
                f"Sign in with {issuer}",
                href=f"/auth/login?{urlencode({'issuer': issuer})}",
                className="signin-link",
            )
            for issuer in ctx.settings.oidc_issuers
        ]
        return html.Div(
            [html.Strong("You are not signed in."), *links],
            id="signin-banner",
            className="banner signin",
        )
    # the page callbacks read the principal through this (hidden) picker, as in local mode
    picker = dcc.Dropdown(
        id="principal-picker",
        options=[{"label": who.name, "value": "session"}],
        value="session",
        clearable=False,
        disabled=True,
        style={"display": "none"},
    )
    return html.Div(
        [
            html.Strong(f"Signed in as {who.name}"),
            html.Span(common.role_caption(who)),
            html.A("Sign out", href="/auth/logout", className="signin-link"),
            picker,
        ],
        id="session-banner",
        className="banner session",
    )


def _register_shell(app: Dash, ctx: Context) -> None:
    @app.callback(
        Output("page", "children"),
        *[Output(nav_id, "className") for nav_id in NAV_IDS.values()],
        Input("url", "pathname"),
        State("url", "search"),
    )
    def _route(pathname: str | None, search: str | None) -> tuple[Any, ...]:
        path = (pathname or "/").rstrip("/") or "/"
        classes = ["active" if p == path else "" for p in NAV_IDS]
        page = PAGES.get(path)
        if page is None:
            content: Any = common.notice(
                f"No page at {pathname}. Use the links above.", "not-found"
            )
        elif not ctx.settings.local_mode and not ctx.login_enabled:
            content = common.notice(SIGN_IN_MESSAGE, "signin-notice")
        elif not ctx.settings.local_mode and ctx.signed_in() is None:
            content = common.notice(common.SIGNED_OUT_MESSAGE, "signin-notice")
        elif getattr(page, "URL_STATE", False):  # the page reads its filters from the URL
            content = page.layout(common.parse_search(search))
        else:
            content = page.layout()
        return (content, *classes)

    @app.callback(Output("range-controls", "style"), Input("url", "pathname"))
    def _range_shown(pathname: str | None) -> dict[str, str]:
        """Hidden on pages that show no range (a page with USES_RANGE = False)."""
        page = PAGES.get((pathname or "/").rstrip("/") or "/")
        return {} if getattr(page, "USES_RANGE", True) else {"display": "none"}

    @app.callback(Output("window-text", "children"), Input("range", "value"))
    def _window(range_key: str | None) -> str:
        return ctx.window(range_key).describe()

    @app.callback(
        Output("range", "value"),
        Output("range", "options"),
        Output("range-from", "date"),
        Output("range-to", "date"),
        Output("url", "search"),
        *[Output(nav_id, "href") for nav_id in NAV_IDS.values()],
        Input("url", "search"),
        Input("range", "value"),
        Input("range-apply", "n_clicks"),
        State("range-from", "date"),
        State("range-to", "date"),
    )
    def _sync_range(
        search: str | None, key: str | None, _apply: int | None, first: str | None, last: str | None
    ) -> tuple[Any, ...]:
        return sync_range(callback_context.triggered_id, search, key, first, last)


def sync_range(
    trigger: str | None, search: str | None, key: str | None, first: str | None, last: str | None
) -> tuple[Any, ...]:
    """Keep the range picker and the URL in step: on load (or when a link or the back
    button changes the URL) the URL's `range`/`from`/`to` win; a change of the picker (or
    Apply on the custom days) is written to the URL. Navigation links carry the range."""
    value, dates, new_search = no_update, (no_update, no_update), no_update
    current = key or DEFAULT_RANGE
    if trigger in (None, "url"):
        wanted = common.range_from_params(common.parse_search(search))
        if wanted and wanted != key:
            value = current = wanted
    elif trigger == "range-apply":
        custom = common.custom_key(first, last)
        if custom:
            value = current = custom
    custom = common.parse_custom(current)
    if custom:
        dates = custom
    if trigger not in (None, "url"):
        wanted = common.with_params(search, **common.range_params(current))
        new_search = wanted if wanted != (search or "") else no_update
    options = common.range_options(current if custom else None)
    links = common.make_search(common.range_params(current))
    return (value, options, *dates, new_search, *[f"{path}{links}" for path in NAV_IDS])
