"""`GET /api/v1/reports/weekly`: one file of the weekly report, for the caller's scope."""

# no `from __future__ import annotations`: FastAPI must see the local dependency itself
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from afmon.aggregator.query.reads import Principal
from afmon.aggregator.report.build import build_report
from afmon.aggregator.report.files import FILE_KINDS, FormatError, render_one
from afmon.aggregator.report.week import Week, WeekError


def build_report_router(principal_dependency: Callable[..., Any]) -> APIRouter:
    """The router; `principal_dependency` is the app's reader dependency (who reads)."""
    router = APIRouter(tags=["reports"])
    PrincipalDep = Annotated[Principal, Depends(principal_dependency)]

    @router.get(
        "/api/v1/reports/weekly",
        summary="One file of the weekly accounting report (docs/report.md)",
        responses={400: {}, 401: {}, 404: {}},
    )
    def weekly(
        request: Request,
        p: PrincipalDep,
        week: Annotated[str | None, Query(description="ISO week, e.g. 2026-W47")] = None,
        format: Annotated[str, Query(description=", ".join(FILE_KINDS))] = "json",
        level: Annotated[str, Query(description="CSV table: member, group, vo, facility")] = (
            "member"
        ),
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
