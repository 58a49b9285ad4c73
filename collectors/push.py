"""The push loop: collect every probe, spool the batch, flush the spool oldest-first.

Server answers and what the loop does with the spooled batch:

    2xx                    sent: delete it ("partial": the server quarantined some
                           records, named in the answer and logged here)
    400, 413, 422          bad as a whole: move it to rejected/, log the server's reason
                           (`afmon-agent rejected requeue` sends it again, docs/agent.md)
    401, 403               the token is refused: keep everything, log, retry later
    429, 5xx, other, down  keep everything, retry after an exponential backoff with jitter
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
import msgspec

from afmon.collectors import wire
from afmon.collectors.probes.base import READY, Probe, ProbeOutput, sample
from afmon.collectors.spool import Spool, SpooledBatch

log = logging.getLogger(__name__)

INGEST_PATH = "/api/v1/ingest"
PERMANENT = frozenset({400, 413, 422})
AUTH = frozenset({401, 403})


@dataclass
class FlushResult:
    sent: int = 0
    rejected: int = 0
    pending: int = 0
    error: str | None = None  # why the flush stopped before the spool was empty


def server_message(response: httpx.Response) -> str:
    """The server's reason, from `{"detail": {"field", "message"}}` or whatever it sent."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text[:500] or response.reason_phrase
    if isinstance(detail, dict) and "message" in detail:
        return f"{detail.get('field', '$')}: {detail['message']}"
    if isinstance(detail, list):  # FastAPI's own validation errors
        return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return str(detail)


class PushLoop:
    def __init__(
        self,
        *,
        probes: Sequence[Probe],
        spool: Spool,
        client: httpx.Client,
        server_url: str,
        token: str | None,
        facility: str,
        node: str,
        interval: float = 15.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        rng: random.Random | None = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 300.0,
    ) -> None:
        self.probes = list(probes)
        self.spool = spool
        self.client = client
        self.url = server_url.rstrip("/") + INGEST_PATH
        self.facility = facility
        self.node = node
        self.interval = interval
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep  # None: wait on the stop event
        self.rng = rng or random.Random()
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.failures = 0  # consecutive failed send attempts
        self.next_attempt = -math.inf  # monotonic time before which flush() does not send
        self.headers = {"Content-Type": wire.CONTENT_TYPE, "Content-Encoding": "gzip"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        for probe in self.probes:
            if probe.state != READY and not getattr(probe, "reports_state", False):
                log.warning("probe %s is not ready (%s): skipping it", probe.name, probe.state)

    # -- building batches -----------------------------------------------------------------

    def collect(self, now: float) -> ProbeOutput:
        """Everything the ready probes give, plus the agent's own series; never raises."""
        out = ProbeOutput()
        for probe in self.probes:
            if probe.state != READY and not getattr(probe, "reports_state", False):
                continue  # a probe with `reports_state` is asked anyway: it says why not
            try:
                out.extend(probe.collect(now))
            except Exception:
                log.exception("probe %s failed; the other probes carry on", probe.name)
        labels = {"node": self.node}
        out.series.append(
            sample(
                "agent_spool_dropped_samples",
                labels,
                now,
                self.spool.dropped_samples,
                created=self.spool.created,
            )
        )
        out.series.append(sample("agent_spool_batches", labels, now, len(self.spool.pending())))
        return out

    def build_batch(self, now: float, seq: int, agent_id: str) -> wire.Batch:
        return self._batch(now, seq, agent_id, self.collect(now))

    def _batch(self, now: float, seq: int, agent_id: str, out: ProbeOutput) -> wire.Batch:
        return wire.Batch(
            version=wire.WIRE_VERSION,
            agent_id=agent_id,
            facility=self.facility,
            node=self.node,
            seq=seq,
            sent_at=now,
            series=out.series,
            events=out.events,
        )

    def spool_batch(self) -> SpooledBatch:
        """Collect and spool one batch. OSError when the spool cannot be written (a full
        disk): the collected samples then count as dropped (`Spool.count_dropped`)."""
        now = self.clock()
        out = self.collect(now)
        try:
            seq = self.spool.allocate_seq()
        except OSError:
            self.spool.count_dropped(sum(len(s.times) for s in out.series))
            raise
        return self.spool.put(self._batch(now, seq, self.spool.agent_id, out))

    # -- sending --------------------------------------------------------------------------

    def flush(self, *, force: bool = False, stop: threading.Event | None = None) -> FlushResult:
        """Send spooled batches oldest-first; honour the backoff unless `force`."""
        result = FlushResult()
        items = self.spool.pending()
        if not force and items and self.monotonic() < self.next_attempt:
            result.pending, result.error = len(items), "backing off"
            return result
        for item in items:
            if stop is not None and stop.is_set():
                result.error = "stopping"
                break
            outcome = self._send(item)
            if outcome == "sent":
                result.sent += 1
            elif outcome == "rejected":
                result.rejected += 1
            elif outcome is not None:
                result.error = outcome
                break
        result.pending = len(self.spool.pending())
        return result

    def _send(self, item: SpooledBatch) -> str | None:
        """'sent', 'rejected', None (skipped), or why sending must stop for now."""
        body = self.spool.load(item)
        if body is None:
            return None
        try:
            response = self.client.post(self.url, content=body, headers=self.headers)
        except httpx.HTTPError as exc:
            return self._failed(f"cannot reach {self.url}: {exc!r}", None)
        code = response.status_code
        if 200 <= code < 300:
            self.failures, self.next_attempt = 0, -math.inf
            status, refused = self._status(response)
            if status == "partial":  # applied, less records the server quarantined
                for r in refused[:5]:
                    log.warning(
                        "batch seq %d: the server refused %s (%s): %s; it keeps the record "
                        "for `afmon quarantine replay`",
                        item.seq, r.get("field"), r.get("reason"), r.get("message"),
                    )  # fmt: skip
            elif status not in ("applied", "duplicate"):
                log.warning("batch seq %d: server said %s %r", item.seq, code, status)
            log.debug("batch seq %d %s (%d samples)", item.seq, status, item.samples)
            self.spool.delete(item)
            return "sent"
        message = server_message(response)
        if code in PERMANENT:
            self.failures, self.next_attempt = 0, -math.inf
            log.error("server refused batch seq %d (HTTP %d): %s", item.seq, code, message)
            self.spool.reject(item, f"HTTP {code}: {message}")
            return "rejected"
        if code in AUTH:
            why = (
                f"server refused the agent's token (HTTP {code}: {message}); check AFMON_TOKEN"
                " and AFMON_FACILITY. Batches stay in the spool"
            )
            return self._failed(why, response, level=logging.ERROR)
        return self._failed(f"HTTP {code} from {self.url}: {message}", response)

    @staticmethod
    def _status(response: httpx.Response) -> tuple[str | None, list[dict[str, str]]]:
        """The answer's status and its refused records (a partial batch)."""
        try:
            answer = msgspec.json.decode(response.content)
            refused = answer.get("refused") or []
            return answer.get("status"), [r for r in refused if isinstance(r, dict)]
        except (msgspec.DecodeError, AttributeError):
            return None, []

    def _failed(
        self, why: str, response: httpx.Response | None, level: int = logging.WARNING
    ) -> str:
        self.failures += 1
        delay = min(self.backoff_max, self.backoff_initial * 2 ** (self.failures - 1))
        delay *= 0.5 + 0.5 * self.rng.random()  # jitter, so agents do not retry in step
        retry_after = response.headers.get("Retry-After", "") if response is not None else ""
        if retry_after.strip().isdigit():
            delay = min(self.backoff_max, max(delay, float(retry_after)))
        self.next_attempt = self.monotonic() + delay
        log.log(level, "%s; next try in %.1f s", why, delay)
        return why

    # -- loops ----------------------------------------------------------------------------

    def run_once(self) -> FlushResult:
        """Collect once, spool, and try to send everything now (ignoring any backoff)."""
        self.spool_batch()
        return self.flush(force=True)

    def run_forever(self, stop: threading.Event) -> None:
        """Collect every `interval` and flush, until `stop` is set; then flush what it can."""
        wait = self.sleep or stop.wait
        next_collect = self.monotonic()
        while not stop.is_set():
            if self.monotonic() >= next_collect:
                try:
                    self.spool_batch()
                except OSError as exc:
                    log.error(
                        "cannot spool a batch (%s): this interval's samples are lost (counted "
                        "in agent_spool_dropped_samples, %d so far)", exc,
                        self.spool.dropped_samples,
                    )  # fmt: skip
                next_collect += self.interval
                if next_collect <= self.monotonic():  # fell behind: skip, do not catch up
                    next_collect = self.monotonic() + self.interval
            self.flush(stop=stop)
            wake = next_collect
            if self.next_attempt > self.monotonic():
                wake = min(wake, self.next_attempt)
            if not stop.is_set():
                wait(max(0.0, wake - self.monotonic()))
        result = self.flush(force=True)
        log.info(
            "stopped: %d sent on the way out, %d left in the spool", result.sent, result.pending
        )
