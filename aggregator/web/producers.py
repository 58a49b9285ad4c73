"""Routes for producers other than the afmon agent: Telegraf (InfluxDB v2 write API) and
OpenTelemetry (OTLP/HTTP metrics).

Both authenticate with the same agent credentials as `/api/v1/ingest` (`Authorization:
Token <t>` as Telegraf sends it, or `Bearer <t>`), convert the body into a `wire.Batch`
and apply it through the one `Ingestor`, so exactly-once, identity and the ledger have a
single code path. These producers send no sequence number: the batch id is a hash of the
decompressed body (and its precision), so a retried body applies once. Docs: docs/scale.md.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from afmon.aggregator.ingest import lineprotocol as lp
from afmon.aggregator.ingest import otlp
from afmon.aggregator.ingest.apply import IngestResult
from afmon.aggregator.ingest.limits import LimitExceeded
from afmon.aggregator.metrics.exporter import IngestMetrics
from afmon.aggregator.web import openapi
from afmon.aggregator.web.health import write_failure_reason
from afmon.collectors import wire

if TYPE_CHECKING:
    from afmon.aggregator.web.services import Services

SEQ_MASK = (1 << 63) - 1
DB_RETRY_AFTER_SECONDS = 5  # a failed database write: when to try again
log = logging.getLogger(__name__)


class Refused(Exception):
    """An answer other than success: HTTP status, machine code, message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        extra: dict[str, int] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}
        self.headers = {"Retry-After": str(retry_after)} if retry_after else {}


def content_seq(*parts: bytes) -> int:
    """A 63-bit batch id from the content: the same body gets the same id."""
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return int.from_bytes(h.digest()[:8], "big") & SEQ_MASK


async def read_body(request: Request, s: Services) -> bytes:
    """The body, decompressed, within AFMON_MAX_BODY_BYTES (x8 once decompressed)."""
    limit = s.settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(413, "request too large", f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, "request too large", f"body larger than {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding == "gzip" or body[:2] == b"\x1f\x8b":
        d = zlib.decompressobj(wbits=31)
        try:
            body = d.decompress(body, limit * 8)
        except zlib.error as exc:
            raise Refused(400, "invalid", f"bad gzip body: {exc}") from None
        if d.unconsumed_tail:
            raise Refused(413, "request too large", f"decompressed body over {limit * 8} bytes")
    elif encoding not in ("", "identity"):
        raise Refused(415, "unsupported", f"content-encoding {encoding!r}: send gzip or none")
    return body


def _credential(request: Request, s: Services) -> tuple[str, str]:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    agent = None
    if scheme.lower() in ("token", "bearer") and token:
        agent = s.agents.facility(f"Bearer {token.strip()}")
    if agent is None:
        s.instruments.batches.labels("unknown", "unauthorized").inc()
        raise Refused(401, "unauthorized", "missing, unknown or revoked agent token")
    return agent


async def _apply(
    s: Services,
    batch: wire.Batch,
    credential: str,
    started: float,
    extra: Sequence[wire.Refusal] = (),
) -> IngestResult:
    """Apply a converted batch through the one Ingestor; `extra`: refusals the conversion
    made (line protocol's bad lines, their text in `raw`), quarantined with the judged ones."""
    facility = batch.facility
    wait = s.rate_limits.take(f"{credential}|{batch.agent_id}")
    if wait > 0:
        s.instruments.batches.labels(facility, "rate_limited").inc()
        limit = s.settings.ingest_rate_per_agent
        # Retry-After: when the agent's bucket has a request again (as /api/v1/ingest says)
        raise Refused(
            429,
            "too many requests",
            f"more than {limit:g} requests/s",
            retry_after=max(1, math.ceil(wait)),
        )
    try:
        # encode + decode: the same validation as an agent's batch (names, lengths, control
        # characters), record by record: a series that breaks it is refused on its own
        batch, malformed = wire.decode_records(wire.encode(batch))
        refused = [*extra, *malformed, *s.ingestor.judge(batch)]
        result = await run_in_threadpool(s.ingestor.apply, batch, refused)
    except LimitExceeded as exc:
        s.instruments.batches.labels(facility, "over_limit").inc()
        raise Refused(422, "over limit", f"{_describe(batch, exc.field)}{exc.message}") from None
    except DBAPIError as exc:
        reason = write_failure_reason(exc) or "other"
        s.instruments.write_failures.labels(facility, reason).inc()
        log.error("cannot store a request of facility %s (%s): %s", facility, reason, exc.orig)
        raise Refused(
            503, "unavailable", f"the database cannot store data now ({reason}); retry later",
            retry_after=DB_RETRY_AFTER_SECONDS,
        ) from None  # fmt: skip
    except wire.WireError as exc:
        s.instruments.batches.labels(facility, "rejected").inc()
        raise Refused(400, "invalid", f"{_describe(batch, exc.field)}{exc.message}") from None
    count_result(s.instruments, facility, result, started)
    return result


def count_result(
    instruments: IngestMetrics, facility: str, result: IngestResult, started: float
) -> None:
    """Count an applied (or partly applied, or duplicate) batch in /metrics."""
    instruments.batches.labels(facility, result.status).inc()
    instruments.samples.labels(facility).inc(result.samples)
    instruments.stale_samples.labels(facility).inc(result.stale_samples)
    for r in result.refused:
        instruments.refused_records.labels(facility, r.reason).inc()
    instruments.duration.observe(time.perf_counter() - started)


MAX_REFUSALS_ANSWERED = 100


def refused_answer(refused: tuple[wire.Refusal, ...]) -> list[dict[str, str]]:
    """What an answer says about refused records (the first 100; all are quarantined)."""
    return [
        {"field": r.field, "reason": r.reason, "message": r.message}
        for r in refused[:MAX_REFUSALS_ANSWERED]
    ]


def _describe(batch: wire.Batch, field: str) -> str:
    """`$.series[3].values` -> the metric and labels of that series, for the message."""
    if field.startswith("$.series["):
        i = int(field[len("$.series[") :].split("]", 1)[0])
        if i < len(batch.series):
            return f"{batch.series[i].metric} {batch.series[i].labels}: "
    return ""


def make_router() -> APIRouter:
    router = APIRouter()

    @router.post(
        "/api/v2/write",
        summary="InfluxDB v2 line protocol (Telegraf outputs.influxdb_v2), mapped onto afmon",
        status_code=204,
        response_class=Response,
        responses=openapi.WRITE_RESPONSES,
        openapi_extra=openapi.WRITE_EXTRA,
    )
    async def write(
        request: Request,
        # refused (400, like InfluxDB) by the route, not by FastAPI: the enum is documentation
        precision: str = Query("ns", json_schema_extra=openapi.PRECISION_SCHEMA),
    ) -> Response:
        started = time.perf_counter()
        s: Services = request.app.state.services
        try:
            facility, credential = _credential(request, s)
            body = await read_body(request, s)
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Refused(400, "invalid", f"body is not UTF-8: {exc}") from None
            try:
                converted = lp.to_batch(
                    text,
                    precision=precision,
                    facility=facility,
                    agent_id=f"lp/{credential}",
                    seq=content_seq(b"lp", precision.encode(), body),
                    now=s.clock(),
                )
            except lp.LineError as exc:  # a bad precision: the whole body
                s.instruments.batches.labels(facility, "rejected").inc()
                raise Refused(400, "invalid", str(exc), {"line": exc.line}) from None
            headers = {"X-Afmon-Ignored-Fields": str(converted.ignored_fields)}
            bad = converted.bad_lines
            if not converted.batch.series and not bad:
                return Response(status_code=204, headers={**headers, "X-Afmon-Status": "empty"})
            # a bad line is refused on its own (quarantined, counted), the good ones applied
            result = await _apply(s, converted.batch, credential, started, bad)
            if bad and not converted.good_lines:  # nothing written: InfluxDB answers 400
                first = bad[0]
                extra = {"line": first.index, "refused_lines": len(bad)}
                raise Refused(400, "invalid", first.message, extra)
        except Refused as exc:
            return JSONResponse(
                {"code": exc.code, "message": exc.message, **exc.extra},
                status_code=exc.status,
                headers=exc.headers,
            )
        headers.update({"X-Afmon-Status": result.status, "X-Afmon-Samples": str(result.samples)})
        if result.refused:  # quarantined; the first reason for whoever reads the answer
            first = result.refused[0]
            headers["X-Afmon-Refused"] = str(len(result.refused))
            headers["X-Afmon-Refused-Reason"] = f"{first.reason}: {first.field}"
        if bad:  # also on a duplicate: the body's lines are as bad as the first time
            headers["X-Afmon-Refused-Lines"] = str(len(bad))
        return Response(status_code=204, headers=headers)

    @router.post(
        "/v1/metrics",
        summary="OTLP/HTTP metrics (protobuf or JSON), mapped onto afmon",
        response_class=Response,
        responses=openapi.OTLP_RESPONSES,
        openapi_extra=openapi.OTLP_EXTRA,
    )
    async def metrics(request: Request) -> Response:
        started = time.perf_counter()
        s: Services = request.app.state.services
        ctype = request.headers.get("content-type", "").lower()
        as_json = ctype.startswith("application/json")
        try:
            facility, credential = _credential(request, s)
            body = await read_body(request, s)
            try:
                if as_json and not body.lstrip().startswith(b"{"):
                    # protobuf's JSON parser took `[]` or `"x"` for an empty export
                    raise otlp.OtlpError("$", "not an OTLP JSON metrics request: not an object")
                req = otlp.parse_request(body, ctype)
                converted = otlp.to_batch(
                    req,
                    facility=facility,
                    agent_id=f"otlp/{credential}",
                    seq=content_seq(b"otlp", body),
                    now=s.clock(),
                )
            except otlp.OtlpError as exc:
                s.instruments.batches.labels(facility, "rejected").inc()
                status = 415 if exc.where == "content-type" else 400
                raise Refused(status, "invalid", str(exc)) from None
            partial = ExportMetricsServiceResponse()
            if converted.batch.series or converted.refused:
                # metrics and points refused by the mapping are quarantined with the rest
                result = await _apply(
                    s, converted.batch, credential, started, extra=converted.refused
                )
                series = converted.batch.series
                rejected = converted.rejected_points + sum(
                    len(series[r.index].times) for r in result.refused if r.kind == "series"
                )
                if rejected:  # OTLP's own way to say "some points were not accepted"
                    partial.partial_success.rejected_data_points = rejected
                    partial.partial_success.error_message = "; ".join(
                        f"{series[r.index].metric}: {r.message}" if r.kind == "series"
                        else f"{r.field}: {r.message}"
                        for r in result.refused[:10]
                    )  # fmt: skip
            if converted.ignored_points:  # a warning: zero rejected, a message
                message = partial.partial_success.error_message
                partial.partial_success.error_message = "; ".join(
                    m for m in (message, converted.warning()) if m
                )
        except Refused as exc:
            code = code_pb2.UNAUTHENTICATED if exc.status == 401 else code_pb2.INVALID_ARGUMENT
            if exc.status == 429:
                code = code_pb2.RESOURCE_EXHAUSTED
            elif exc.status == 503:
                code = code_pb2.UNAVAILABLE  # OTLP exporters retry this one
            if as_json:
                return JSONResponse(
                    {"code": code, "message": exc.message},
                    status_code=exc.status,
                    headers=exc.headers,
                )
            status = status_pb2.Status(code=code, message=exc.message)
            return Response(
                status.SerializeToString(),
                status_code=exc.status,
                media_type="application/x-protobuf",
                headers=exc.headers,
            )
        if as_json:
            return JSONResponse(json_format.MessageToDict(partial))
        return Response(partial.SerializeToString(), media_type="application/x-protobuf")

    return router
