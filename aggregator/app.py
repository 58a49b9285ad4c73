"""The aggregator's app factory: ingest API, read API, /metrics, /healthz, dashboard."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from sqlalchemy import Engine, text
from starlette.concurrency import run_in_threadpool

from aggregator import __version__
from aggregator.db import create_schema, make_engine, read_connection
from aggregator.identity import IdentityMap, load_identity_file
from aggregator.ingest import Ingestor
from aggregator.metrics import IngestMetrics, make_registry
from aggregator.query import LOCAL_ADMIN, Principal, Query, QueryError
from aggregator.retention import prune_samples
from aggregator.settings import ServerSettings
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
    )


def _services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(_services)]


def reader_principal(services: ServicesDep) -> Principal:
    """Who reads. Until login exists (OIDC, see the identity issue) only local mode reads."""
    if services.settings.local_mode:
        return LOCAL_ADMIN
    raise HTTPException(
        401,
        "reading needs a login, which this server does not have yet; "
        "start it with AFMON_LOCAL_MODE=true for a local demo",
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
    # Periodic jobs of the server, each run in its own thread until shutdown.
    jobs: list[Callable[[Services, threading.Event], None]] = [_retention_loop]
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

    @app.post(
        "/api/v1/ingest",
        summary="Apply one agent batch (wire format v1, JSON, optionally gzip)",
        responses={400: {}, 401: {}, 403: {}, 413: {}, 422: {}},
    )
    async def ingest(request: Request, s: ServicesDep) -> JSONResponse:
        started = time.perf_counter()
        facility = _facility_of_token(s.settings, request.headers.get("authorization", ""))
        if facility is None:
            s.instruments.batches.labels("unknown", "unauthorized").inc()
            return _ingest_error(401, "authorization", "missing or unknown agent bearer token")
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
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(s.registry), media_type=content_type)

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

        dash_app = create_dash(services.query, settings)
        app.mount("/", WSGIMiddleware(dash_app.server))  # type: ignore[arg-type]
    return app


def _facility_of_token(settings: ServerSettings, header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    for facility, expected in settings.facility_tokens.items():
        if _equal(token, expected):
            return facility
    return None


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


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
