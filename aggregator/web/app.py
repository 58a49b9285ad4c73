"""The aggregator's app factory: ingest API, read API, /metrics, /healthz, and what the
installed web extensions add (the dashboard, the alerts: `afmon.aggregator.web.extensions`)."""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from afmon.aggregator import __version__
from afmon.aggregator.auth.login import make_router as make_login_router
from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.federation.publish import federation_loop
from afmon.aggregator.ingest.limits import LimitExceeded
from afmon.aggregator.metrics.exporter import render_exposition
from afmon.aggregator.query.comparison import facility_comparison
from afmon.aggregator.query.reads import QueryError
from afmon.aggregator.report.api import build_report_router
from afmon.aggregator.report.schedule import scheduled_reports
from afmon.aggregator.store.db import read_connection
from afmon.aggregator.store.retention import prune_samples
from afmon.aggregator.store.tsdb import outbox_loop
from afmon.aggregator.web import openapi
from afmon.aggregator.web.availability_api import make_router as make_availability_router
from afmon.aggregator.web.extensions import Job, WebExtension, installed_extensions
from afmon.aggregator.web.federation import make_router as make_federation_router
from afmon.aggregator.web.gpu_api import make_router as make_gpu_router
from afmon.aggregator.web.health import readiness, write_failure_reason
from afmon.aggregator.web.leader import leader_only
from afmon.aggregator.web.producers import (
    DB_RETRY_AFTER_SECONDS,
    count_result,
    refused_answer,
)
from afmon.aggregator.web.producers import make_router as make_producers_router
from afmon.aggregator.web.public import make_router as make_public_router
from afmon.aggregator.web.security import SecurityHeaders
from afmon.aggregator.web.services import (
    PrincipalDep,
    Services,
    ServicesDep,
    build_services,
    reader_principal,
)
from afmon.aggregator.web.usage_api import make_router as make_usage_router
from afmon.collectors import wire

log = logging.getLogger(__name__)


def _ingest_error(status: int, field: str, message: str) -> JSONResponse:
    return JSONResponse({"detail": {"field": field, "message": message}}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes | None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    settings: ServerSettings,
    *,
    engine: Engine | None = None,
    clock: Callable[[], float] = time.time,
    with_dashboard: bool | None = None,
    extensions: Sequence[WebExtension] | None = None,
) -> FastAPI:
    """The server's app. `extensions` default to the installed ones (the dashboard and the
    alerts); `with_dashboard` overrides `settings.dashboard`."""
    if with_dashboard is not None:
        settings = settings.model_copy(update={"dashboard": with_dashboard})
    if extensions is None:
        extensions = installed_extensions()
    services = build_services(settings, engine, clock)
    # Periodic jobs of the server, each run in its own thread until shutdown; with several
    # workers one of them runs the leader's jobs (docs/scale.md), every one drains the outbox.
    jobs: list[Job] = [
        *(leader_only(j) for j in (_retention_loop, scheduled_reports, federation_loop)),
        _outbox_loop,  # raw samples into the InfluxDB-API store
        *(job for ext in extensions for job in ext.jobs()),
    ]
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        threads = [
            threading.Thread(
                target=job,
                args=(services, stop),
                name=f"afmon-{job.__name__.strip('_')}",
                daemon=True,
            )
            for job in jobs
        ]
        for t in threads:
            t.start()
        # What start-up built (the app, the dashboard, their libraries) lives as long as the
        # process: moved out of the collector's sight, a full collection no longer walks it
        # (it cost ~100 ms pauses in dashboard callbacks, docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        yield
        stop.set()
        for t in threads:
            t.join(timeout=5)

    app = FastAPI(
        title="afmon",
        version=__version__,
        description="Monitoring and accounting for HEP Analysis Facilities, per VO member.",
        lifespan=lifespan,
    )
    app.state.services = services
    if settings.sign_in_issuers:  # issuers with a client of their own, or the global one
        secret = settings.oidc_client_secret
        app.include_router(
            make_login_router(
                services.verifier,
                services.sessions,
                settings.oidc_client_id or "",
                secret.get_secret_value() if secret else "",
                settings.sign_in_issuers,
                settings.public_url,
                clock,
            )
        )
    app.add_middleware(SecurityHeaders)
    app.include_router(build_report_router(reader_principal))
    app.include_router(make_producers_router())  # Telegraf and OTLP (docs/scale.md)
    app.include_router(make_federation_router())  # facility afmons' ledgers (federation.md)
    app.include_router(make_public_router())  # the public facility card (public-card.md)
    app.include_router(make_availability_router())  # service checks (availability.md)
    app.include_router(make_gpu_router())  # GPU access breadth (gpu.md)
    app.include_router(make_usage_router())  # failures, access methods, formats (data.md)

    @app.post(
        "/api/v1/ingest",
        summary="Apply one agent batch (wire format v1, JSON, optionally gzip)",
        responses=openapi.INGEST_RESPONSES,
        openapi_extra=openapi.INGEST_EXTRA,
    )
    async def ingest(request: Request, s: ServicesDep) -> JSONResponse:
        started = time.perf_counter()
        agent = s.agents.facility(request.headers.get("authorization", ""))
        if agent is None:
            s.instruments.batches.labels("unknown", "unauthorized").inc()
            return _ingest_error(401, "authorization", "missing, unknown or revoked agent token")
        facility, credential = agent
        body = await _read_body(request, s.settings.max_body_bytes)
        if body is None:
            s.instruments.batches.labels(facility, "too_large").inc()
            return _ingest_error(
                413,
                "$",
                f"body larger than {s.settings.max_body_bytes} bytes; send smaller batches",
            )
        try:
            # each record is judged on its own: one that cannot be read is refused here
            # (`malformed`), those that break a rule by the ingestor
            batch, malformed = wire.decode_records(
                body, max_decompressed=s.settings.max_body_bytes * 8
            )
            stamped = batch.facility
            if stamped != facility:
                # The facility is the credential's (docs/security.md); the batch's field is
                # only the agent's belief. Re-stamping, not refusing, means a batch spooled
                # under a wrong AFMON_FACILITY never blocks the spool once the token is right.
                batch = msgspec.structs.replace(batch, facility=facility)
            # per agent: a facility-wide static token is shared by all of its agents
            wait = s.rate_limits.take(f"{credential}|{batch.agent_id}")
            if wait > 0:
                s.instruments.batches.labels(facility, "rate_limited").inc()
                limit = s.settings.ingest_rate_per_agent
                response = _ingest_error(429, "$", f"more than {limit:g} batches/s from this agent")
                response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
                return response
            refused = [*malformed, *s.ingestor.judge(batch)]
            result = await run_in_threadpool(s.ingestor.apply, batch, refused)
        except wire.TooLarge as exc:
            s.instruments.batches.labels(facility, "too_large").inc()
            return _ingest_error(413, exc.field, exc.message)
        except LimitExceeded as exc:
            s.instruments.batches.labels(facility, "over_limit").inc()
            log.warning("batch over a limit from facility %s: %s", facility, exc.message)
            return _ingest_error(422, exc.field, exc.message)
        except wire.WireError as exc:
            s.instruments.batches.labels(facility, "rejected").inc()
            log.warning("rejected batch from facility %s: %s", facility, exc)
            return _ingest_error(422, exc.field, exc.message)
        except DBAPIError as exc:  # the database, not the batch: the agent keeps it, retries
            reason = write_failure_reason(exc) or "other"
            s.instruments.write_failures.labels(facility, reason).inc()
            log.error("cannot store a batch of facility %s (%s): %s", facility, reason, exc.orig)
            response = _ingest_error(
                503, "$", f"the database cannot store data now ({reason}); retry later"
            )
            response.headers["Retry-After"] = str(DB_RETRY_AFTER_SECONDS)
            return response
        count_result(s.instruments, facility, result, started)
        answer = {
            "status": result.status,
            "facility": facility,
            **({"stamped_facility": stamped} if stamped != facility else {}),
            "seq": result.seq,
            "samples": result.samples,
            "stale_samples": result.stale_samples,
            "events": result.events,
        }
        if result.refused:
            answer["refused"] = refused_answer(result.refused)
        return JSONResponse(answer)

    @app.get(
        "/healthz",
        summary="Liveness and database reachability",
        responses=openapi.HEALTHZ_RESPONSES,
    )
    def healthz(s: ServicesDep) -> dict[str, Any]:
        try:
            with read_connection(s.engine) as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001  (any database failure means unhealthy)
            raise HTTPException(503, f"database unreachable: {exc.__class__.__name__}") from exc
        return {"status": "ok", "version": __version__, "database": s.engine.dialect.name}

    @app.get(
        "/readyz",
        summary="Readiness: whether data sent now would be stored (503 and why, if not)",
        responses=openapi.READYZ_RESPONSES,
    )
    def readyz(s: ServicesDep) -> JSONResponse:
        r = readiness(s.engine)
        return JSONResponse(
            {"status": "ready" if r.ready else "not ready", "checks": r.checks},
            status_code=200 if r.ready else 503,
        )

    @app.get(
        "/metrics",
        summary="Prometheus / OpenMetrics exposition (a scrape credential outside demo mode)",
        response_class=Response,
        responses=openapi.METRICS_RESPONSES,
        openapi_extra=openapi.METRICS_EXTRA,
    )
    def metrics(request: Request, s: ServicesDep) -> Response:
        refusal = s.scrape.refusal(request.headers.get("authorization", ""))
        if refusal is not None:
            return JSONResponse(
                {"detail": refusal},
                status_code=401,
                headers={"WWW-Authenticate": s.scrape.challenge},
            )
        body, content_type = render_exposition(s.registry, request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

    for ext in extensions:
        for router in ext.routers(reader_principal):
            app.include_router(router)

    @app.get(
        "/api/v1/usage",
        summary="Ledger totals visible to the caller",
        responses=openapi.USAGE_RESPONSES,
        openapi_extra=openapi.READER_EXTRA,
    )
    def usage(
        s: ServicesDep,
        p: PrincipalDep,
        # bounded: NaN, infinity or 1e30 reached the database (a 500); now a 422 naming it
        start: Annotated[float, Query(ge=0, le=openapi.EPOCH_MAX, allow_inf_nan=False)],
        end: Annotated[float, Query(ge=0, le=openapi.EPOCH_MAX, allow_inf_nan=False)],
        by: Annotated[str, Query(json_schema_extra=openapi.BY_SCHEMA)] = "vo",
    ) -> list[dict[str, Any]]:
        try:
            df = s.query.usage_totals(p, start, end, by=tuple(by.split(",")))
        except QueryError as exc:
            raise HTTPException(400, str(exc)) from exc
        return df.to_dict(orient="records")

    @app.get(
        "/api/v1/batch",
        summary="Batch usage by account, QoS and partition, visible to the caller",
        responses=openapi.BATCH_RESPONSES,
        openapi_extra=openapi.READER_EXTRA,
    )
    def batch(
        s: ServicesDep,
        p: PrincipalDep,
        start: Annotated[float, Query(ge=0, le=openapi.EPOCH_MAX, allow_inf_nan=False)],
        end: Annotated[float, Query(ge=0, le=openapi.EPOCH_MAX, allow_inf_nan=False)],
        by: Annotated[str, Query(json_schema_extra=openapi.BATCH_BY_SCHEMA)] = "account",
    ) -> list[dict[str, Any]]:
        try:
            df = s.query.batch_by(p, start, end, by=tuple(by.split(",")))
        except QueryError as exc:
            raise HTTPException(400, str(exc)) from exc
        # JSON has no NaN: an efficiency without wall time is null
        return df.astype(object).where(df.notna(), None).to_dict(orient="records")

    @app.get(
        "/api/v1/facilities",
        summary="The facilities the caller sees, side by side (docs/federation.md)",
        responses=openapi.FACILITIES_RESPONSES,
        openapi_extra=openapi.READER_EXTRA,
    )
    def facilities(
        s: ServicesDep,
        p: PrincipalDep,
        start: Annotated[float, Query(ge=0, le=openapi.EPOCH_MAX, allow_inf_nan=False)],
        end: Annotated[float, Query(ge=0, le=openapi.EPOCH_MAX, allow_inf_nan=False)],
    ) -> list[dict[str, Any]]:
        df = facility_comparison(s.query, p, start, end, s.settings.latency_slo_seconds)
        return df.astype(object).where(df.notna(), None).to_dict(orient="records")

    openapi.install(app)  # the document; 405 (not the dashboard's page) for a method a path lacks
    for ext in extensions:  # last: a mount at "/" (the dashboard) takes every other path
        ext.mount(app, services)
    return app


def _outbox_loop(services: Services, stop: threading.Event) -> None:
    outbox_loop(services.engine, services.settings, stop)


def _retention_loop(services: Services, stop: threading.Event, every: float = 3600.0) -> None:
    while True:
        try:
            removed = prune_samples(
                services.engine, services.clock() - services.settings.retention_days * 86400
            )
            if removed:
                log.info("retention: removed %d raw samples", removed)
        except Exception:  # noqa: BLE001  (retention must never stop the server)
            log.exception("retention pass failed")
        if stop.wait(every):
            return
