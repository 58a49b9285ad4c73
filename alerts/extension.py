"""The alerts as a web extension: `GET /api/v1/alerts` and the evaluation job (on one worker)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapi import APIRouter

from afmon.aggregator.query.base import Principal
from afmon.aggregator.web.extensions import Job, WebExtension
from afmon.aggregator.web.leader import leader_only
from afmon.alerts.service import alert_loop, alerts_router


class AlertsExtension(WebExtension):
    name = "alerts"

    def routers(self, reader: Callable[..., Principal]) -> Sequence[APIRouter]:
        return [alerts_router(reader)]

    def jobs(self) -> Sequence[Job]:
        return [leader_only(alert_loop)]
