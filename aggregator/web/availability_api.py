"""`GET /api/v1/availability`: service availability and downtimes (docs/availability.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from afmon.aggregator.query.availability import availability
from afmon.aggregator.web import openapi
from afmon.aggregator.web.services import PrincipalDep, ServicesDep


def _records(df: Any) -> list[dict[str, Any]]:
    return df.astype(object).where(df.notna(), None).to_dict(orient="records")


def make_router() -> APIRouter:
    router = APIRouter()

    @router.get(
        "/api/v1/availability",
        summary="Availability and downtimes of the services the agents check",
        responses=openapi.AVAILABILITY_RESPONSES,
        openapi_extra=openapi.READER_EXTRA,
    )
    async def get_availability(
        s: ServicesDep,
        p: PrincipalDep,
        start: Annotated[float, Query(ge=0, le=openapi.EPOCH_MAX, allow_inf_nan=False)],
        end: Annotated[float, Query(ge=0, le=openapi.EPOCH_MAX, allow_inf_nan=False)],
        per: Literal["window", "day"] = "window",
    ) -> dict[str, Any]:
        summary, downtimes = await run_in_threadpool(
            availability, s.query, p, start, end, s.settings.gauge_max_gap_seconds,
            s.clock(), per == "day",
        )  # fmt: skip
        return {"services": _records(summary), "downtimes": _records(downtimes)}

    return router
