"""The JSON and CSV renderings write exactly what the standard library's encoders write
(the report's bytes did not change when they became fast)."""

from __future__ import annotations

import csv
import io
import json
import random
import struct
from typing import Any

from afmon.aggregator.report.formats import csv_columns, render_csv, render_json
from afmon.aggregator.report.quantities import LEVELS
from afmon.aggregator.store.schema import RESOURCES


def stdlib_json(doc: Any) -> bytes:
    return (json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def floats(seed: int = 7) -> list[float]:
    """Floats of every magnitude, both signs, rounded and not, and random bit patterns."""
    rng = random.Random(seed)
    out = [0.0, -0.0, 1e16, 1e15, 1e-4, 1e-5, 5e-5, 1e-6, 123.0, 2.0**53, 2.0**63, 0.1 + 0.2]
    out += [5e-324, 1.7976931348623157e308, 9999999999999998.0, 1234567890123456.7]
    for exponent in range(-40, 40):
        out += [rng.random() * 10.0**exponent, -rng.uniform(1, 10) * 10.0**exponent]
        out.append(round(rng.random() * 10.0**exponent, rng.randint(0, 8)))
    while len(out) < 20_000:
        x = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        if x == x and abs(x) != float("inf"):
            out.append(x)
    return out


def test_json_is_the_standard_librarys_bytes_for_every_float() -> None:
    values = floats()
    doc = {"list": values, "members": {f"k{i}": v for i, v in enumerate(values)}}
    assert render_json(doc) == stdlib_json(doc)
    for v in values[:2000]:  # each alone, as the whole document and as a member
        assert render_json({"x": v}) == stdlib_json({"x": v}), v
        assert render_json([v]) == stdlib_json([v]), v


def test_json_leaves_strings_that_look_like_numbers_alone() -> None:
    doc = {
        "e-key": 1e16,  # a key whose `e-` is no exponent, on a line that needs a rewrite
        '": 1e16': "0.00001",
        "strings": ["1e5", "1e16,", '": 1e-7', "0.00001", "x\n1e16", "2.5e-9"],
        "keys with 1e5 in them": {"1e5": 1e-5, "0.00001": 0.00001, 'a"b': -3e-300},
        "text": 'tab\tquote"back\\slash\u2028é\x01\x1f\x7f',
        "nested": [[], {}, [{}], {"a": [None, True, False, 2**62, -(2**62)]}],
        "unicode keys": {"é": 1, "z": 2, "a": 3, "\u00ff": 4, "\U0001f600": 5},
    }
    assert render_json(doc) == stdlib_json(doc)
    assert json.loads(render_json(doc)) == doc


def test_an_empty_document_and_scalars() -> None:
    for doc in ({}, [], None, 0, 1.5e-7, "s", {"a": {}}):
        assert render_json(doc) == stdlib_json(doc)


def _document(level: str) -> dict[str, Any]:
    """A hand-made document with the cells a table can hold: text that needs quoting,
    floats, integers, None where a value is missing."""
    quantities = [{"name": "cpu_seconds"}, {"name": "cpu_hours"}, {"name": "gpu_seconds"}]
    rows = []
    for i in range(3):
        row: dict[str, Any] = {b: f'{b}-{i}, "quoted"' for b in LEVELS[level]}
        row["display_name"] = f"Member {i}\nsecond line"
        row["usage"] = {"cpu_seconds": 3600.5 * i, "cpu_hours": i, "gpu_seconds": None}
        row["previous"] = {r: (0.1 * i if n % 2 else i) for n, r in enumerate(RESOURCES)}
        rows.append(row)
    rows[0]["usage"].pop("gpu_seconds")  # a missing value is an empty cell
    return {"quantities": quantities, "levels": {level: rows}}


def _csv_as_it_was(doc: dict[str, Any], level: str) -> bytes:
    """The cells as the renderer wrote them one by one: None empty, floats by repr."""

    def cell(v: Any) -> str:
        return "" if v is None else repr(v) if isinstance(v, float) else str(v)

    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    cols = csv_columns(doc, level)
    w.writerow(cols)
    for row in doc["levels"][level]:
        flat = {**row, **row["usage"], **{f"previous_{r}": v for r, v in row["previous"].items()}}
        w.writerow([cell(flat.get(c)) for c in cols])
    return out.getvalue().encode()


def test_csv_cells_are_written_as_before() -> None:
    for level in LEVELS:
        doc = _document(level)
        assert render_csv(doc, level) == _csv_as_it_was(doc, level)
    table = list(csv.DictReader(io.StringIO(render_csv(_document("member"), "member").decode())))
    assert table[0]["gpu_seconds"] == "" and table[1]["cpu_seconds"] == "3600.5"
    assert table[2]["display_name"] == "Member 2\nsecond line"
