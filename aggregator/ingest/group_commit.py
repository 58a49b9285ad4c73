"""Group commit: the batches of concurrent requests applied in one transaction, one commit.

With `PRAGMA synchronous=FULL` every commit waits for an fsync of SQLite's WAL, and on
PostgreSQL for a WAL flush: per batch, that wait is the largest single cost of the ingest
(docs/benchmarks.md). Databases and WALs answer it the same way: the requests that arrive
while one commit is on disk are committed together by the next one.

No thread of its own: the first caller becomes the *leader*, takes every batch waiting (up
to `max_group`), applies each inside a savepoint of one transaction and commits; the others
wait. A batch whose work raises (refused as a whole, still refused on replay) is rolled back
to its savepoint and its caller gets the exception; the rest of the group commits. A
database error breaks the transaction: every caller of the group gets it (the route answers
503 and the agents retry; nothing of the group was written). After its commit the leader
hands the lead to the oldest waiting caller, so no request serves others for long.

Every caller returns only once its batch is committed (or rolled back): an acknowledgement
still means "on disk". With `max_group` 1 it is off: each caller runs its own transaction,
concurrently with the others' (PostgreSQL's default, see ServerSettings).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

R = TypeVar("R")
Work = Callable[[Connection], R]


@dataclass(eq=False)
class _Waiter(Generic[R]):
    work: Work[R]
    wake: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    finished: bool = False
    result: R | None = None
    error: BaseException | None = None


class GroupCommit:
    """Runs `work(conn)` callables of concurrent callers in shared transactions."""

    def __init__(self, engine: Engine, max_group: int) -> None:
        self._engine = engine
        self._max = max(1, max_group)
        self._lock = threading.Lock()
        self._queue: list[_Waiter[Any]] = []
        self._leading = False
        self.commits = 0  # transactions committed (for tests and benchmarks)
        self.applied = 0  # works that ran in them

    def run(self, work: Work[R]) -> R:
        """`work(conn)` inside a transaction that is committed before this returns; its
        exception (with its writes rolled back) if it raises."""
        if self._max == 1:  # off: a transaction of its own, concurrent with others'
            with self._engine.begin() as conn:
                return work(conn)
        w: _Waiter[R] = _Waiter(work)
        with self._lock:
            self._queue.append(w)
            if not self._leading:
                self._leading = w.lead = True
        while not w.finished:
            if w.lead:
                self._lead()
            else:
                w.wake.wait()
                w.wake.clear()
        if w.error is not None:
            raise w.error
        return w.result  # type: ignore[return-value]

    def _lead(self) -> None:
        with self._lock:
            group = self._queue[: self._max]
            del self._queue[: self._max]
        try:
            self._commit(group)
        finally:
            with self._lock:
                for w in group:
                    w.finished = True
                    w.wake.set()
                if self._queue:  # the oldest waiting caller leads the next group
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.wake.set()
                else:
                    self._leading = False

    def _commit(self, group: list[_Waiter[Any]]) -> None:
        try:
            with self._engine.begin() as conn:
                if len(group) == 1:  # alone: its exception rolls the transaction back
                    group[0].result = group[0].work(conn)
                else:
                    for i, w in enumerate(group):
                        self._in_savepoint(conn, f"afmon_batch_{i}", w)
            self.commits += 1
            self.applied += sum(w.error is None for w in group)
        except BaseException as exc:  # noqa: BLE001  (handed to every caller of the group)
            for w in group:
                if w.error is None:
                    w.error, w.result = exc, None

    @staticmethod
    def _in_savepoint(conn: Connection, name: str, w: _Waiter[Any]) -> None:
        conn.exec_driver_sql(f"SAVEPOINT {name}")
        try:
            w.result = w.work(conn)
        except DBAPIError:
            raise  # the transaction is broken: the whole group fails
        except Exception as exc:  # noqa: BLE001  (this batch only)
            w.error = exc
            conn.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {name}")
        conn.exec_driver_sql(f"RELEASE SAVEPOINT {name}")
