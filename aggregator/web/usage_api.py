"""Read routes of how the facility is used (docs/data.md): failure rates, failed batch jobs by
state and exit code, access methods and input data formats. Thin: the query layer
(aggregator/query/failures.py, access.py, formats.py) answers, scoped to the caller."""

# no `from __future__ import annotations`: FastAPI must see the dependencies' types
from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, HTTPException, Query

from afmon.aggregator.query import access, failures, formats
from afmon.aggregator.query.base import QueryError
from afmon.aggregator.web import openapi
from afmon.aggregator.web.services import PrincipalDep, ServicesDep

Epoch = Annotated[float, Query(ge=0, le=openapi.EPOCH_MAX, allow_inf_nan=False)]
_KEYS = ("facility", "vo", "group", "member")
By = Annotated[
    str,
    Query(
        description="Total per facility, vo, group or member (refused with 400 otherwise)",
        json_schema_extra={"enum": list(_KEYS)},
    ),
]


def _rows(description: str, properties: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    item = {"type": "object", "properties": properties, "required": list(properties)}
    schema = {"type": "array", "items": item}
    return {
        200: {"description": description, "content": {"application/json": {"schema": schema}}},
        400: openapi.error("A `by` that names no column"),
        **openapi.reader_errors(),
    }


_COUNT = {"type": "integer", "minimum": 0}
FAILURE_RESPONSES = _rows(
    "One row per (`by` key, activity: batch, session_start, dask_computation) with starts in "
    "the window: starts, failed (timed out included), timed_out, cancelled and failure_rate = "
    "failed / starts",
    {"activity": {"enum": list(failures.ACTIVITIES.values())}, "starts": _COUNT,
     "failed": _COUNT, "timed_out": _COUNT, "cancelled": _COUNT,
     "failure_rate": {"type": "number", "minimum": 0, "maximum": 1}},
)  # fmt: skip
BATCH_FAILURE_RESPONSES = _rows(
    "Batch jobs that began in the window and did not succeed, per (`by` key, state, exit code)",
    {"state": {"type": "string"}, "exit_code": {"type": "integer"},
     "outcome": {"enum": ["failed", "timed_out", "cancelled"]}, "jobs": _COUNT},
)  # fmt: skip
ACCESS_RESPONSES = _rows(
    "Active members per period (week or month), institution (with by=institution) and method",
    {"period": {"type": "string"}, "method": {"enum": list(access.METHODS)},
     "members": _COUNT},
)  # fmt: skip
FORMAT_RESPONSES = _rows(
    "Bytes read and files opened via XRootD per (`by` key, input data format: the agent's "
    "classes, physlite, daod, aod, miniaod, nanoaod, ntuple or other by default)",
    {"format": {"type": "string"}, "read_bytes": {"type": "number", "minimum": 0},
     "files": {"type": "number", "minimum": 0}},
)  # fmt: skip


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return df.astype(object).where(df.notna(), None).to_dict(orient="records")


def make_router() -> APIRouter:
    router = APIRouter(tags=["usage patterns"])
    extra = openapi.READER_EXTRA

    @router.get("/api/v1/failures", summary="Failure rates over starts, visible to the caller",
                responses=FAILURE_RESPONSES, openapi_extra=extra)  # fmt: skip
    def failure_rates(
        s: ServicesDep, p: PrincipalDep, start: Epoch, end: Epoch, by: By = "member"
    ) -> list[dict[str, Any]]:
        try:
            return _records(failures.failure_rates(s.engine, p, start, end, by))
        except QueryError as exc:
            raise HTTPException(400, str(exc)) from exc

    @router.get("/api/v1/failures/batch", summary="Failed batch jobs by state and exit code",
                responses=BATCH_FAILURE_RESPONSES, openapi_extra=extra)  # fmt: skip
    def batch_failures(
        s: ServicesDep, p: PrincipalDep, start: Epoch, end: Epoch, by: By = "member"
    ) -> list[dict[str, Any]]:
        try:
            return _records(failures.batch_failures(s.engine, p, start, end, by))
        except QueryError as exc:
            raise HTTPException(400, str(exc)) from exc

    @router.get("/api/v1/access-methods", summary="Active members by access method",
                responses=ACCESS_RESPONSES, openapi_extra=extra)  # fmt: skip
    def access_methods(
        s: ServicesDep,
        p: PrincipalDep,
        start: Epoch,
        end: Epoch,
        period: Annotated[
            str,
            Query(
                description="week or month (UTC; weeks start on Monday)",
                json_schema_extra={"enum": list(access.PERIODS)},
            ),
        ] = "week",  # fmt: skip
        by: Annotated[
            str | None,
            Query(
                description='institution: also per home institution ("" where unknown)',
                json_schema_extra={"enum": list(access.BY)},
            ),
        ] = None,  # fmt: skip
    ) -> list[dict[str, Any]]:
        try:
            return _records(access.active_by_method(s.engine, p, start, end, period, by))
        except QueryError as exc:
            raise HTTPException(400, str(exc)) from exc

    @router.get("/api/v1/data-formats", summary="Bytes and files read by input data format",
                responses=FORMAT_RESPONSES, openapi_extra=extra)  # fmt: skip
    def data_formats(
        s: ServicesDep, p: PrincipalDep, start: Epoch, end: Epoch, by: By = "member"
    ) -> list[dict[str, Any]]:
        try:
            return _records(formats.read_by_format(s.engine, p, start, end, by))
        except QueryError as exc:
            raise HTTPException(400, str(exc)) from exc

    return router
