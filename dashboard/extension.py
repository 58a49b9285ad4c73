"""The dashboard as a web extension: the Dash app mounted at "/" (unless AFMON_DASHBOARD=false)."""

from __future__ import annotations

from fastapi import FastAPI

from afmon.aggregator.web.extensions import WebExtension
from afmon.aggregator.web.services import Services


class DashboardExtension(WebExtension):
    name = "dashboard"

    def mount(self, app: FastAPI, services: Services) -> None:
        if not services.settings.dashboard:
            return
        from a2wsgi import WSGIMiddleware

        from afmon.dashboard.app import create_dash

        dash_app = create_dash(
            services.query, services.settings, clock=services.clock, sessions=services.sessions
        )
        app.mount("/", WSGIMiddleware(dash_app.server))  # type: ignore[arg-type]
