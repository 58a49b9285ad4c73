"""The route of federated accounting's upstream side: `POST /api/v1/federation/ledger`
(aggregator/federation/receive.py does the work; docs/federation.md)."""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from afmon.aggregator.federation.messages import Publication
from afmon.aggregator.federation.receive import PublicationError, check, peer_facility, store
from afmon.aggregator.web import openapi
from afmon.aggregator.web.producers import Refused, read_body
from afmon.aggregator.web.services import Services


def make_router() -> APIRouter:
    router = APIRouter()

    @router.post(
        "/api/v1/federation/ledger",
        summary="A facility afmon's ledger hours (federated accounting, docs/federation.md)",
        response_class=JSONResponse,
        responses=openapi.FEDERATION_RESPONSES,
        openapi_extra=openapi.FEDERATION_EXTRA,
    )
    async def receive(request: Request) -> JSONResponse:
        s: Services = request.app.state.services
        try:
            facility = peer_facility(
                request.headers.get("authorization", ""), s.settings.federation_peers
            )
            if facility is None:
                raise Refused(401, "unauthorized", "missing or unknown federation credential")
            body = await read_body(request, s)
            try:
                pub = msgspec.json.decode(body, type=Publication)
                check(pub, facility)
            except msgspec.DecodeError as exc:
                raise Refused(400, "invalid", f"not a publication: {exc}") from None
            except PublicationError as exc:
                raise Refused(exc.status, "invalid", exc.message) from None

            def write() -> list[tuple[int, int]]:
                with s.engine.begin() as conn:
                    return store(conn, pub, s.clock())

            stored = await run_in_threadpool(write)
        except Refused as exc:
            return JSONResponse(
                {"detail": {"code": exc.code, "message": exc.message}}, status_code=exc.status
            )
        return JSONResponse({"hours": stored})

    return router
