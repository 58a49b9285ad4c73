"""`GET /api/v1/reports/weekly`: one file of the weekly report, for the caller's scope."""

# no `from __future__ import annotations`: FastAPI must see the local dependency itself
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from afmon.aggregator.query.reads import Principal
from afmon.aggregator.report.build import build_report
from afmon.aggregator.report.files import FILE_KINDS, FormatError, render_one
from afmon.aggregator.report.quantities import LEVELS
from afmon.aggregator.report.week import Week, WeekError

# The document's error shape (components added by `afmon.aggregator.web.openapi`)
_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_FILE = {"schema": {"type": "string"}}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file, as an attachment (its media type follows `format`)",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/html": _FILE,
            "text/csv": _FILE,
            "text/plain": _FILE,
        },
    },
    400: {"description": "A bad week (or one not ended yet), format or level", **_ERROR},
    401: {"description": "No session and no bearer token, or a token refused", **_ERROR},
    404: {"description": "No GPU resources in the ledger (format apel-accelerator)", **_ERROR},
}


def build_report_router(principal_dependency: Callable[..., Any]) -> APIRouter:
    """The router; `principal_dependency` is the app's reader dependency (who reads)."""
    router = APIRouter(tags=["reports"])
    PrincipalDep = Annotated[Principal, Depends(principal_dependency)]

    @router.get(
        "/api/v1/reports/weekly",
        summary="One file of the weekly accounting report (docs/report.md)",
        response_class=Response,
        responses=RESPONSES,
        openapi_extra={"security": [{"reader": []}, {"session": []}]},
    )
    def weekly(
        request: Request,
        p: PrincipalDep,
        # patterns and enums document what the route refuses itself (400)
        week: Annotated[
            str | None,
            Query(
                description="ISO week, e.g. 2026-W47; absent or empty: the last complete one",
                json_schema_extra={"pattern": r"^([0-9]{4}-W(0[1-9]|[1-4][0-9]|5[0-3]))?$"},
            ),
        ] = None,
        format: Annotated[
            str,
            Query(description=", ".join(FILE_KINDS), json_schema_extra={"enum": list(FILE_KINDS)}),
        ] = "json",
        level: Annotated[
            str,
            Query(
                description="CSV table: member, group, vo, facility",
                json_schema_extra={"enum": list(LEVELS)},
            ),
        ] = "member",
        facility: str | None = None,
        vo: str | None = None,
    ) -> Response:
        services = request.app.state.services
        now = services.clock()
        try:
            w = Week.parse(week) if week else Week.last_complete(now)
            w.check_ended(now)
            if format not in FILE_KINDS:
                raise FormatError(f"unknown format {format!r}; use one of {', '.join(FILE_KINDS)}")
            if level not in LEVELS:  # refused for every format, not only csv's
                raise FormatError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")
        except (WeekError, FormatError) as exc:
            raise HTTPException(400, str(exc)) from exc
        doc = build_report(services.query, p, w, services.settings, facility, vo)
        try:
            f = render_one(doc, format, level)
        except FormatError as exc:
            raise HTTPException(400, str(exc)) from exc
        if f is None:
            raise HTTPException(404, "no GPU resources in the ledger: no accelerator records")
        return Response(
            f.content,
            media_type=f.media_type,
            headers={"Content-Disposition": f'attachment; filename="{f.name}"'},
        )

    return router
