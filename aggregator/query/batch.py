"""Batch usage by the scheduler's accounting dimensions: Slurm account (HTCondor accounting
group), QoS and partition, read from `batch_usage`, the ledger's batch resources broken down
by them (docs/batch.md). `Query.batch_by` asks here; sites report batch usage this way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from afmon.aggregator.query.base import GROUP_COLUMNS, Principal, QueryError, scope_sql

DIMENSIONS = ("account", "qos", "partition")
# what `by` may name: a dimension's column, or the ledger's keys (`GROUP_COLUMNS`)
BY_COLUMNS = {**{d: d for d in DIMENSIONS}, **GROUP_COLUMNS}


def checked_by(by: str | Sequence[str]) -> tuple[str, ...]:
    """`by` as a tuple without repeats; QueryError unless every name is known and one of
    them is a dimension (the ledger's own keys alone are `Query.batch_usage`'s)."""
    names = tuple(dict.fromkeys([by] if isinstance(by, str) else by))
    unknown = [b for b in names if b not in BY_COLUMNS]
    if unknown or not set(names) & set(DIMENSIONS):
        raise QueryError(
            f"cannot break batch usage down by {','.join(names)!r}: name one or more of "
            f"{', '.join(DIMENSIONS)}, optionally with {', '.join(GROUP_COLUMNS)}"
        )
    return names


def batch_by_sql(
    p: Principal, start: float, end: float, by: tuple[str, ...]
) -> tuple[str, dict[str, Any]]:
    """SQL of SUM(amount) per (`by`..., resource) over the hours starting in [start, end),
    as the ledger's reads count them, within what `p` may see; keys come out as k0, k1, ..."""
    cond, params = scope_sql(p)
    keys = [f"k{i}" for i in range(len(by))]
    cols = "".join(f"{BY_COLUMNS[b]} AS {k}, " for b, k in zip(by, keys, strict=True))
    listed = ", ".join([*keys, "resource"])
    sql = (
        f"SELECT {cols}resource, SUM(amount) AS amount FROM batch_usage "
        f"WHERE hour >= :b_s AND hour < :b_e AND {cond} GROUP BY {listed} ORDER BY {listed}"
    )
    return sql, {"b_s": int(start), "b_e": int(end), **params}


def widen(sums: pd.DataFrame, by: tuple[str, ...], resources: Sequence[str]) -> pd.DataFrame:
    """Rows of `batch_by_sql` -> one row per key: `by`..., one column per resource (0 where
    none) and cpu_efficiency = CPU / (wall x cores), NaN without wall time."""
    sums = sums.rename(columns={f"k{i}": b for i, b in enumerate(by)})
    if sums.empty:
        wide = pd.DataFrame(columns=[*by, *resources], dtype=float)
        wide[list(by)] = wide[list(by)].astype(object)
    else:
        wide = sums.pivot_table(
            index=list(by), columns="resource", values="amount", aggfunc="sum", sort=True
        )
        wide = wide.reindex(columns=list(resources)).fillna(0.0)
        wide = wide.rename_axis(columns=None).reset_index()
    wall_core = wide["batch_wall_core_seconds"]
    wide["cpu_efficiency"] = wide["batch_cpu_seconds"] / wall_core.where(wall_core > 0)
    return wide
