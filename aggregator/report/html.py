"""The self-contained HTML report: tables and Plotly figures with plotly.js inlined once,
so it opens offline; element ids are fixed, so the same document gives the same bytes."""

from __future__ import annotations

from html import escape
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from afmon.aggregator.report.quantities import LEVELS

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f0f3f7}td.k,th.k{text-align:left}
.note{background:#fff8e1;border:1px solid #f0d98c;padding:.5em 1em}
"""


def _fmt(v: Any) -> str:
    """A cell's text, escaped: numbers with thousands separators (floats to 2 decimals)."""
    if v is None:
        return ""
    if isinstance(v, float | int) and not isinstance(v, bool):
        # digits, commas, a point and a sign: nothing to escape
        return f"{v:,.2f}" if isinstance(v, float) else f"{v:,d}"
    return escape(str(v))


def shown_quantities(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per resource used in either week: its hours form when it has one, else itself."""
    has_hours = {q["resource"] for q in doc["quantities"] if q["name"] != q["resource"]}
    rows = doc["levels"]["facility"]
    used = {r for row in rows for r, v in row["previous"].items() if v}
    used |= {q["resource"] for row in rows for q in doc["quantities"] if row["usage"][q["name"]]}
    return [
        q
        for q in doc["quantities"]
        if q["resource"] in used and (q["name"] != q["resource"] or q["resource"] not in has_hours)
    ]


def _table(headers: list[str], rows: list[list[Any]], keys: int, table_id: str) -> str:
    head = "".join(
        f'<th class="{"k" if i < keys else ""}">{escape(h)}</th>' for i, h in enumerate(headers)
    )
    opens: list[str] = []  # each column's opening tag

    def row(r: list[Any]) -> str:
        while len(opens) < len(r):
            opens.append('<td class="k">' if len(opens) < keys else '<td class="">')
        cells = [o + _fmt(v) + "</td>" for o, v in zip(opens, r, strict=False)]
        return "<tr>" + "".join(cells) + "</tr>"

    body = "".join(map(row, rows))
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _level_table(doc: dict[str, Any], level: str) -> str:
    keys = list(LEVELS[level]) + (["display_name"] if level == "member" else [])
    qs = shown_quantities(doc)
    headers = keys + [f"{q['name']} [{q['unit']}]" for q in qs]
    rows = [
        [r.get(k) for k in keys] + [r["usage"][q["name"]] for q in qs] for r in doc["levels"][level]
    ]
    return _table(headers, rows, len(keys), f"table-{level}")


def _figures(doc: dict[str, Any]) -> list[tuple[str, go.Figure]]:
    """Per shown quantity: each VO this week against the previous week."""
    vos = doc["levels"]["vo"]
    labels = [f"{r['facility']} / {r['vo']}" for r in vos]
    figs = []
    for q in shown_quantities(doc):
        divisor = float(q["divisor"])
        this = [r["usage"][q["name"]] for r in vos]
        before = [r["previous"][q["resource"]] / divisor for r in vos]
        fig = go.Figure(
            [
                go.Bar(name=doc["previous_week"], x=labels, y=before, marker_color="#9fb3c8"),
                go.Bar(name=doc["week"], x=labels, y=this, marker_color="#1f6fb2"),
            ]
        )
        fig.update_layout(
            title=f"{q['title']} per VO",
            yaxis_title=q["unit"],
            barmode="group",
            height=320,
            margin={"l": 60, "r": 20, "t": 50, "b": 60},
            template="plotly_white",
        )
        figs.append((q["name"], fig))
    return figs


def _latency(doc: dict[str, Any]) -> str:
    lat = doc["latency"]
    note = f'<p class="note" id="latency-status">{escape(lat["status"])}: {escape(lat["note"])}</p>'
    if lat["status"] != "ok":
        return note
    parts = [note]
    for level in ("facility", "vo", "member"):
        keys = list(LEVELS[level])
        cols = ["kind", "count", "p50_seconds", "p95_seconds", "slo_seconds", "within_slo_ratio"]
        rows = [[r[k] for k in keys] + [r[c] for c in cols] for r in lat["levels"][level]]
        parts.append(
            f"<h3>Per {level}</h3>"
            + _table(keys + cols, rows, len(keys) + 1, f"table-latency-{level}")
        )
    return "".join(parts)


def _completeness(doc: dict[str, Any]) -> str:
    c = doc["completeness"]
    parts = []
    if c["agents"] is None:
        parts.append('<p class="note">Agent liveness is shown to facility admins only.</p>')
    else:
        rows = [
            [
                a["facility"],
                a["node"],
                a["batches"],
                a["silent_seconds"],
                a["longest_silence_seconds"],
                "; ".join(f"{s['from']} to {s['to']}" for s in a["silences"]),
            ]
            for a in c["agents"]
        ]
        parts.append(
            f"<p>A node counts as silent when no batch of it arrived for more than "
            f"{c['silence_threshold_seconds']} s.</p>"
        )
        parts.append(
            _table(
                ["facility", "node", "batches", "silent s", "longest silence s", "silences (UTC)"],
                rows,
                2,
                "table-agents",
            )
        )
    rows = [
        [
            u["facility"],
            u["resource"],
            u["unmapped"],
            u["total"],
            None if u["share"] is None else f"{u['share'] * 100:.2f} %",
        ]
        for u in c["unmapped"]
    ]
    parts.append("<h3>Unmapped usage</h3>")
    parts.append(
        _table(["facility", "resource", "unmapped", "total", "share"], rows, 2, "table-unmapped")
    )
    return "".join(parts)


def render_html(doc: dict[str, Any]) -> bytes:
    w = doc["window"]
    prov = doc["provenance"]
    figs = []
    for i, (name, fig) in enumerate(_figures(doc)):
        figs.append(
            pio.to_html(
                fig,
                full_html=False,
                include_plotlyjs=(i == 0),
                div_id=f"fig-{name}",
                config={"displaylogo": False},
            )
        )
    settings = "".join(
        f"<li>{escape(k)} = {escape(str(v))}</li>" for k, v in sorted(prov["settings"].items())
    )
    levels = "".join(
        f"<h3>Per {level}</h3>{_level_table(doc, level)}"
        for level in ("facility", "vo", "group", "member")
    )
    title = f"afmon weekly report {doc['week']}"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{CSS}</style></head><body>
<h1>{escape(title)}</h1>
<p id="window">Window (UTC): {w["start"]} to {w["end"]}; compared with {doc["previous_week"]}
({doc["previous_window"]["start"]} to {doc["previous_window"]["end"]}).</p>
<p>Amounts in the units of the ledger's schema; time in hours, memory in GB-hours.
Resources with no use in either week are left out here (the CSV and JSON have all).</p>
<h2>Usage</h2>{levels}
<h2>Figures</h2><div id="figures">{"".join(figs)}</div>
<h2>Latency</h2><div id="latency">{_latency(doc)}</div>
<h2>Completeness</h2>{_completeness(doc)}
<h2>Provenance</h2><ul id="provenance"><li>afmon {escape(prov["afmon_version"])}</li>
<li>settings sha256 {prov["settings_sha256"]}</li>{settings}</ul>
</body></html>
"""
    return page.encode()
