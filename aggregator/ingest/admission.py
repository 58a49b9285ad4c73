"""Admission: the refusals only the server can make, inside the ingest transaction and before
anything of the batch is written: a series repeated in its batch, an accounted series whose
labels name no ledger resource, a new node or GPU past its facility's limit
(`limits.Cardinality`). The rules a record breaks on its own are `wire.refusals`'.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from sqlalchemy import Connection

from afmon.aggregator.ingest.limits import Cardinality
from afmon.aggregator.ledger.base import ACCOUNTED_METRICS
from afmon.aggregator.store.schema import RESOURCES
from afmon.collectors import wire

SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]]
"""(facility, metric, sorted label items): a series, without serialising its labels."""


def series_key(facility: str, s: wire.Series) -> SeriesKey:
    return (facility, s.metric, tuple(sorted(s.labels.items())))


def labels_json(s: wire.Series) -> str:
    """The labels as the `series` table stores them (its key, with facility and metric)."""
    return json.dumps(s.labels, sort_keys=True, separators=(",", ":"))


def admit(
    conn: Connection,
    batch: wire.Batch,
    keys: Sequence[SeriesKey],
    refused: Sequence[wire.Refusal],
    known: Mapping[SeriesKey, int],
    cardinality: Cardinality,
) -> tuple[list[wire.Refusal], bool]:
    """The further refusals of `batch` (whose series' `keys` are given, `refused` already
    judged, `known` the series the server has), and whether the batch's own node is admitted
    (its agent is recorded only then)."""
    skip = {r.index for r in refused if r.kind == "series"}
    first: dict[SeriesKey, int] = {}
    out: list[wire.Refusal] = []
    unknown: list[tuple[int, wire.Series]] = []
    for i, (s, key) in enumerate(zip(batch.series, keys, strict=True)):
        if i in skip:
            continue
        if key in first:
            out.append(wire.Refusal(
                "series", i, f"$.series[{i}]", "repeated_series",
                f"repeats the series of $.series[{first[key]}] ({s.metric} "
                f"{labels_json(s)}); send each series once per batch",
            ))  # fmt: skip
            continue
        first[key] = i
        problem = resource_problem(s, i)
        if problem is not None:
            out.append(problem)
            continue
        if key not in known:
            unknown.append((i, s))
    over, own_node = cardinality.admit(conn, batch, unknown)
    return out + over, own_node


def resource_problem(s: wire.Series, i: int) -> wire.Refusal | None:
    """A refusal when an accounted series' labels name no ledger resource."""
    rule = ACCOUNTED_METRICS.get(s.metric)
    if rule is None or "user" not in s.labels:
        return None
    try:
        resource = rule.resource_for(s.labels)
    except KeyError as exc:
        return wire.Refusal("series", i, f"$.series[{i}].labels", "missing_label",
                            f"{s.metric} needs the label {exc.args[0]!r}")  # fmt: skip
    if resource not in RESOURCES:
        return wire.Refusal(
            "series", i, f"$.series[{i}].labels", "unknown_resource",
            f"labels {s.labels} of {s.metric} name no ledger resource ({resource!r})",
        )  # fmt: skip
    return None
