"""The webhook reaches a real local HTTP receiver, the mail a real local SMTP server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from afmon.aggregator.core.mail import Mailer
from afmon.aggregator.core.settings import ServerSettings
from afmon.alerts.evaluate import Alert
from afmon.alerts.notifiers import MailNotifier, WebhookNotifier
from tests.conftest import free_port

T0 = 1_790_000_000.0
FIRING = Alert(
    "AfmonAgentSilent",
    (("facility", "af"), ("node", "n1")),
    "firing",
    "critical",
    1200.0,
    T0,
    fired_at=T0,
    summary="Agent on n1 silent",
    description="The agent on n1 (af) has delivered nothing for 20m 0s.",
)
RESOLVED = Alert(
    "AfmonUnmappedUsage",
    (("facility", "af"),),
    "resolved",
    "info",
    0.05,
    T0 - 7200,
    fired_at=T0 - 3600,
    resolved_at=T0,
    summary="Unmapped usage above 10 % at af",
    description="5% of the CPU time is unmapped.",
)


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["content-length"]))
            received.append(
                {"path": self.path, "type": self.headers["content-type"], "json": json.loads(body)}
            )
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts", received
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_sends_alertmanager_payload(receiver: tuple[str, list]) -> None:
    url, received = receiver
    WebhookNotifier(url).notify([FIRING, RESOLVED])
    [req] = received
    assert req["path"] == "/alerts" and req["type"] == "application/json"
    payload = req["json"]
    assert payload["version"] == "4" and payload["status"] == "firing"
    assert payload["receiver"] == "afmon" and payload["commonLabels"] == {"facility": "af"}
    first, second = payload["alerts"]
    assert first["status"] == "firing" and second["status"] == "resolved"
    assert first["labels"] == {
        "alertname": "AfmonAgentSilent",
        "severity": "critical",
        "facility": "af",
        "node": "n1",
    }
    assert first["annotations"]["description"].endswith("for 20m 0s.")
    assert first["startsAt"] == "2026-09-21T14:13:20.000000Z"
    assert first["endsAt"] == "0001-01-01T00:00:00Z"
    assert second["endsAt"] == "2026-09-21T14:13:20.000000Z"
    assert len(first["fingerprint"]) == 16 and first["fingerprint"] != second["fingerprint"]


def test_webhook_sends_nothing_without_transitions(receiver: tuple[str, list]) -> None:
    url, received = receiver
    WebhookNotifier(url).notify([])
    assert received == []


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append((envelope.mail_from, envelope.rcpt_tos, envelope.content))
        return "250 OK"


def test_mail_reaches_a_local_smtp_server() -> None:
    inbox = _Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        settings = ServerSettings(smtp_host="127.0.0.1", smtp_port=port, mail_from="afmon@af.test")
        MailNotifier(Mailer(settings), ["ops@af.test", "vo@af.test"]).notify([FIRING, RESOLVED])
        deadline = time.monotonic() + 10
        while not inbox.messages and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        controller.stop()
    [(sender, rcpts, content)] = inbox.messages
    assert sender == "afmon@af.test" and rcpts == ["ops@af.test", "vo@af.test"]
    msg = message_from_bytes(content)
    assert msg["Subject"] == "[afmon] 1 firing, 1 resolved: AfmonAgentSilent, AfmonUnmappedUsage"
    body = msg.get_payload(decode=True).decode()
    assert "[FIRING] AfmonAgentSilent (critical) facility=af, node=n1" in body
    assert "[RESOLVED] AfmonUnmappedUsage (info) facility=af" in body


def test_smtp_needs_a_recipient() -> None:
    with pytest.raises(ValueError, match="AFMON_ALERT_MAIL_TO"):
        MailNotifier(Mailer(ServerSettings(smtp_host="127.0.0.1")), [])
    with pytest.raises(ValueError, match="AFMON_SMTP_HOST"):
        Mailer(ServerSettings())
