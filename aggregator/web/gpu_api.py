"""`GET /api/v1/gpu-breadth`: how widely the GPUs were shared (docs/gpu.md, Access breadth)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from afmon.aggregator.query.gpu_breadth import gpu_breadth
from afmon.aggregator.web import openapi
from afmon.aggregator.web.services import PrincipalDep, ServicesDep


def make_router() -> APIRouter:
    router = APIRouter()

    @router.get(
        "/api/v1/gpu-breadth",
        summary="GPU access breadth per facility: members served per GPU-day, several GPUs "
        "at once, the wait for a GPU session",
        responses=openapi.GPU_BREADTH_RESPONSES,
        openapi_extra=openapi.READER_EXTRA,
    )
    async def get_gpu_breadth(
        s: ServicesDep,
        p: PrincipalDep,
        start: Annotated[float, Query(ge=0, le=openapi.EPOCH_MAX, allow_inf_nan=False)],
        end: Annotated[float, Query(ge=0, le=openapi.EPOCH_MAX, allow_inf_nan=False)],
    ) -> list[dict[str, Any]]:
        df = await run_in_threadpool(
            gpu_breadth, s.query, p, start, end, s.settings.gpu_profile_pattern
        )
        return df.astype(object).where(df.notna(), None).to_dict(orient="records")

    return router
