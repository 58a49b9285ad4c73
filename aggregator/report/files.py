"""Which files a report run produces, their names, and writing them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afmon.aggregator.report import apel
from afmon.aggregator.report.formats import render_csv, render_json
from afmon.aggregator.report.html import render_html
from afmon.aggregator.report.quantities import LEVELS

FORMATS = ("csv", "json", "html", "apel")
# what the API serves, one file at a time
FILE_KINDS = ("json", "html", "csv", "apel-v03", "apel-v04", "apel-accelerator")
MEDIA = {
    "json": "application/json",
    "html": "text/html; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
    "apel-v03": "text/plain; charset=utf-8",
    "apel-v04": "text/plain; charset=utf-8",
    "apel-accelerator": "application/json",
}
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class FormatError(ValueError):
    pass


def parse_formats(text: str) -> tuple[str, ...]:
    wanted = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in wanted if f not in FORMATS]
    if bad or not wanted:
        raise FormatError(
            f"unknown format {', '.join(bad) or '(none)'}; "
            f"use a comma-separated list of {', '.join(FORMATS)}"
        )
    return tuple(f for f in FORMATS if f in wanted)


def base_name(doc: dict[str, Any]) -> str:
    f = doc["scope"]["filters"]
    parts = [f"afmon-report-{doc['week']}", f["facility"], f["vo"]]
    return "-".join(_SAFE.sub("_", p) for p in parts if p)


@dataclass(frozen=True)
class ReportFile:
    name: str
    media_type: str
    content: bytes


def render_one(doc: dict[str, Any], kind: str, level: str = "member") -> ReportFile | None:
    """One file of the report; None for accelerator records when there are no GPU
    resources. Raises FormatError for an unknown kind or level."""
    base = base_name(doc)
    if kind == "json":
        return ReportFile(f"{base}.json", MEDIA[kind], render_json(doc))
    if kind == "html":
        return ReportFile(f"{base}.html", MEDIA[kind], render_html(doc))
    if kind == "csv":
        if level not in LEVELS:
            raise FormatError(f"unknown level {level!r}; use one of {', '.join(LEVELS)}")
        return ReportFile(f"{base}-{level}.csv", MEDIA[kind], render_csv(doc, level))
    if kind == "apel-v03":
        return ReportFile(f"{base}-apel-v03.txt", MEDIA[kind], apel.render_v03(doc))
    if kind == "apel-v04":
        return ReportFile(f"{base}-apel-v04.txt", MEDIA[kind], apel.render_v04(doc))
    if kind == "apel-accelerator":
        content = apel.render_accelerator(doc)
        if content is None:
            return None
        return ReportFile(f"{base}-apel-accelerator.json", MEDIA[kind], content)
    raise FormatError(f"unknown format {kind!r}; use one of {', '.join(FILE_KINDS)}")


def render_files(doc: dict[str, Any], formats: tuple[str, ...]) -> list[ReportFile]:
    kinds: list[tuple[str, str]] = []
    for fmt in formats:
        if fmt == "csv":
            kinds += [("csv", level) for level in LEVELS]
        elif fmt == "apel":
            kinds += [("apel-v03", ""), ("apel-v04", ""), ("apel-accelerator", "")]
        else:
            kinds.append((fmt, ""))
    files = [render_one(doc, kind, level or "member") for kind, level in kinds]
    return [f for f in files if f is not None]


def write_files(files: list[ReportFile], out_dir: Path) -> list[Path]:
    """Write each file atomically (temporary name, then rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in files:
        path = out_dir / f.name
        tmp = out_dir / f".{f.name}.tmp"
        tmp.write_bytes(f.content)
        os.replace(tmp, path)
        paths.append(path)
    return paths
