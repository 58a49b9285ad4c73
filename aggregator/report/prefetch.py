"""The report's reads, started at once and run `READERS` at a time.

A report of 10,000 members spends most of its time in a dozen independent queries (usage
totals per level and week, the month to date, latency waits, the APEL inputs). The database
driver releases the GIL while a query runs, so on two cores the queries overlap each other
and the Python work on the answers that have come already. Each answer is the one the
query layer gives on its own, so the document does not change with the order they arrive in.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import pandas as pd

from afmon.aggregator.query.reads import Principal, Query

READERS = 2
T = TypeVar("T")


class Prefetch:
    """Reads submitted ahead and collected later; a usage total is read once per window and
    grouping (the VO totals serve the VO rows and the unmapped shares alike)."""

    def __init__(self, query: Query, principal: Principal, pool: ThreadPoolExecutor) -> None:
        self._q = query
        self._p = principal
        self._pool = pool
        self._totals: dict[tuple[float, float, tuple[str, ...]], Future[pd.DataFrame]] = {}

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        return self._pool.submit(fn, *args)

    def totals(self, start: float, end: float, by: tuple[str, ...]) -> Future[pd.DataFrame]:
        """`Query.usage_totals` of the window and grouping, started on first asking."""
        key = (start, end, by)
        if key not in self._totals:
            self._totals[key] = self._pool.submit(
                lambda: self._q.usage_totals(self._p, start, end, by=by)
            )
        return self._totals[key]
