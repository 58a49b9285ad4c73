"""The public facility card (docs/public-card.md): `GET /public` (a page) and
`GET /public.json` (the document), anonymous, only when AFMON_PUBLIC_CARD is on."""

from __future__ import annotations

import html
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from afmon.aggregator.query.public_card import public_card
from afmon.aggregator.web import openapi
from afmon.aggregator.web.services import Services

OFF = "the public facility card is off (AFMON_PUBLIC_CARD)"


async def _card(request: Request) -> dict[str, Any]:
    s: Services = request.app.state.services
    if not s.settings.public_card:
        raise HTTPException(404, OFF)
    return await run_in_threadpool(
        public_card,
        s.query,
        s.clock(),
        s.settings.latency_slo_seconds,
        s.settings.public_card_min_members,
        s.settings.gauge_max_gap_seconds,
    )


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _secs(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.1f} s"


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def render(card: dict[str, Any]) -> str:
    """The card as a self-contained HTML page (no script)."""
    parts = ["<h1>Analysis Facility card</h1>",
             f"<p>Aggregates only; VOs and groups with fewer than {card['min_members']} active "
             "members are folded into “other”. "
             '<a href="public.json">This card as JSON</a> (schema '
             f"{html.escape(card['schema'])}).</p>"]  # fmt: skip
    for f in card["facilities"]:
        cap = f["capacity"]
        parts.append(f'<section class="facility" id="card-{html.escape(f["facility"])}">')
        parts.append(f"<h2>{html.escape(f['facility'])}</h2>")
        parts.append(_table(["Nodes", "CPU cores", "Memory (GiB)", "GPUs"], [[
            cap["nodes"], f"{cap['cpu_cores']:,.0f}", f"{cap['memory_bytes'] / 2**30:,.0f}",
            cap["gpus"]]]))  # fmt: skip
        rows = []
        for name in ("week", "month"):
            w = f[name]
            waits = w["interactive"]
            tts, ttfw = waits["time_to_session"], waits["time_to_first_worker"]
            rows.append([w["period"], w["active_members"], f"{w['cpu_hours']:,.1f}",
                         f"{w['gpu_hours']:,.1f}", _secs(tts["p95_seconds"]),
                         _pct(tts["within_slo_ratio"]), _secs(ttfw["p95_seconds"]),
                         _pct(ttfw["within_slo_ratio"])])  # fmt: skip
        parts.append(_table(["Period", "Active members", "CPU hours", "GPU hours",
                             "Time to session p95", "Within SLO", "First worker p95",
                             "Within SLO (worker)"], rows))  # fmt: skip
        w = f["week"]
        parts.append(f"<h3>Last week ({html.escape(w['period'])})</h3>")
        if w["availability"]:
            rows = [[svc, _pct(a["availability"]), _pct(a["unplanned_availability"])]
                    for svc, a in w["availability"].items()]  # fmt: skip
            parts.append(_table(["Service", "Availability", "Unplanned availability"], rows))
        parts.append(
            _table(
                ["Access method", "Active members"],
                [[m, n] for m, n in w["active_members_by_access_method"].items()],
            )
        )
        parts.append(
            _table(
                ["Data read from", "Share"],
                [[s, _pct(v)] for s, v in w["data_read_by_source"].items()],
            )
        )
        if w["data_read_by_format"]:
            parts.append(
                _table(
                    ["Input format", "Share"],
                    [[k, _pct(v)] for k, v in w["data_read_by_format"].items()],
                )
            )
        parts.append(_table(["VO", "Active members", "CPU hours"],
                            [[v["name"], v["members"], f"{v['cpu_hours']:,.1f}"]
                             for v in w["vos"]]))  # fmt: skip
        parts.append("</section>")
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>Analysis Facility card</title><style>body{font-family:sans-serif;margin:2em}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
        "padding:.2em .6em;text-align:right}</style></head><body>"
        + "".join(parts)
        + "</body></html>"
    )


def make_router() -> APIRouter:
    router = APIRouter()

    @router.get(
        "/public.json",
        summary="The public facility card (docs/public-card.md), when AFMON_PUBLIC_CARD is on",
        responses=openapi.PUBLIC_RESPONSES,
    )
    async def card_json(request: Request) -> JSONResponse:
        return JSONResponse(await _card(request))

    @router.get(
        "/public",
        summary="The public facility card as a page",
        response_class=HTMLResponse,
        responses={404: openapi.PUBLIC_RESPONSES[404]},
    )
    async def card_page(request: Request) -> HTMLResponse:
        return HTMLResponse(render(await _card(request)))

    return router
