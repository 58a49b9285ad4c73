"""What the web app's routes and periodic jobs depend on: the `Services` of one app, built
from its settings, and the reader dependency (who is asking)."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from afmon.aggregator.auth.agent_tokens import AgentAuthenticator
from afmon.aggregator.auth.login import SESSION_COOKIE, Sessions
from afmon.aggregator.auth.tokens import AuthError, TokenVerifier
from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.identity.accounts import IdentityMap, load_identity_file
from afmon.aggregator.ingest.apply import Ingestor
from afmon.aggregator.metrics.exporter import IngestMetrics, make_registry
from afmon.aggregator.query.reads import LOCAL_ADMIN, Principal, Query
from afmon.aggregator.store.db import create_schema, make_engine
from afmon.aggregator.web.ratelimit import RateLimiter
from afmon.aggregator.web.scrape import ScrapeAccess

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
    scrape: ScrapeAccess


def build_services(
    settings: ServerSettings, engine: Engine | None = None, clock: Callable[[], float] = time.time
) -> Services:
    engine = engine or make_engine(settings.database_url)
    create_schema(engine)
    if settings.identity_file is not None:
        n = load_identity_file(engine, settings.identity_file)
        log.info("identity map: %d accounts from %s", n, settings.identity_file)
    identity = IdentityMap(engine)
    registry, instruments = make_registry(
        engine,
        facilities=settings.facility_tokens,  # their counters exist at 0 from the start
        alertmanagers=settings.alertmanager_urls,
        per_vo=settings.metrics_per_vo,
        node_silence=settings.metrics_node_silence_seconds,
        now=clock,
    )
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
        scrape=ScrapeAccess(settings),
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
