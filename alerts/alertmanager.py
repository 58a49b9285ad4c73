"""Pushing afmon's alerts to Alertmanagers (`POST <url>/api/v2/alerts`), as Prometheus does.

So that Alertmanager's silences, inhibition and routing apply to afmon's alerts. Alertmanager
resolves an alert by itself once its `endsAt` has passed, so, like Prometheus:

- a firing alert is sent when it fires and re-sent every `resend_every` seconds with
  `endsAt` = now + 4 x max(evaluation interval, resend interval) (two lost evaluations or
  sends do not resolve it; an afmon that stops lets Alertmanager resolve it in time);
- a resolved alert is sent with `endsAt` = its resolve time, and re-sent for
  `resolved_retention` seconds (an Alertmanager that was down when it resolved learns it).

Sending happens in one thread per Alertmanager: `update()` only queues, so evaluation
never waits for a receiver. A failed send (connection error, 5xx) is logged, counted and
retried with exponential backoff, the newest version of each alert winning; a 4xx (alerts
Alertmanager refuses) is logged, counted and dropped, since sending it again cannot help.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from afmon.alerts.evaluate import Alert, Key
from afmon.alerts.labelset import fingerprint, present

log = logging.getLogger(__name__)
Postable = dict[str, Any]


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class PushCounts(Protocol):
    """Where a push reports on /metrics (aggregator/metrics/exporter.py's `PushCounts`)."""

    @property
    def sent(self) -> _Counter: ...
    @property
    def dropped(self) -> _Counter: ...
    @property
    def failures(self) -> _Counter: ...


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def postable(alert: Alert, ends_at: float, generator_url: str) -> Postable:
    """One postableAlert of Alertmanager's API v2 (empty labels and annotations left out,
    as Alertmanager would drop them)."""
    annotations = {"summary": alert.summary, "description": alert.description}
    return {
        "labels": present(alert.label_dict()),
        "annotations": present(annotations),
        "startsAt": rfc3339(alert.fired_at or alert.active_since),
        "endsAt": rfc3339(ends_at),
        "generatorURL": generator_url,
    }


class Target:
    """One Alertmanager: a queue of alerts to send (per fingerprint, newest wins) and the
    thread that sends it, with backoff after failures."""

    def __init__(
        self,
        url: str,
        client: httpx.Client | None = None,
        backoff: tuple[float, float] = (1.0, 60.0),
        counts: PushCounts | None = None,
    ) -> None:
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self._counts = counts
        self.sent = 0  # alerts Alertmanager accepted
        self.errors = 0  # failed sends (each retried or, for a 4xx, dropped)
        self.dropped = 0  # alerts dropped after a 4xx
        self._client = client or httpx.Client(timeout=10)
        self._first_backoff, self._max_backoff = backoff
        self._pending: dict[str, Postable] = {}
        self._cond = threading.Condition()
        self._closing = False
        self._busy = False  # a batch is being sent
        self._thread = threading.Thread(target=self._run, name=f"alertmanager {url}", daemon=True)
        self._thread.start()

    def enqueue(self, alerts: Iterable[Postable]) -> None:
        with self._cond:
            for a in alerts:
                self._pending[fingerprint(a["labels"])] = a
            self._cond.notify()

    def idle(self) -> bool:
        """Nothing waits to be sent (for tests and shutdown)."""
        with self._cond:
            return not self._pending and not self._busy

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        if not self._thread.is_alive():  # else a hung send still holds it (a daemon thread)
            self._client.close()

    def _run(self) -> None:
        delay = 0.0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closing)
                if self._closing:
                    return
                batch, self._pending, self._busy = self._pending, {}, True
            failed = self._send(list(batch.values()))
            with self._cond:
                self._busy = False
                if not failed:
                    delay = 0.0
                    continue
                for fp, a in batch.items():
                    self._pending.setdefault(fp, a)  # a newer version queued meanwhile wins
                delay = min(max(2 * delay, self._first_backoff), self._max_backoff)
                n = len(self._pending)
                log.warning("alertmanager %s: retrying %d alerts in %.0f s", self.url, n, delay)
                if self._cond.wait_for(lambda: self._closing, timeout=delay):
                    return

    def _send(self, alerts: list[Postable]) -> bool:
        """Post; True when it should be retried."""
        try:
            r = self._client.post(self.url, json=alerts)
        except httpx.HTTPError as exc:
            self._failed()
            log.warning("alertmanager %s unreachable: %s", self.url, exc)
            return True
        if r.status_code < 300:
            self.sent += len(alerts)
            if self._counts is not None:
                self._counts.sent.inc(len(alerts))
            return False
        self._failed()
        if r.status_code < 500:
            self.dropped += len(alerts)
            if self._counts is not None:
                self._counts.dropped.inc(len(alerts))
            log.error(
                "alertmanager %s refused %d alerts: HTTP %d %s",
                self.url,
                len(alerts),
                r.status_code,
                r.text[:500],
            )
            return False
        log.warning("alertmanager %s failed: HTTP %d %s", self.url, r.status_code, r.text[:500])
        return True

    def _failed(self) -> None:
        self.errors += 1
        if self._counts is not None:
            self._counts.failures.inc()


@dataclass
class _Sent:
    at: float  # when it was last queued
    resolved_at: float | None  # its resolve time, for resolved alerts


class AlertmanagerPusher:
    """Called with the whole state after every evaluation; queues to each Alertmanager
    what needs sending (see the module doc) and returns at once."""

    def __init__(
        self,
        urls: Sequence[str],
        generator_url: str,
        interval: float,
        resend_every: float = 60.0,
        resolved_retention: float = 900.0,
        target: Callable[[str], Target] = Target,
    ) -> None:
        self.targets = [target(u) for u in urls]
        self._generator_url = generator_url
        self._resend = resend_every
        self._valid_for = 4 * max(interval, resend_every)
        self._retention = resolved_retention
        self._sent: dict[Key, _Sent] = {}
        self._resolved: dict[Key, Alert] = {}

    @property
    def errors(self) -> int:
        return sum(t.errors for t in self.targets)

    def update(self, state: Iterable[Alert], now: float) -> list[Postable]:
        """Queue the alerts due for sending; returns them."""
        state = list(state)
        firing = {a.key: a for a in state if a.status == "firing"}
        for a in state:
            if a.status == "resolved":
                self._resolved[a.key] = a
        for key in list(self._resolved):
            a = self._resolved[key]
            if key in firing or now - (a.resolved_at or now) > self._retention:
                del self._resolved[key]
        due: list[Postable] = []
        for key, a in firing.items():
            sent = self._sent.get(key)
            if sent is None or sent.resolved_at is not None or now - sent.at >= self._resend:
                due.append(postable(a, now + self._valid_for, self._generator_url))
                self._sent[key] = _Sent(now, None)
        for key, a in self._resolved.items():
            sent = self._sent.get(key)
            if sent is None or sent.resolved_at is None or now - sent.at >= self._resend:
                due.append(postable(a, a.resolved_at or now, self._generator_url))
                self._sent[key] = _Sent(now, a.resolved_at)
        for key in [k for k in self._sent if k not in firing and k not in self._resolved]:
            del self._sent[key]
        if due:
            for t in self.targets:
                t.enqueue(due)
        return due

    def close(self) -> None:
        for t in self.targets:
            t.close()
