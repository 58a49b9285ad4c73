"""OTLP/HTTP metrics (protobuf or JSON, as the opentelemetry-sdk exporter sends) -> a batch.

What is mapped (docs/scale.md shows the table):
- a metric named like an afmon metric (`user_cpu_seconds`) in the matching UCUM unit
  (`UCUM` below: seconds -> `s`, bytes -> `By`, ...); its point attributes other than the
  identity ones become labels;
- the OpenTelemetry semantic-convention process and system metrics in `OTLP_MAP`, per
  process (`pid` label from the resource's `process.pid`).
Identity: `user` from the point attribute `user`, else the resource's `process.owner` or
`user.name`; `node` from the point attribute `node`, else the resource's `host.name`.
An afmon counter must arrive as a monotonic Sum: cumulative (its start time becomes the
series' `created`, so the first export counts in full) or delta (sent on as a delta series,
which the ingest adds to the series' stored total: ingest/delta.py); a gauge as a Gauge or
a cumulative non-monotonic Sum. Metrics that nothing maps are ignored and counted; a
histogram under an afmon name is refused and counted (`rejected_data_points`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from afmon.collectors import wire

UCUM = {
    "seconds": "s",
    "bytes": "By",
    "1": "1",
    "ratio": "1",
    "joules": "J",
    "watts": "W",
    "cores": "{cpu}",
    "HS23": "{HS23}",
}
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
NO_RECORDED_VALUE = 1


@dataclass(frozen=True)
class OtlpMap:
    """A semantic-convention metric (points filtered by `where`) -> an afmon metric."""

    metric: str
    unit: str
    where: tuple[tuple[str, frozenset[str]], ...] = ()
    combine: Literal["one", "sum"] = "one"


OTLP_MAP: dict[str, tuple[OtlpMap, ...]] = {
    "process.cpu.time": (
        OtlpMap("user_cpu_seconds", "s", (("cpu.mode", frozenset({"user", "system"})),), "sum"),
    ),
    "process.memory.usage": (OtlpMap("user_memory_rss_bytes", "By"),),
    "process.disk.io": (
        OtlpMap("user_io_read_bytes", "By", (("disk.io.direction", frozenset({"read"})),)),
        OtlpMap("user_io_write_bytes", "By", (("disk.io.direction", frozenset({"write"})),)),
    ),
    "system.memory.limit": (OtlpMap("node_memory_bytes", "By"),),
    "system.cpu.logical.count": (OtlpMap("node_cpu_cores", "{cpu}"),),
}


class OtlpError(ValueError):
    """A request, metric or point that cannot be accepted; `where` names it, `reason` is the
    refusal's code."""

    def __init__(self, where: str, message: str, reason: str = "malformed") -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message
        self.reason = reason


def parse_request(body: bytes, content_type: str) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    if content_type.startswith("application/json"):
        try:
            json_format.Parse(body.decode("utf-8"), request, ignore_unknown_fields=True)
        except (json_format.ParseError, UnicodeDecodeError) as exc:
            raise OtlpError("$", f"not an OTLP JSON metrics request: {exc}") from None
    elif content_type.startswith("application/x-protobuf"):
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise OtlpError("$", f"not an OTLP protobuf metrics request: {exc}") from None
    else:
        raise OtlpError(
            "content-type", "send application/x-protobuf or application/json (OTLP/HTTP)"
        )
    return request


def _value(any_value: Any) -> str:
    """An attribute's value as a label: booleans as OpenTelemetry spells them (`true`)."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return ""
    value = getattr(any_value, kind)
    return ("true" if value else "false") if kind == "bool_value" else str(value)


def _attrs(kvs: Any) -> dict[str, str]:
    return {kv.key: _value(kv.value) for kv in kvs}


@dataclass
class Converted:
    """The batch of what maps; `refused`: metrics not accepted (kind "metric", its JSON kept
    as `raw`), whole or some of their points; `rejected_points`: how many points that is."""

    batch: wire.Batch
    ignored_points: int
    refused: list[wire.Refusal] = field(default_factory=list)
    rejected_points: int = 0
    ignored_metrics: list[str] = field(default_factory=list)  # names nothing maps (first 10)

    def warning(self) -> str:
        """What the answer's partial_success says about ignored metrics (OTLP lets a
        server warn with a message and zero rejected points)."""
        if not self.ignored_points:
            return ""
        return (
            f"ignored {self.ignored_points} point{'s' * (self.ignored_points != 1)} of "
            "metrics afmon does not map "
            f"({', '.join(self.ignored_metrics)}); docs/scale.md lists what it maps"
        )


Point = tuple[str, dict[str, str], float, float, float | None, str, bool]
"""(afmon metric, labels, time, value, created, combine, delta) of one accepted data point."""
SeriesId = tuple[str, tuple[tuple[str, str], ...], bool]
"""(afmon metric, sorted labels, delta) of one series of the batch."""


def to_batch(
    request: ExportMetricsServiceRequest, *, facility: str, agent_id: str, seq: int, now: float
) -> Converted:
    """Map the request onto afmon series. A metric that cannot be mapped as sent (wrong unit
    or shape, a histogram under an afmon name) is refused on its own, as are the points of a
    metric that lack a user or node or carry no finite value; the rest is mapped. Two points
    of one series at one time: the last wins (summed rows add, as do deltas)."""
    # (metric, labels, delta) -> time -> (value, created)
    series: dict[SeriesId, dict[float, tuple[float, float | None]]] = defaultdict(dict)
    ignored = rejected = ordinal = 0
    refused: list[wire.Refusal] = []
    ignored_names: list[str] = []
    first_node = ""
    for r, rm in enumerate(request.resource_metrics):
        res = _attrs(rm.resource.attributes)
        for s, sm in enumerate(rm.scope_metrics):
            for m, metric in enumerate(sm.metrics):
                ordinal += 1
                where = f"resource_metrics[{r}].scope_metrics[{s}].metrics[{m}] ({metric.name})"
                candidates = _candidates(metric.name)
                if not candidates:
                    ignored += _point_count(metric)
                    if len(ignored_names) < 10 and metric.name not in ignored_names:
                        ignored_names.append(metric.name)
                    continue
                try:
                    points, bad = _read_metric(metric, candidates, res, where)
                except OtlpError as exc:
                    refused.append(_refusal(ordinal - 1, exc, metric))
                    rejected += _point_count(metric)
                    continue
                if bad:
                    refused.append(_refusal(ordinal - 1, bad[0], metric, len(bad)))
                    rejected += len(bad)
                for name, labels, t, v, created, combine, delta in points:
                    if not first_node and wire.fits_label(labels["node"]):
                        first_node = labels["node"]  # the batch's node (a bad one: its series')
                    slot = series[(name, tuple(sorted(labels.items())), delta)]
                    if t in slot and (combine == "sum" or delta):
                        old_v, old_c = slot[t]
                        v += old_v
                        starts = [c for c in (created, old_c) if c]
                        created = min(starts) if starts else None
                    slot[t] = (v, created or None)
    out = []
    for (metric, labels, delta), slot in series.items():
        unit, kind = wire.KNOWN_METRICS[metric]
        times = sorted(slot)
        starts = [slot[t][1] for t in times if slot[t][1]]
        # a cumulative series restarted at its newest start; deltas began at their first
        created = (min(starts) if delta else max(starts)) if starts else None
        out.append(
            wire.Series(
                metric=metric,
                unit=unit,
                kind=kind,  # type: ignore[arg-type]
                labels=dict(labels),
                times=times,
                values=[slot[t][0] for t in times],
                created=created,
                temporality="delta" if delta else "cumulative",
            )
        )
    batch = wire.Batch(
        version=wire.WIRE_VERSION,
        agent_id=agent_id,
        facility=facility,
        node=first_node or "otlp",
        seq=seq,
        sent_at=now,
        series=out,
    )
    return Converted(batch, ignored, refused, rejected, ignored_names)


def _refusal(index: int, exc: OtlpError, metric: Any, points: int | None = None) -> wire.Refusal:
    what = f"{points} point{'s' * (points != 1)}: " if points is not None else ""
    raw = json_format.MessageToJson(metric, indent=None)[: wire.MAX_RAW_KEPT]
    return wire.Refusal("metric", index, exc.where, exc.reason, what + exc.message, raw)


def _read_metric(
    metric: Any, candidates: tuple[OtlpMap, ...], res: dict[str, str], where: str
) -> tuple[list[Point], list[OtlpError]]:
    """The points of a mapped metric, and the problems of the points refused on their own;
    OtlpError when the metric as a whole cannot be mapped."""
    points, is_counter_shape, delta = _points(metric, where)
    out: list[Point] = []
    bad: list[OtlpError] = []
    for fmap in candidates:
        unit, kind = wire.KNOWN_METRICS[fmap.metric]
        if metric.unit != fmap.unit:
            raise OtlpError(
                where, f"unit must be {fmap.unit!r} (for {unit}), not {metric.unit!r}", "wrong_unit"
            )
        if (kind == "counter") != is_counter_shape:
            shape = (
                "a monotonic cumulative Sum (a Counter)"
                if kind == "counter"
                else "a Gauge or a non-monotonic Sum"
            )
            raise OtlpError(where, f"{fmap.metric} is a {kind}: send {shape}", "wrong_kind")
        for i, dp in enumerate(points):
            if dp.flags & NO_RECORDED_VALUE:
                continue
            attrs = _attrs(dp.attributes)
            if any(attrs.get(k) not in allowed for k, allowed in fmap.where):
                continue
            at = f"{where}.data_points[{i}]"
            labels = _labels(fmap, metric.name, attrs, res)
            v = float(getattr(dp, dp.WhichOneof("value") or "as_double"))
            if fmap.metric.startswith("user_") and "user" not in labels:
                bad.append(OtlpError(at, "no user: set the point attribute `user` or the "
                                     "resource attribute `process.owner`", "no_user"))  # fmt: skip
            elif "node" not in labels:
                bad.append(OtlpError(at, "no node: set the resource attribute `host.name`",
                                     "no_node"))  # fmt: skip
            elif not math.isfinite(v):
                bad.append(OtlpError(at, f"value {v} is not a finite number", "non_finite"))
            else:
                t = dp.time_unix_nano / 1e9
                created = dp.start_time_unix_nano / 1e9 if kind == "counter" else None
                out.append((fmap.metric, labels, t, v, created, fmap.combine, delta))
    return out, bad


def _candidates(name: str) -> tuple[OtlpMap, ...]:
    if name in wire.KNOWN_METRICS:
        return (OtlpMap(name, UCUM[wire.KNOWN_METRICS[name][0]]),)
    return OTLP_MAP.get(name, ())


def _point_count(metric: Any) -> int:
    kind = metric.WhichOneof("data")
    return len(getattr(metric, kind).data_points) if kind else 0


def _points(metric: Any, where: str) -> tuple[Any, bool, bool]:
    """The number points of a mapped metric, whether it is shaped like a counter, and
    whether its points are deltas."""
    kind = metric.WhichOneof("data")
    if kind == "gauge":
        return metric.gauge.data_points, False, False
    if kind == "sum":
        temporality = metric.sum.aggregation_temporality
        if temporality == DELTA and not metric.sum.is_monotonic:
            raise OtlpError(
                where,
                "a non-monotonic delta Sum (an UpDownCounter) cannot map onto a gauge: "
                "configure the exporter for cumulative "
                "(OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=cumulative)",
                "unsupported",
            )
        if temporality not in (CUMULATIVE, DELTA):
            raise OtlpError(where, "a Sum without aggregation temporality", "unsupported")
        return metric.sum.data_points, metric.sum.is_monotonic, temporality == DELTA
    raise OtlpError(
        where, f"a {kind} cannot map onto an afmon series; send a Sum or a Gauge", "unsupported"
    )


def _labels(fmap: OtlpMap, name: str, attrs: dict[str, str], res: dict[str, str]) -> dict[str, str]:
    if name == fmap.metric:  # an afmon name: its attributes are its labels
        labels = {k: v for k, v in attrs.items() if k not in ("user", "node")}
    else:
        labels = {"pid": res["process.pid"]} if "process.pid" in res else {}
    user = attrs.get("user") or res.get("process.owner") or res.get("user.name")
    node = attrs.get("node") or res.get("host.name")
    if user:
        labels["user"] = user
    if node:
        labels["node"] = node
    return labels
