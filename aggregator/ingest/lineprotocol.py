"""InfluxDB line protocol (what Telegraf's `outputs.influxdb_v2` sends) -> an afmon batch.

`LP_MAP` is the one table of what is mapped (docs/scale.md shows it): a (measurement,
field) pair names an afmon metric, with an optional linear conversion into the metric's
unit, tag conditions, and how points that land on the same series and time combine. The
measurement `afmon` is the generic way in: its fields are afmon metric names
(`afmon,user=alice,node=n1 user_cpu_seconds=12.5 1767225600000000000`), its other tags
become labels, and an optional `unit` tag must match the metric's unit.
Identity labels: `user` from the tag `user`, `node` from the tag `node`, else `host`
(Telegraf adds `host` to every point). Fields that no row maps are ignored and counted.

What is line protocol is decided by `lp_parse` alone (InfluxDB's reference: a line ends at
`\n` outside a quoted field string, quotes are literal outside field values, the reference's
escapes and number ranges); this module maps what it reads.

The unit of refusal is the line, as in InfluxDB: a line that cannot be read or mapped adds
none of its points and is refused on its own (`Converted.bad_lines`: quarantined by the
ingest as `malformed`, kind `line`), the other lines are applied. Two points of one series
at one time: the last one wins (InfluxDB's rule), unless its row sums (`combine="sum"`).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

from afmon.aggregator.ingest import lp_parse
from afmon.collectors import wire

GENERIC_MEASUREMENT = "afmon"
PRECISION_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


@dataclass(frozen=True)
class FieldMap:
    """One mapped field: afmon value = offset + scale x field value."""

    metric: str
    scale: float = 1.0
    offset: float = 0.0
    combine: Literal["one", "sum"] = "one"
    where: tuple[tuple[str, str], ...] = ()


LP_MAP: dict[tuple[str, str], FieldMap] = {
    # Telegraf inputs.procstat with `user` set (tag user): one point per process, summed
    ("procstat", "memory_rss"): FieldMap("user_memory_rss_bytes", combine="sum"),
    # Telegraf inputs.mem / inputs.system / inputs.cpu (totalcpu = true)
    ("mem", "total"): FieldMap("node_memory_bytes"),
    ("system", "n_cpus"): FieldMap("node_cpu_cores"),
    ("cpu", "usage_idle"): FieldMap(
        "node_cpu_busy_ratio", scale=-0.01, offset=1.0, where=(("cpu", "cpu-total"),)
    ),
}
LABEL_NAME = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:.\-]{0,127}$")
MAX_LABEL_VALUE = 256  # wire.LabelValue


class LineError(ValueError):
    """A line that cannot be accepted; `line` is the 1-based number in the body of the
    line it starts on (a string field value may span lines)."""

    def __init__(self, line: int, message: str, text: str = "") -> None:
        shown = text if len(text) <= 120 else text[:117] + "..."
        super().__init__(f"line {line}: {message}" + (f": {shown!r}" if shown else ""))
        self.line = line


@dataclass
class Point:
    """A point as read: `time` in seconds (None: no timestamp), `stamp` as sent."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, lp_parse.FieldValue]
    time: float | None
    stamp: int | None = None


def parse_line(line: str, scale: float) -> Point:
    """One point (a line of `lp_parse.split_lines`) read as the reference reads it, its
    time in seconds (`scale`: seconds per timestamp unit); raises ValueError with the reason.
    A timestamp must fit int64 nanoseconds once scaled, as in InfluxDB."""
    p = lp_parse.parse(line)
    time: float | None = None
    if p.stamp is not None:
        if abs(p.stamp) * max(1, round(scale * 1e9)) > lp_parse.MAX_STAMP:
            raise ValueError("timestamp out of range")
        time = p.stamp * scale
    return Point(p.measurement, p.tags, p.fields, time, p.stamp)


@dataclass
class Converted:
    """The batch of a body's good lines; each bad line is a refusal of its own (kind
    `line`, reason `malformed`, its text in `raw`), none of its points in the batch."""

    batch: wire.Batch
    ignored_fields: int
    good_lines: int  # read and mapped (or ignored: nothing of it maps), not comments
    bad_lines: list[wire.Refusal]


SeriesKey = tuple[str, tuple[tuple[str, str], ...]]  # (metric, sorted labels)


@dataclass(frozen=True)
class Mapped:
    """One point of a good line, mapped: its afmon series, time and value."""

    key: SeriesKey
    time: float
    value: float
    combine: Literal["one", "sum"]


def to_batch(
    text: str,
    *,
    precision: str,
    facility: str,
    agent_id: str,
    seq: int,
    now: float,
) -> Converted:
    """Parse a body and map its good lines onto afmon series; a bad line is refused on its
    own (`Converted.bad_lines`). Raises LineError (line 0) for a bad precision only."""
    if precision not in PRECISION_SECONDS:
        raise LineError(0, f"precision must be one of {', '.join(PRECISION_SECONDS)}")
    scale = PRECISION_SECONDS[precision]
    # (metric, labels) -> time -> value; a repeated point replaces the one before (InfluxDB:
    # the last write wins), or adds to it when its row sums (per-process RSS)
    series: dict[SeriesKey, dict[float, float]] = defaultdict(dict)
    ignored = good = 0
    bad: list[wire.Refusal] = []
    first_node = bad_node = ""
    for n, line in lp_parse.split_lines(text):
        try:
            points, skipped = read_line(line, scale, now)
        except ValueError as exc:
            bad.append(_bad_line(n, line, str(exc)))
            bad_node = bad_node or _node_of(line, scale)
            continue
        good += 1
        ignored += skipped
        for m in points:
            first_node = first_node or dict(m.key[1])["node"]
            values = series[m.key]
            if m.combine == "sum" and m.time in values:
                values[m.time] += m.value
            else:
                values[m.time] = m.value
    out: list[wire.Series] = []
    for (metric, labels), points_at in series.items():
        unit, kind = wire.KNOWN_METRICS[metric]
        times = sorted(points_at)
        out.append(
            wire.Series(
                metric=metric,
                unit=unit,
                kind=kind,  # type: ignore[arg-type]
                labels=dict(labels),
                times=times,
                values=[points_at[t] for t in times],
            )
        )
    batch = wire.Batch(
        version=wire.WIRE_VERSION,
        agent_id=agent_id,
        facility=facility,
        # the batch's node (its agent row): of the first good line, else of a bad one
        node=first_node or bad_node or "line-protocol",
        seq=seq,
        sent_at=now,
        series=out,
    )
    return Converted(batch, ignored, good, bad)


def read_line(line: str, scale: float, now: float) -> tuple[list[Mapped], int]:
    """The mapped points of one non-empty, non-comment line and how many of its fields no
    row maps; raises ValueError with the reason when any part of the line is refused (then
    none of its points count)."""
    p = parse_line(line, scale)
    t = now if p.time is None else p.time
    if t < 0:
        raise ValueError("timestamp before 1970")
    points: list[Mapped] = []
    ignored = 0
    for name, value in p.fields.items():
        if p.measurement == GENERIC_MEASUREMENT and name not in wire.KNOWN_METRICS:
            raise ValueError(f"{name!r} is not an afmon metric (docs/wire-format.md)")
        mapped = _map(p, name)
        if mapped is None:
            ignored += 1
            continue
        fmap, labels = mapped
        metric = fmap.metric
        unit, kind = wire.KNOWN_METRICS[metric]
        if isinstance(value, (bool, str)):
            raise ValueError(f"field {name!r} of {metric} must be a number")
        if metric.startswith("user_") and "user" not in labels:
            raise ValueError(f"{metric} needs a `user` tag (the local account)")
        if "node" not in labels:
            raise ValueError(f"{metric} needs a `node` or `host` tag")
        if p.tags.get("unit", unit) != unit:
            raise ValueError(f"{metric} is in {unit!r}, not {p.tags['unit']!r}")
        for label, tag in labels.items():  # else the wire would refuse the series
            if len(tag) > MAX_LABEL_VALUE:
                raise ValueError(f"{label} is longer than {MAX_LABEL_VALUE} characters")
            if not wire.fits_label(tag):
                raise ValueError(f"{label} has a control character")
        try:
            v = fmap.offset + fmap.scale * float(value)
        except OverflowError:
            v = math.inf
        if not math.isfinite(v):
            raise ValueError(f"field {name!r} of {metric} is out of range")
        if kind == "counter" and v < 0:
            raise ValueError(f"counter {metric} has a negative value")
        points.append(Mapped((metric, tuple(sorted(labels.items()))), t, v, fmap.combine))
    return points, ignored


def _node_of(line: str, scale: float) -> str:
    """The node a bad line names when that much of it can be read, else ""."""
    try:
        tags = parse_line(line, scale).tags
    except ValueError:
        return ""
    node = tags.get("node") or tags.get("host") or ""
    return node if wire.fits_label(node) else ""


def _bad_line(n: int, line: str, reason: str) -> wire.Refusal:
    """The refusal of line `n`: named like LineError, kept as sent (less NUL characters,
    which PostgreSQL cannot store in text) for the quarantine."""
    return wire.Refusal(
        kind="line",
        index=n,
        field=f"line {n}",
        reason="malformed",
        message=str(LineError(n, reason, line)).replace("\x00", "\ufffd"),
        raw=line[: wire.MAX_RAW_KEPT].replace("\x00", "\ufffd"),
    )


def _map(p: Point, field: str) -> tuple[FieldMap, dict[str, str]] | None:
    """The mapping row and the afmon labels of one field, or None when unmapped."""
    if p.measurement == GENERIC_MEASUREMENT:
        if field not in wire.KNOWN_METRICS:
            return None
        fmap = FieldMap(field)
        labels = {k: v for k, v in p.tags.items() if k not in ("host", "unit")}
        bad = [k for k in labels if not LABEL_NAME.match(k)]
        if bad:
            raise ValueError(f"tag name {bad[0]!r} is not a valid label name")
    else:
        found = LP_MAP.get((p.measurement, field))
        if found is None or any(p.tags.get(k) != v for k, v in found.where):
            return None
        fmap = found
        labels = {k: p.tags[k] for k in ("user",) if k in p.tags}
    node = p.tags.get("node") or p.tags.get("host")
    if node:
        labels["node"] = node
    return fmap, labels
