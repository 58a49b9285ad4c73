"""Input data formats (docs/data.md, "Input data formats"): bytes read and files opened via
XRootD per member (group, VO, facility) and format. The agent's XRootD probe classifies each
opened file's path at the node (collectors/probes/data_formats.py) and labels the member's
`user_data_read_bytes` and `user_files_opened` series with `format`; the ledger sums those
series over formats as before, and this reads the per-format rise of each series' counter in
the window from the raw samples (kept for AFMON_RETENTION_DAYS), each rise resolved to the
member who held the account at its time, as the ingest resolves it."""

from __future__ import annotations

import json
from collections import defaultdict

import pandas as pd
from sqlalchemy import Engine, text

from afmon.aggregator.identity.accounts import IdentityMap
from afmon.aggregator.ledger.base import counter_increases
from afmon.aggregator.query.base import (
    GROUP_COLUMNS,
    Principal,
    QueryBase,
    QueryError,
    visible,
)
from afmon.aggregator.query.failures import engine_of
from afmon.aggregator.store.db import read_connection

METRICS = {"user_data_read_bytes": "read_bytes", "user_files_opened": "files"}
COLUMNS = ["format", "read_bytes", "files"]
_KEY = {"facility": 0, "vo": 1, "group": 2, "member": 3}


def read_by_format(
    source: Engine | QueryBase, p: Principal, start: float, end: float, by: str = "member"
) -> pd.DataFrame:
    """One row per (`by` key, format) with data read in [start, end): read_bytes (every
    source) and files (opened); sorted by key, then most bytes first."""
    if by not in GROUP_COLUMNS:
        raise QueryError(f"cannot group formats by {by!r}; use one of {', '.join(GROUP_COLUMNS)}")
    sel = (
        "SELECT s.id, s.facility, s.metric, s.labels, s.local_user, x.time, x.value FROM series s "
        "JOIN sample x ON x.series_id = s.id WHERE s.metric IN (:m0, :m1) "
        "AND s.labels LIKE '%\"format\"%' AND "
    )
    params = {"start": start, "end": end, "m0": "user_data_read_bytes", "m1": "user_files_opened"}
    with read_connection(engine_of(source)) as conn:
        rows = conn.execute(
            text(  # each series' samples in the window, after its last one before
                f"{sel}x.time >= :start AND x.time < :end UNION ALL {sel}x.time = (SELECT "
                "MAX(time) FROM sample WHERE series_id = s.id AND time < :start) ORDER BY 1, 6"
            ),
            params,
        ).all()
    identity = IdentityMap(engine_of(source))
    series: dict[int, list[tuple[float, float]]] = defaultdict(list)
    heads: dict[int, tuple[str, str, dict[str, str], str | None]] = {}
    for sid, facility, metric, labels, local, t, v in rows:
        series[sid].append((float(t), float(v)))
        heads[sid] = (facility, metric, json.loads(labels), local)
    sums: dict[tuple[str, str], dict[str, float]] = defaultdict(
        lambda: dict.fromkeys(METRICS.values(), 0.0)
    )
    for sid, points in series.items():
        facility, metric, labels, local = heads[sid]
        fmt = labels.get("format", "")
        if not fmt:  # the probe's classes (collectors/probes/data_formats.py), as sent
            continue
        user = local or labels.get("user", "")
        before = [v for t, v in points if t < start]
        inside = [(t, v) for t, v in points if t >= start]
        prev = before[-1] if before else 0.0  # the probe's counters start at zero
        times, values = [t for t, _ in inside], [v for _, v in inside]
        for t, rise in counter_increases(times, values, start - 1, prev, None):
            ref = identity.resolve(facility, user, t)
            if not visible(p, facility, ref.vo, ref.id):
                continue
            key = (facility, ref.vo, ref.grp, ref.id)[_KEY[by]]
            sums[(key, fmt)][METRICS[metric]] += rise
    out = pd.DataFrame(
        [{by: k, "format": f, **v} for (k, f), v in sums.items()], columns=[by, *COLUMNS]
    )
    return out.sort_values([by, "read_bytes", "format"], ascending=[True, False, True],
                           ignore_index=True)  # fmt: skip
