"""Service checks (docs/availability.md): is what users touch answering?

Each configured check is tried once per collection: an HTTP(S) URL is up when it answers with
a status below 500 within the timeout (a login page or a 401 still means the service runs), a
`host:port` when a TCP connection opens. The probe reports, per service, `service_up` (1 or 0)
and `service_check_seconds` (how long the check took), labelled with the service and the
checking node; the server turns the samples into availability and downtime per day.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from afmon.collectors.probes.base import READY, ProbeOutput, sample


class ServiceCheck(BaseModel):
    """One service to check: `url` (HTTP) or `tcp` ("host:port")."""

    model_config = ConfigDict(extra="forbid")

    service: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$", max_length=64)
    url: str | None = None
    tcp: str | None = Field(None, pattern=r"^[^:\s]+:[0-9]{1,5}$")

    @model_validator(mode="after")
    def _one_target(self) -> ServiceCheck:
        if (self.url is None) == (self.tcp is None):
            raise ValueError(f"service {self.service!r}: give either url or tcp, not both")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"service {self.service!r}: url must be http:// or https://")
        return self

    @property
    def kind(self) -> Literal["http", "tcp"]:
        return "http" if self.url is not None else "tcp"


class ServiceProbe:
    name = "services"

    def __init__(
        self,
        node: str,
        checks: list[ServiceCheck],
        timeout: float = 5.0,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.node = node
        self.checks = list(checks)
        self.timeout = timeout
        self._client = client or httpx.Client(timeout=timeout, follow_redirects=False)
        self._clock = clock
        self.state = READY if self.checks else "no service checks configured"

    def check(self, c: ServiceCheck) -> bool:
        """Whether the service answers now."""
        if c.url is not None:
            try:
                return self._client.get(c.url, timeout=self.timeout).status_code < 500
            except httpx.HTTPError:
                return False
        host, _, port = (c.tcp or "").rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=self.timeout):
                return True
        except OSError:
            return False

    def collect(self, now: float) -> ProbeOutput:
        out = ProbeOutput()
        for c in self.checks:
            began = self._clock()
            up = self.check(c)
            took = self._clock() - began
            labels = {"service": c.service, "node": self.node}
            out.series.append(sample("service_up", labels, now, 1.0 if up else 0.0,
                                     unit="1", kind="gauge"))  # fmt: skip
            out.series.append(sample("service_check_seconds", labels, now, took,
                                     unit="seconds", kind="gauge"))  # fmt: skip
        return out
