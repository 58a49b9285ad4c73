"""Who may scrape /metrics: a bearer token or basic-auth credentials, the two ways a
Prometheus scrape config authenticates (`authorization` or `basic_auth`).

/metrics carries per-(facility, VO) usage totals and every node's name, so outside demo mode
it is closed until the operator configures a scrape credential, or opens it on purpose with
AFMON_METRICS_PUBLIC (docs/security.md).
"""

from __future__ import annotations

import base64
import binascii
import hmac

from afmon.aggregator.core.settings import ServerSettings

NOT_CONFIGURED = (
    "/metrics is protected and no scrape credential is configured: set AFMON_METRICS_TOKEN "
    "(or AFMON_METRICS_USERNAME and AFMON_METRICS_PASSWORD) and give it to the scraper, or "
    "set AFMON_METRICS_PUBLIC=true (docs/security.md)"
)


class ScrapeAccess:
    """Checks the `Authorization` header of a scrape against the configured credentials."""

    def __init__(self, settings: ServerSettings) -> None:
        self.public = settings.metrics_public or settings.local_mode
        token = settings.metrics_token
        self._token = token.get_secret_value().encode() if token else None
        password = settings.metrics_password
        self._basic = (
            (settings.metrics_username.encode(), password.get_secret_value().encode())
            if settings.metrics_username and password
            else None
        )

    @property
    def challenge(self) -> str:
        """The `WWW-Authenticate` value of a refusal: the schemes that would be accepted."""
        schemes = []
        if self._token or not self._basic:
            schemes.append('Bearer realm="afmon metrics"')
        if self._basic:
            schemes.append('Basic realm="afmon metrics", charset="UTF-8"')
        return ", ".join(schemes)

    def refusal(self, authorization: str) -> str | None:
        """None when the scrape may read /metrics, else why not (never echoing secrets)."""
        if self.public:
            return None
        if self._token is None and self._basic is None:
            return NOT_CONFIGURED
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() == "bearer" and self._token is not None:
            if hmac.compare_digest(credential.encode(), self._token):
                return None
            return "wrong scrape token"
        if scheme.lower() == "basic" and self._basic is not None:
            try:
                user, sep, password = base64.b64decode(credential, validate=True).partition(b":")
            except (binascii.Error, ValueError):
                return "malformed basic credentials"
            # both compared in full, whatever the first gives: no timing hint on which is wrong
            ok_user = hmac.compare_digest(user, self._basic[0])
            ok_password = hmac.compare_digest(password, self._basic[1])
            if sep and ok_user and ok_password:
                return None
            return "wrong scrape username or password"
        return "send the scrape credential (Authorization: Bearer or Basic)"
