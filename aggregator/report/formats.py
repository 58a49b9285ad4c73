"""CSV and JSON renderings of the report document: fixed column order, sorted keys and
rows, and numbers written the same way every time."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import msgspec

from afmon.aggregator.report.quantities import LEVELS
from afmon.aggregator.store.schema import RESOURCES


def render_json(doc: dict[str, Any]) -> bytes:
    """The document as `json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False)` writes
    it, byte for byte, but encoded by msgspec: the standard library encodes an indented
    document in Python, seconds for a report of 10,000 members. msgspec writes the same
    strings, integers and shortest round-trip float digits; only where a float's exponent is
    small or large enough does it spell the float otherwise (`1e16`, `0.00001`), and those
    lines are rewritten as Python writes them (`1e+16`, `1e-05`). The document holds finite
    numbers only (as JSON has no others)."""
    text = msgspec.json.format(msgspec.json.encode(doc, order="sorted"), indent=1)
    return _python_floats(text)


# where msgspec may spell a float unlike Python's repr: an exponent, or a decimal < 1e-4
# (two patterns that each begin with a literal, which the regex engine scans for fast)
_CANDIDATES = (re.compile(rb"e(?=[-0-9])"), re.compile(rb"0\.0000"))
# a line of the indented document that is a number: an array item or an object member
_NUMBER_LINE = re.compile(rb' *(?:"(?:[^"\\\n]|\\.)*": )?(-?[0-9]+(?:\.[0-9]+)?(?:e-?[0-9]+)?),?')


def _python_floats(text: bytes) -> bytes:
    """`text` (indented JSON) with each float spelled as Python's repr spells it, and a
    newline at the end. A string never spans lines, so a line that matches `_NUMBER_LINE` as
    a whole is a number."""
    hits = sorted(m.start() for pattern in _CANDIDATES for m in pattern.finditer(text))
    view = memoryview(text)  # slices of it are not copies
    parts: list[bytes | memoryview] = []
    done = 0  # text[:done] is in parts
    for hit in hits:
        if hit < done:
            continue  # on a line already looked at
        start = text.rfind(b"\n", 0, hit) + 1
        end = text.find(b"\n", hit)
        end = len(text) if end < 0 else end
        line = _NUMBER_LINE.fullmatch(text, start, end)
        if line is None:
            parts.append(view[done:end])
            done = end
            continue
        parts += [view[done : line.start(1)], repr(float(line.group(1))).encode()]
        done = line.end(1)
    parts += [view[done:], b"\n"]
    return b"".join(parts)


def csv_columns(doc: dict[str, Any], level: str) -> list[str]:
    keys = list(LEVELS[level]) + (["display_name"] if level == "member" else [])
    usage = [q["name"] for q in doc["quantities"]]
    previous = [f"previous_{r}" for r in RESOURCES]
    return keys + usage + previous


def render_csv(doc: dict[str, Any], level: str) -> bytes:
    """One table: a row per entity of `level`, every quantity this week and every resource
    the week before (base units as in the schema; hours forms as named). Cells as the csv
    module writes values: None empty, floats by repr."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")
    cols = csv_columns(doc, level)
    keys = [c for c in cols if c in LEVELS[level] or c == "display_name"]
    usage = [q["name"] for q in doc["quantities"]]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(cols)
    w.writerows(
        [*map(row.get, keys), *map(row["usage"].get, usage), *map(row["previous"].get, RESOURCES)]
        for row in doc["levels"][level]
    )
    return out.getvalue().encode()
