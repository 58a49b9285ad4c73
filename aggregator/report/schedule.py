"""The server's scheduled weekly report: at the configured UTC weekday and time it writes
the last complete week's report to AFMON_REPORT_DIR/<week>/ and, with SMTP settings,
mails the files. Once per week: a marker file records a finished run, so a restart (or a
late start, which catches up) does not repeat it. The clock is the app's (injectable)."""

from __future__ import annotations

import logging
import threading
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from afmon.aggregator.core.mail import Mailer
from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.report.files import ReportFile, parse_formats, write_files
from afmon.aggregator.report.run import build_files
from afmon.aggregator.report.week import DAY, Week, iso_utc

log = logging.getLogger(__name__)
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DONE = ".afmon-report-done"


def due_time(settings: ServerSettings, now: float) -> float:
    """When this ISO week's scheduled run is due (epoch seconds, UTC)."""
    hh, mm = (int(x) for x in settings.report_time.split(":"))
    return Week.containing(now).start + DAYS.index(settings.report_day) * DAY + hh * 3600 + mm * 60


def run_if_due(services: Any) -> list[Path] | None:
    """Write (and mail) the last complete week's report when it is due and not yet done."""
    settings: ServerSettings = services.settings
    assert settings.report_dir is not None
    now = services.clock()
    if now < due_time(settings, now):
        return None
    week = Week.containing(now).shifted(-1)
    out = Path(settings.report_dir) / str(week)
    if (out / DONE).exists():
        return None
    log.info("weekly report %s: building", week)
    formats = parse_formats(settings.report_formats)
    files = build_files(services.query, None, settings, week, formats)
    paths = write_files(files, out)
    if settings.smtp_host and settings.report_mail_to:
        send_mail(settings, week, files)
    (out / DONE).write_text(f"{week}\n")
    log.info("weekly report %s: %d files in %s", week, len(paths), out)
    return paths


def send_mail(settings: ServerSettings, week: Week, files: list[ReportFile]) -> None:
    msg = EmailMessage()
    msg["Subject"] = f"afmon weekly report {week}"
    msg["From"] = settings.mail_from
    msg["To"] = ", ".join(settings.report_mail_to)
    msg.set_content(
        f"The afmon weekly accounting report for {week} "
        f"({iso_utc(week.start)} to {iso_utc(week.end)}) is attached:\n\n"
        + "".join(f"  {f.name}\n" for f in files)
    )
    for f in files:
        maintype, _, subtype = f.media_type.split(";")[0].partition("/")
        msg.add_attachment(f.content, maintype=maintype, subtype=subtype, filename=f.name)
    Mailer(settings).send(msg)


def scheduled_reports(services: Any, stop: threading.Event) -> None:
    """A periodic job of the server (web/app.py `jobs`); idle without AFMON_REPORT_DIR."""
    settings: ServerSettings = services.settings
    if settings.report_dir is None:
        return
    try:
        parse_formats(settings.report_formats)
    except ValueError as exc:
        log.error("AFMON_REPORT_FORMATS: %s; no scheduled reports", exc)
        return
    while True:
        try:
            run_if_due(services)
        except Exception:  # noqa: BLE001  (a failed run is retried at the next check)
            log.exception("scheduled weekly report failed")
        if stop.wait(settings.report_check_seconds):
            return
