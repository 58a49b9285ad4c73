"""Periodic jobs that must run in one worker only (alerts, reports, retention).

With several workers on one PostgreSQL (`afmon serve --workers N`, or N servers), a
`leader_only` job runs in the worker that holds a PostgreSQL session advisory lock named
after the job; the others retry every `retry` seconds and take over within that time when
the leader's process (and so its session) ends. On SQLite there is one process: the job
just runs.
"""

from __future__ import annotations

import functools
import logging
import threading
import zlib
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
LOCK_NAMESPACE = 0x6166  # "af": the first key of pg_try_advisory_lock(int, int)

Job = Callable[[Any, threading.Event], None]


def leader_only(job: Job, retry: float = 15.0) -> Job:
    key = zlib.crc32(job.__name__.encode()) & 0x7FFFFFFF

    @functools.wraps(job)
    def run(services: Any, stop: threading.Event) -> None:
        engine = services.engine
        if engine.dialect.name == "sqlite":
            job(services, stop)
            return
        while not stop.is_set():
            conn = None
            try:
                conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                held = conn.exec_driver_sql(
                    "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_NAMESPACE, key)
                ).scalar_one()
                if held:
                    log.info("this worker runs %s", job.__name__)
                    job(services, stop)  # returns at shutdown; the session end unlocks
                    return
            except Exception:  # noqa: BLE001  (a database hiccup: try again later)
                log.exception("leader election for %s failed", job.__name__)
            finally:
                if conn is not None:
                    conn.close()
            stop.wait(retry)

    return run
