"""Notifiers: an Alertmanager-compatible webhook and SMTP mail.

The webhook body is Alertmanager's webhook payload (version 4), so anything
that receives Alertmanager webhooks (chat bridges, ticketing) receives afmon's: with
Alertmanager's own fingerprints and group key, and links back to afmon's alerts page.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Protocol

import httpx

from afmon.aggregator.core.mail import Mailer
from afmon.aggregator.core.settings import ServerSettings
from afmon.alerts.evaluate import Alert
from afmon.alerts.labelset import fingerprint as label_fingerprint
from afmon.alerts.labelset import group_key, group_labels, present

ZERO_TIME = "0001-01-01T00:00:00Z"
ALERTS_PAGE = "/alerts"  # the dashboard's Alerts page (dashboard/pages/alerts.py)
GROUP_BY = ("alertname", "facility")


class Notifier(Protocol):
    def notify(self, alerts: Sequence[Alert]) -> None: ...


def _rfc3339(t: float | None) -> str:
    if t is None:
        return ZERO_TIME
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fingerprint(alert: Alert) -> str:
    """Alertmanager's fingerprint of the alert's labels."""
    return label_fingerprint(alert.label_dict())


def external_url(settings: ServerSettings) -> str:
    """Where users reach afmon: AFMON_PUBLIC_URL, else the address it listens on (this
    host's name when it listens on every address)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = settings.host
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def generator_url(external: str) -> str:
    """The link an alert carries back to afmon: its alerts page."""
    return external.rstrip("/") + ALERTS_PAGE if external else ""


def _common(dicts: list[dict[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    return {k: v for k, v in dicts[0].items() if all(d.get(k) == v for d in dicts[1:])}


def webhook_payload(
    alerts: Sequence[Alert],
    external_url: str = "",
    receiver: str = "afmon",
    group_by: Sequence[str] = GROUP_BY,
) -> dict[str, Any]:
    """Alertmanager's webhook JSON for these alerts (status, labels, annotations, times).

    One payload carries an evaluation's transitions; its group labels are those of
    `group_by` that all its alerts share, and `groupKey` is Alertmanager's for them."""
    items = [
        {
            "status": "firing" if a.status == "firing" else "resolved",
            "labels": present(a.label_dict()),
            "annotations": {"summary": a.summary, "description": a.description},
            "startsAt": _rfc3339(a.fired_at or a.active_since),
            "endsAt": _rfc3339(a.resolved_at),
            "generatorURL": generator_url(external_url),
            "fingerprint": fingerprint(a),
        }
        for a in alerts
    ]
    labels = [i["labels"] for i in items]
    grouped = group_labels(labels, group_by)
    return {
        "version": "4",
        "groupKey": group_key(grouped),
        "truncatedAlerts": 0,
        "status": "firing" if any(i["status"] == "firing" for i in items) else "resolved",
        "receiver": receiver,
        "groupLabels": grouped,
        "commonLabels": _common(labels),
        "commonAnnotations": _common([i["annotations"] for i in items]),
        "externalURL": external_url,
        "alerts": items,
    }


class WebhookNotifier:
    def __init__(self, url: str, client: httpx.Client | None = None, external_url: str = ""):
        self._url = url
        self._client = client or httpx.Client(timeout=10)
        self._external = external_url

    def notify(self, alerts: Sequence[Alert]) -> None:
        if not alerts:
            return
        r = self._client.post(self._url, json=webhook_payload(alerts, self._external))
        r.raise_for_status()


def mail_message(alerts: Sequence[Alert], sender: str, recipients: Sequence[str]) -> EmailMessage:
    firing = [a for a in alerts if a.status == "firing"]
    resolved = [a for a in alerts if a.status != "firing"]
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    parts = [f"{len(firing)} firing"] if firing else []
    parts += [f"{len(resolved)} resolved"] if resolved else []
    msg["Subject"] = f"[afmon] {', '.join(parts)}: " + ", ".join(sorted({a.rule for a in alerts}))
    lines = []
    for a in alerts:
        state = "FIRING" if a.status == "firing" else "RESOLVED"
        labels = ", ".join(f"{k}={v}" for k, v in a.labels)
        lines += [
            f"[{state}] {a.rule} ({a.severity}) {labels}",
            f"  {a.summary}",
            f"  {a.description}",
            f"  since {_rfc3339(a.active_since)}",
            "",
        ]
    msg.set_content("\n".join(lines))
    return msg


class MailNotifier:
    """Mails transitions through the server's one SMTP configuration (`Mailer`)."""

    def __init__(self, mailer: Mailer, recipients: Sequence[str]) -> None:
        if not recipients:
            raise ValueError("alert mail needs at least one recipient (AFMON_ALERT_MAIL_TO)")
        self._mailer = mailer
        self._to = list(recipients)

    def notify(self, alerts: Sequence[Alert]) -> None:
        if alerts:
            self._mailer.send(mail_message(alerts, self._mailer.sender, self._to))
