"""CSV and JSON renderings of the report document: fixed column order, sorted keys and
rows, and numbers written the same way every time."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from afmon.aggregator.report.quantities import LEVELS
from afmon.aggregator.store.schema import RESOURCES


def render_json(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def csv_columns(doc: dict[str, Any], level: str) -> list[str]:
    keys = list(LEVELS[level]) + (["display_name"] if level == "member" else [])
    usage = [q["name"] for q in doc["quantities"]]
    previous = [f"previous_{r}" for r in RESOURCES]
    return keys + usage + previous


def render_csv(doc: dict[str, Any], level: str) -> bytes:
    """One table: a row per entity of `level`, every quantity this week and every resource
    the week before (base units as in the schema; hours forms as named)."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")
    cols = csv_columns(doc, level)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(cols)
    for row in doc["levels"][level]:
        flat = {**row, **row["usage"], **{f"previous_{r}": v for r, v in row["previous"].items()}}
        w.writerow([_cell(flat.get(c)) for c in cols])
    return out.getvalue().encode()
