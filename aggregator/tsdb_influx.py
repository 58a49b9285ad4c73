"""Raw samples into a store that speaks the InfluxDB v2 write API (InfluxDB 2/3, VictoriaMetrics).

The ingest transaction writes the batch's fresh samples as line protocol into the
`tsdb_outbox` table (`Outbox.stage`), so the ingest acknowledgement never waits for the
store and a sample the ledger committed is never lost. A periodic job (`outbox_loop`, in
the app's `jobs`) drains the outbox oldest first, a few hundred rows per write, deleting
rows only after the store accepted them; while the store is slow or down the outbox grows
and the job backs off (at least once: a crash between write and delete re-sends rows, which
InfluxDB overwrites and VictoriaMetrics deduplicates with `-dedup.minScrapeInterval`).
Points: measurement `afmon`, field = the afmon metric, tags = facility, node and the series'
labels, millisecond timestamps (VictoriaMetrics names the series `afmon_<metric>`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection, Engine

from aggregator.db import placeholder, read_connection
from aggregator.settings import ServerSettings
from collectors import wire

if TYPE_CHECKING:
    from aggregator.app import Services

log = logging.getLogger(__name__)
MEASUREMENT = "afmon"


def _tag(s: str) -> str:
    return s.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def batch_lines(
    batch: wire.Batch, ids: Sequence[int], samples: Sequence[tuple[int, float, float]]
) -> str:
    """Line protocol (ms precision) of the samples (series id, time, value) of a batch."""
    heads: dict[int, str] = {}
    for s, sid in zip(batch.series, ids, strict=True):
        tags = {"facility": batch.facility, "node": batch.node, **s.labels}
        tag_text = ",".join(f"{_tag(k)}={_tag(v)}" for k, v in sorted(tags.items()) if v)
        heads[sid] = f"{MEASUREMENT},{tag_text} {s.metric}="
    return "\n".join(f"{heads[sid]}{v!r} {round(t * 1000)}" for sid, t, v in samples)


class Outbox:
    """The durable queue between the ingest transaction and the store."""

    def __init__(self, engine: Engine) -> None:
        p = placeholder(engine)
        self._insert = f"INSERT INTO tsdb_outbox (created, lines, samples) VALUES ({p}, {p}, {p})"

    def stage(
        self,
        conn: Connection,
        batch: wire.Batch,
        ids: Sequence[int],
        samples: Sequence[tuple[int, float, float]],
        now: float,
    ) -> None:
        """Called inside the ingest transaction: commits or rolls back with the batch."""
        conn.exec_driver_sql(self._insert, (now, batch_lines(batch, ids, samples), len(samples)))


class Writer(Protocol):
    def write(self, lines: str) -> None: ...


class InfluxWriter:
    """influxdb-client's synchronous write API; retries are the outbox loop's business."""

    def __init__(self, settings: ServerSettings) -> None:
        from influxdb_client import InfluxDBClient, WritePrecision
        from influxdb_client.client.write_api import SYNCHRONOUS

        token = settings.tsdb_token.get_secret_value() if settings.tsdb_token else ""
        self._client = InfluxDBClient(
            url=str(settings.tsdb_url),
            token=token,
            org=settings.tsdb_org,
            timeout=int(settings.tsdb_timeout_seconds * 1000),
            enable_gzip=True,
            retries=False,
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)
        self._bucket = settings.tsdb_bucket
        self._org = settings.tsdb_org
        self._precision = WritePrecision.MS

    def write(self, lines: str) -> None:
        self._api.write(
            bucket=self._bucket, org=self._org, record=lines, write_precision=self._precision
        )

    def close(self) -> None:
        self._client.close()


class Drainer:
    """Moves outbox rows into the store: on PostgreSQL rows are claimed with
    `FOR UPDATE SKIP LOCKED` (several workers drain side by side, each row once); on SQLite
    (one process) they are read, written, then deleted."""

    def __init__(self, engine: Engine, writer: Writer, rows_per_write: int = 200) -> None:
        self._engine = engine
        self._writer = writer
        self._rows = rows_per_write
        self._p = placeholder(engine)
        self._pg = engine.dialect.name != "sqlite"

    def drain_once(self) -> int:
        """Write one chunk; return the number of rows written (0: the outbox is empty)."""
        select = f"SELECT id, lines FROM tsdb_outbox ORDER BY id LIMIT {int(self._rows)}"
        if self._pg:
            with self._engine.begin() as conn:
                rows = conn.exec_driver_sql(select + " FOR UPDATE SKIP LOCKED").all()
                if rows:
                    self._writer.write("\n".join(r[1] for r in rows if r[1]))
                    self._delete(conn, [r[0] for r in rows])
            return len(rows)
        with read_connection(self._engine) as conn:
            rows = conn.exec_driver_sql(select).all()
        if rows:
            self._writer.write("\n".join(r[1] for r in rows if r[1]))
            with self._engine.begin() as conn:
                self._delete(conn, [r[0] for r in rows])
        return len(rows)

    def _delete(self, conn: Connection, ids: list[int]) -> None:
        conn.exec_driver_sql(
            f"DELETE FROM tsdb_outbox WHERE id IN ({', '.join([self._p] * len(ids))})", tuple(ids)
        )

    def pending(self) -> int:
        with read_connection(self._engine) as conn:
            return int(conn.exec_driver_sql("SELECT COUNT(*) FROM tsdb_outbox").scalar_one())


def outbox_loop(
    services: Services,
    stop: threading.Event,
    writer_factory: Callable[[ServerSettings], Any] = InfluxWriter,
) -> None:
    """The periodic job: drain while there is work, back off (up to 30 s) while the store
    fails, and wait `tsdb_flush_seconds` when the outbox is empty."""
    settings = services.settings
    if not settings.tsdb_url:
        return
    writer = writer_factory(settings)
    drainer = Drainer(services.engine, writer, settings.tsdb_rows_per_write)
    backoff = settings.tsdb_flush_seconds
    delay = 0.0
    failing = False
    try:
        while not stop.wait(delay):
            try:
                written = drainer.drain_once()
            except Exception as exc:  # noqa: BLE001  (any store failure: keep rows, retry)
                if not failing:
                    log.warning("time-series store write failed, outbox kept: %s", exc)
                failing = True
                backoff = min(backoff * 2, 30.0)
                delay = backoff
                continue
            if failing:
                log.warning("time-series store writes again; draining the outbox")
            failing = False
            backoff = settings.tsdb_flush_seconds
            delay = 0.0 if written else settings.tsdb_flush_seconds
    finally:
        close = getattr(writer, "close", None)
        if close is not None:
            close()
