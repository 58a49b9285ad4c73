"""The aggregator's app factory: ingest API, read API, /metrics, /healthz, dashboard."""

from __future__ import annotations

import gc
import logging
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text
from starlette.concurrency import run_in_threadpool

from aggregator import __version__
from aggregator.agent_tokens import AgentAuthenticator
from aggregator.auth import AuthError, TokenVerifier
from aggregator.db import create_schema, make_engine, read_connection
from aggregator.identity import IdentityMap, load_identity_file
from aggregator.ingest import Ingestor
from aggregator.ingest_producers import make_router as make_producers_router
from aggregator.leader import leader_only
from aggregator.login import SESSION_COOKIE, Sessions
from aggregator.login import make_router as make_login_router
from aggregator.metrics import IngestMetrics, make_registry, render_exposition
from aggregator.query import LOCAL_ADMIN, Principal, Query, QueryError
from aggregator.ratelimit import RateLimiter
from aggregator.report.api import build_report_router
from aggregator.report.schedule import scheduled_reports
from aggregator.retention import prune_samples
from aggregator.security import SecurityHeaders
from aggregator.settings import ServerSettings
from aggregator.tsdb_influx import outbox_loop
from alerts.service import alert_loop, alerts_router
from collectors import wire

log = logging.getLogger(__name__)


@dataclass
class Services:
    """What the routes depend on; one per app."""

    settings: ServerSettings
    engine: Engine
    identity: IdentityMap
    ingestor: Ingestor
    query: Query
    registry: CollectorRegistry
    instruments: IngestMetrics
    clock: Callable[[], float]
    verifier: TokenVerifier
    agents: AgentAuthenticator
    rate_limits: RateLimiter
    sessions: Sessions


def build_services(
    settings: ServerSettings, engine: Engine | None = None, clock: Callable[[], float] = time.time
) -> Services:
    engine = engine or make_engine(settings.database_url)
    create_schema(engine)
    if settings.identity_file is not None:
        n = load_identity_file(engine, settings.identity_file)
        log.info("identity map: %d accounts from %s", n, settings.identity_file)
    identity = IdentityMap(engine)
    registry, instruments = make_registry(engine)
    return Services(
        settings=settings,
        engine=engine,
        identity=identity,
        ingestor=Ingestor(engine, identity, settings, clock),
        query=Query(engine),
        registry=registry,
        instruments=instruments,
        clock=clock,
        verifier=TokenVerifier(
            settings.oidc_issuers,
            settings.oidc_audience,
            settings.admin_groups,
            settings.admin_facility,
            clock=clock,
        ),
        agents=AgentAuthenticator(engine, settings.facility_tokens),
        rate_limits=RateLimiter(settings.ingest_rate_per_agent, burst_seconds=5.0),
        sessions=Sessions(
            settings.session_secret.get_secret_value()
            if settings.session_secret
            else secrets.token_urlsafe(32)  # local mode or no sign-in: per process is fine
        ),
    )


async def _services(request: Request) -> Services:
    # async: FastAPI runs a plain-def dependency in its thread pool, a hop per request
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(_services)]


def reader_principal(request: Request, services: ServicesDep) -> Principal:
    """Who reads: the holder of a valid bearer token from a trusted issuer, or, in local
    (demo) mode only, the local admin."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        try:
            return services.verifier.principal(token)
        except AuthError as exc:
            raise HTTPException(
                401, f"bearer token refused: {exc}", headers={"WWW-Authenticate": "Bearer"}
            ) from None
    session = services.sessions.load(request.cookies.get(SESSION_COOKIE), services.clock())
    if session is not None:
        return session
    if services.settings.local_mode:
        return LOCAL_ADMIN
    raise HTTPException(
        401,
        "sign in: send a bearer token (a WLCG/OIDC access token) from a trusted issuer",
        headers={"WWW-Authenticate": "Bearer"},
    )


PrincipalDep = Annotated[Principal, Depends(reader_principal)]


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
) -> FastAPI:
    services = build_services(settings, engine, clock)
    # Periodic jobs of the server, each run in its own thread until shutdown; with several
    # workers one of them runs the first three (docs/scale.md), every one drains the outbox.
    jobs: list[Callable[[Services, threading.Event], None]] = [
        *(leader_only(j) for j in (_retention_loop, alert_loop, scheduled_reports)),
        outbox_loop,  # raw samples into the InfluxDB-API store
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
    if settings.oidc_client_id and settings.oidc_issuers:
        secret = settings.oidc_client_secret
        app.include_router(
            make_login_router(
                services.verifier,
                services.sessions,
                settings.oidc_client_id,
                secret.get_secret_value() if secret else "",
                list(settings.oidc_issuers),
                settings.public_url,
                clock,
            )
        )
    app.add_middleware(SecurityHeaders)
    app.include_router(build_report_router(reader_principal))
    app.include_router(make_producers_router())  # Telegraf and OTLP (docs/scale.md)

    @app.post(
        "/api/v1/ingest",
        summary="Apply one agent batch (wire format v1, JSON, optionally gzip)",
        responses={400: {}, 401: {}, 403: {}, 413: {}, 422: {}},
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
            batch = wire.decode(
                body,
                max_decompressed=s.settings.max_body_bytes * 8,
                now=s.clock(),
                max_future_skew=s.settings.max_future_skew_seconds,
            )
            if batch.facility != facility:
                s.instruments.batches.labels(facility, "forbidden").inc()
                return _ingest_error(
                    403,
                    "$.facility",
                    f"this token writes facility {facility!r}, not {batch.facility!r}",
                )
            # per agent: a facility-wide static token is shared by all of its agents
            wait = s.rate_limits.take(f"{credential}|{batch.agent_id}")
            if wait > 0:
                s.instruments.batches.labels(facility, "rate_limited").inc()
                limit = s.settings.ingest_rate_per_agent
                response = _ingest_error(429, "$", f"more than {limit:g} batches/s from this agent")
                response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
                return response
            result = await run_in_threadpool(s.ingestor.apply, batch)
        except wire.TooLarge as exc:
            s.instruments.batches.labels(facility, "too_large").inc()
            return _ingest_error(413, exc.field, exc.message)
        except wire.WireError as exc:
            s.instruments.batches.labels(facility, "rejected").inc()
            log.warning("rejected batch from facility %s: %s", facility, exc)
            return _ingest_error(422, exc.field, exc.message)
        s.instruments.batches.labels(facility, result.status).inc()
        s.instruments.samples.labels(facility).inc(result.samples)
        s.instruments.stale_samples.labels(facility).inc(result.stale_samples)
        s.instruments.duration.observe(time.perf_counter() - started)
        return JSONResponse(
            {
                "status": result.status,
                "seq": result.seq,
                "samples": result.samples,
                "stale_samples": result.stale_samples,
                "events": result.events,
            }
        )

    @app.get("/healthz", summary="Liveness and database reachability")
    def healthz(s: ServicesDep) -> dict[str, Any]:
        try:
            with read_connection(s.engine) as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001  (any database failure means unhealthy)
            raise HTTPException(503, f"database unreachable: {exc.__class__.__name__}") from exc
        return {"status": "ok", "version": __version__, "database": s.engine.dialect.name}

    @app.get("/metrics", summary="Prometheus / OpenMetrics exposition", include_in_schema=True)
    def metrics(request: Request, s: ServicesDep) -> Response:
        body, content_type = render_exposition(s.registry, request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

    app.include_router(alerts_router(reader_principal))

    @app.get("/api/v1/usage", summary="Ledger totals visible to the caller")
    def usage(
        start: float, end: float, s: ServicesDep, p: PrincipalDep, by: str = "vo"
    ) -> list[dict[str, Any]]:
        try:
            df = s.query.usage_totals(p, start, end, by=tuple(by.split(",")))
        except QueryError as exc:
            raise HTTPException(400, str(exc)) from exc
        return df.to_dict(orient="records")

    if settings.dashboard if with_dashboard is None else with_dashboard:
        from a2wsgi import WSGIMiddleware

        from dashboard.app import create_dash

        dash_app = create_dash(services.query, settings, clock=clock, sessions=services.sessions)
        app.mount("/", WSGIMiddleware(dash_app.server))  # type: ignore[arg-type]
    return app


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
