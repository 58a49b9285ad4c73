"""The server's scheduled weekly report fires at the configured UTC time (injected clock),
writes its files once, and mails them to a real local SMTP server (aiosmtpd)."""

from __future__ import annotations

import email
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.report.schedule import DONE, due_time
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from tests.conftest import free_port

TOKEN = "sched-token"
DUE = datetime(2026, 3, 10, 7, 30, tzinfo=UTC).timestamp()  # a Tuesday


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(email.message_from_bytes(envelope.content))
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[int, Inbox]]:
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    try:
        controller.start()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"the local SMTP server (aiosmtpd) did not start: {exc}")
    try:
        yield port, inbox
    finally:
        controller.stop()


def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_scheduled_report_fires_at_its_time_and_mails_the_files(
    tmp_path: Path, smtp: tuple[int, Inbox]
) -> None:
    port, inbox = smtp
    reports = tmp_path / "reports"
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path}/afmon.sqlite",
        facility_tokens={"af": TOKEN},
        dashboard=False,
        log_level="warning",
        report_dir=reports,
        report_day="tue",
        report_time="07:30",
        report_formats="json,csv",
        report_check_seconds=0.05,
        smtp_host="127.0.0.1",
        smtp_port=port,
        mail_from="afmon@af.example.org",
        report_mail_to=["vo-manager@example.org", "wlcg@example.org"],
    )
    assert due_time(settings, DUE - 3600) == DUE
    now = [DUE - 60.0]
    app = create_app(settings, clock=lambda: now[0], with_dashboard=False)
    week_dir = reports / "2026-W10"
    with TestClient(app) as client:
        session = wire.Event(
            "session", "s1", "guest", DUE - 7 * 86400 + 3600, DUE - 7 * 86400 + 7200
        )  # Tuesday of W10, one hour
        batch = wire.Batch(
            version=wire.WIRE_VERSION,
            agent_id="a1",
            facility="af",
            node="n1",
            seq=1,
            sent_at=now[0],
            events=[session],
        )
        r = client.post(
            "/api/v1/ingest",
            content=wire.encode(batch),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": wire.CONTENT_TYPE},
        )
        assert r.status_code == 200, r.text
        time.sleep(0.5)  # ten checks before the time: nothing
        assert not week_dir.exists() and inbox.messages == []
        now[0] = DUE + 60.0
        assert wait_for(lambda: (week_dir / DONE).exists()), "the scheduled run did not fire"
        assert wait_for(lambda: len(inbox.messages) == 1)
        time.sleep(0.5)  # more checks after the run: it does not repeat
    assert len(inbox.messages) == 1
    names = sorted(p.name for p in week_dir.iterdir() if p.name != DONE)
    assert names == sorted(
        ["afmon-report-2026-W10.json"]
        + [f"afmon-report-2026-W10-{lv}.csv" for lv in ("member", "group", "vo", "facility")]
    )
    msg = inbox.messages[0]
    assert msg["Subject"] == "afmon weekly report 2026-W10"
    assert inbox.recipients[0] == ["vo-manager@example.org", "wlcg@example.org"]
    attached = {
        p.get_filename(): p.get_payload(decode=True) for p in msg.walk() if p.get_filename()
    }
    assert attached == {n: (week_dir / n).read_bytes() for n in names}
    member_csv = attached["afmon-report-2026-W10-member.csv"].decode().splitlines()
    assert len(member_csv) == 2 and "afmon:unmapped|af" in member_csv[1]
