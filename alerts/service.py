"""Alerts in the server: a periodic job that evaluates the rules, stores the alerts and
notifies on transitions, and `GET /api/v1/alerts`.

Run the job in one aggregator process only (AFMON_ALERT_INTERVAL_SECONDS=0 on the others):
each process notifies on its own.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Depends, Request
from sqlalchemy import Engine, text

from afmon.aggregator.core.mail import Mailer
from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.reads import Principal
from afmon.aggregator.query.signals import CounterWindow, Labels, compute
from afmon.alerts.alertmanager import AlertmanagerPusher, PushCounts, Target
from afmon.alerts.evaluate import Alert, State, evaluate, transitions
from afmon.alerts.notifiers import (
    MailNotifier,
    Notifier,
    WebhookNotifier,
    external_url,
    generator_url,
)
from afmon.alerts.rules import Rule, RuleError, load_rules

if TYPE_CHECKING:
    from prometheus_client import Counter

    from afmon.aggregator.metrics.exporter import IngestMetrics
    from afmon.aggregator.web.services import Services

log = logging.getLogger(__name__)
REFUSED_OUTCOMES = ("rejected", "too_large", "unauthorized", "over_limit")


def refused_batches(instruments: IngestMetrics) -> dict[Labels, float]:
    """The ingest counter of refused batches, summed per facility."""
    return _per_facility(
        instruments.batches, lambda labels: labels.get("outcome") in REFUSED_OUTCOMES
    )


def write_failures(instruments: IngestMetrics) -> dict[Labels, float]:
    """The ingest counter of failed database writes, summed per facility."""
    return _per_facility(instruments.write_failures, lambda _labels: True)


def process_counters(instruments: IngestMetrics) -> dict[str, dict[Labels, float]]:
    """The in-process counters behind the process signals (`signals.PROCESS_SIGNALS`)."""
    return {
        "ingest_rejected_batches": refused_batches(instruments),
        "ingest_write_failures": write_failures(instruments),
    }


def _per_facility(counter: Counter, keep: Callable[[dict[str, str]], bool]) -> dict[Labels, float]:
    out: dict[Labels, float] = {}
    for metric in counter.collect():
        for s in metric.samples:
            if s.name.endswith("_total") and keep(s.labels):
                key = (("facility", s.labels["facility"]),)
                out[key] = out.get(key, 0.0) + s.value
    return out


def notifiers_from(settings: ServerSettings) -> list[Notifier]:
    out: list[Notifier] = []
    if settings.alert_webhook_url:
        out.append(WebhookNotifier(settings.alert_webhook_url, external_url=external_url(settings)))
    if settings.smtp_host and settings.alert_mail_to:
        out.append(MailNotifier(Mailer(settings), settings.alert_mail_to))
    return out


def pusher_from(
    settings: ServerSettings, counts: Callable[[str], PushCounts] | None = None
) -> AlertmanagerPusher | None:
    """The push to AFMON_ALERTMANAGER_URLS, if any; `counts` gives each Alertmanager's
    counters on /metrics."""
    if not settings.alertmanager_urls:
        return None
    return AlertmanagerPusher(
        settings.alertmanager_urls,
        generator_url(external_url(settings)),
        settings.alert_interval_seconds,
        target=lambda url: Target(url, counts=counts(url) if counts else None),
    )


class AlertService:
    """Evaluate, store, notify. State survives a restart through the `alert` table."""

    def __init__(
        self,
        engine: Engine,
        rules: Sequence[Rule],
        notifiers: Sequence[Notifier] = (),
        clock: Callable[[], float] = time.time,
        counters: Callable[[], Mapping[str, Mapping[Labels, float]]] | None = None,
        pusher: AlertmanagerPusher | None = None,
    ) -> None:
        self._engine = engine
        self._rules = list(rules)
        self._notifiers = list(notifiers)
        self._pusher = pusher
        self._clock = clock
        self._counters = counters
        self._windows: dict[str, CounterWindow] = {}
        self.state: State = self._load()

    def run_once(self) -> list[Alert]:
        """One evaluation; returns the transitions it notified."""
        now = self._clock()
        signals = compute(self._engine, now, {r.signal for r in self._rules})
        if self._counters is not None:
            for name, values in self._counters().items():
                window = self._windows.setdefault(name, CounterWindow())
                signals[name] = window.observe(now, values)
        new = evaluate(self._rules, signals, self.state, now)
        changed = transitions(self.state, new)
        self._save(new)
        self.state = new
        for notifier in self._notifiers:
            try:
                notifier.notify(changed)
            except Exception:  # noqa: BLE001  (a broken receiver must not stop evaluation)
                log.exception("alert notifier %s failed", type(notifier).__name__)
        if self._pusher is not None:  # every evaluation: firing alerts are re-sent
            try:
                self._pusher.update(new.values(), now)
            except Exception:  # noqa: BLE001
                log.exception("alertmanager push failed")
        return changed

    def _load(self) -> State:
        state: State = {}
        with self._engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT rule, labels, status, severity, value, active_since, fired_at, "
                    "summary, description FROM alert WHERE status IN ('pending', 'firing')"
                )
            )
            for rule, labels, status, sev, value, since, fired, summary, desc in rows:
                lab: Labels = tuple(sorted(json.loads(labels).items()))
                state[(rule, lab)] = Alert(
                    rule, lab, status, sev, value, since, fired, None, summary, desc
                )
        return state

    def _save(self, state: State) -> None:
        signals = {r.name: r.signal for r in self._rules}
        with self._engine.begin() as conn:
            conn.execute(text("DELETE FROM alert WHERE status IN ('pending', 'firing')"))
            rows = [
                {
                    "rule": a.rule,
                    "labels": json.dumps(dict(a.labels), sort_keys=True, separators=(",", ":")),
                    "active_since": a.active_since,
                    "status": a.status,
                    "severity": a.severity,
                    "facility": dict(a.labels).get("facility"),
                    "vo": dict(a.labels).get("vo"),
                    "value": a.value,
                    "fired_at": a.fired_at,
                    "resolved_at": a.resolved_at,
                    "summary": a.summary,
                    "description": a.description,
                    "signal": signals.get(a.rule),
                }
                for a in state.values()
            ]
            if rows:
                conn.execute(
                    text(
                        "INSERT INTO alert (rule, labels, active_since, status, severity, "
                        "facility, vo, value, fired_at, resolved_at, summary, description, "
                        "signal) VALUES (:rule, :labels, :active_since, :status, :severity, "
                        ":facility, :vo, :value, :fired_at, :resolved_at, :summary, "
                        ":description, :signal)"
                    ),
                    rows,
                )


def alert_loop(services: Services, stop: threading.Event) -> None:
    """The server's periodic alert job (one of `create_app`'s jobs)."""
    settings = services.settings
    if settings.alert_interval_seconds <= 0:
        return
    pusher = None
    try:
        rules = load_rules(settings.alert_rules_file)
        pusher = pusher_from(settings, services.instruments.push_counts)
        service = AlertService(
            services.engine,
            rules,
            notifiers_from(settings),
            services.clock,
            lambda: process_counters(services.instruments),
            pusher,
        )
    except (RuleError, ValueError) as exc:
        log.error("alerts are off: %s", exc)
        if pusher is not None:
            pusher.close()
        return
    try:
        while True:
            try:
                service.run_once()
            except Exception:  # noqa: BLE001  (alerting must never stop the server)
                log.exception("alert evaluation failed")
            if stop.wait(settings.alert_interval_seconds):
                return
    finally:
        if pusher is not None:
            pusher.close()


STATUSES: dict[str, tuple[str, ...]] = {
    "firing": ("firing",),
    "pending": ("pending",),
    "resolved": ("resolved",),
    "all": ("pending", "firing", "resolved"),
}


def alerts_router(principal: Callable[..., Principal]) -> APIRouter:
    """`GET /api/v1/alerts`, with the app's reader dependency for who may see what."""
    router = APIRouter()

    @router.get(
        "/api/v1/alerts",
        summary="Alerts visible to the caller (firing by default)",
        responses={
            401: {
                "description": "No session and no bearer token, or a token refused",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        },
        openapi_extra={"security": [{"reader": []}, {"session": []}]},
    )
    def list_alerts(
        request: Request,
        p: Principal = Depends(principal),  # noqa: B008
        status: Literal["firing", "pending", "resolved", "all"] = "firing",
    ) -> list[dict[str, Any]]:
        query = request.app.state.services.query
        df = query.alerts(p, STATUSES[status])
        records = df.to_dict(orient="records")
        for r in records:
            r["labels"] = json.loads(r["labels"])
            for k in ("fired_at", "resolved_at", "signal"):
                if r[k] != r[k]:  # NaN from pandas for NULL
                    r[k] = None
        return records

    return router
