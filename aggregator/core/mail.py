"""Sending mail through the one SMTP server of the settings (alerts and reports)."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

from afmon.aggregator.core.settings import ServerSettings


class Mailer:
    """Delivers messages through `AFMON_SMTP_*`; `From:` is `AFMON_MAIL_FROM`."""

    def __init__(self, settings: ServerSettings, timeout: float = 30.0) -> None:
        if settings.smtp_host is None:
            raise ValueError("no SMTP server configured (AFMON_SMTP_HOST)")
        self._settings = settings
        self._timeout = timeout
        self.sender = settings.mail_from

    def send(self, msg: EmailMessage) -> None:
        s = self._settings
        assert s.smtp_host is not None
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=self._timeout) as smtp:
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_user:
                smtp.login(
                    s.smtp_user, s.smtp_password.get_secret_value() if s.smtp_password else ""
                )
            smtp.send_message(msg)
