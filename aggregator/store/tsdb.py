"""Raw samples into a store that speaks the InfluxDB v2 write API (InfluxDB 2/3, VictoriaMetrics).

The ingest transaction stages the batch's fresh samples in the `tsdb_outbox` table
(`Outbox.stage`), so the ingest acknowledgement never waits for the store and a sample the
ledger committed is never lost. A row holds zlib'd JSON, per series its line-protocol head
and its [[value, ms], ...] pairs: a few kB, where the line protocol itself (4-5 times the
JSON) would be written to the database and read back. The drainer lays the pairs out as
lines without parsing the numbers again (`_lines`). A periodic job (`outbox_loop`, in the
app's `jobs`) drains the outbox oldest first, a few hundred rows per write, deleting rows
only after the store accepted them; while the store is slow or down the outbox grows and the
job backs off (at least once: a crash between write and delete re-sends rows, which InfluxDB
overwrites and VictoriaMetrics deduplicates with `-dedup.minScrapeInterval`).

Points: measurement `afmon`, field = the afmon metric, tags = facility, node and the series'
labels, millisecond timestamps (VictoriaMetrics names the series `afmon_<metric>`). The write
body is gzip'd at GZIP_LEVEL.
"""

from __future__ import annotations

import gzip
import logging
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import msgspec
from sqlalchemy import Connection, Engine

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.store.db import placeholder, read_connection
from afmon.collectors import wire

log = logging.getLogger(__name__)
MEASUREMENT = "afmon"
GZIP_LEVEL = 1  # the write body: level 9 cost 17 ms per 5,000 points, level 1 0.7 ms

Points = tuple[str, list[float], list[float]]
"""One series' points: its line-protocol head (`afmon,<tags> <metric>=`), times (epoch
seconds) and values."""

_encoder = msgspec.json.Encoder()
_staged = msgspec.json.Decoder(list[tuple[str, msgspec.Raw]])  # numbers stay text


def _tag(s: str) -> str:
    return s.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def series_head(batch: wire.Batch, s: wire.Series) -> str:
    """The line-protocol head of a series: measurement, sorted tags, the field's name.
    The facility is the batch's (the credential's), whatever the series carries."""
    tags = {"node": batch.node, **s.labels, "facility": batch.facility}
    tag_text = ",".join(f"{_tag(k)}={_tag(v)}" for k, v in sorted(tags.items()) if v)
    return f"{MEASUREMENT},{tag_text} {s.metric}="


def _pairs(times: list[float], values: list[float]) -> list[tuple[float, int]]:
    """(value, millisecond timestamp) of each sample."""
    return list(zip(values, map(round, map((1000.0).__mul__, times)), strict=True))


def _lines(head: str, pairs: bytes) -> bytes:
    """Lines `<head><value> <ms>` from a series' JSON pairs `[[v,t],[v,t]]`, at C speed:
    msgspec wrote the numbers (floats as their shortest round-trip text, like repr) and no
    number holds a comma, so two replaces lay them out."""
    h = head.encode()
    return h + pairs[2:-2].replace(b",", b" ").replace(b"] [", b"\n" + h)


def line_protocol(points: Iterable[Points]) -> bytes:
    """Line protocol (ms precision) of the points: what the drainer writes for them."""
    return b"\n".join(
        _lines(head, _encoder.encode(_pairs(times, values)))
        for head, times, values in points
        if times
    )


class Outbox:
    """The durable queue between the ingest transaction and the store."""

    def __init__(self, engine: Engine) -> None:
        p = placeholder(engine)
        self._insert = (
            f"INSERT INTO tsdb_outbox (created, lines, points, samples) VALUES ({p}, '', {p}, {p})"
        )

    def stage(self, conn: Connection, points: Sequence[Points], count: int, now: float) -> None:
        """Called inside the ingest transaction: commits or rolls back with the batch."""
        staged = [(head, _pairs(times, values)) for head, times, values in points if times]
        conn.exec_driver_sql(self._insert, (now, zlib.compress(_encoder.encode(staged), 1), count))


def _body(rows: Iterable[tuple[str, bytes | None]]) -> bytes:
    """The line protocol of outbox rows: `points`, or `lines` (rows staged before 0004)."""
    return b"\n".join(
        b"\n".join(_lines(head, bytes(pairs)) for head, pairs in _staged.decode(zlib.decompress(p)))
        if p
        else lines.encode()
        for lines, p in rows
        if lines or p
    )


class Writer(Protocol):
    def write(self, lines: bytes) -> None: ...


class InfluxWriter:
    """influxdb-client's write service, synchronous; retries are the outbox loop's business.
    The body is gzip'd here at GZIP_LEVEL: the client's own gzip is level 9, which cost far
    more than the rest of the drain."""

    def __init__(self, settings: ServerSettings) -> None:
        from influxdb_client import InfluxDBClient, WritePrecision, WriteService

        token = settings.tsdb_token.get_secret_value() if settings.tsdb_token else ""
        self._client = InfluxDBClient(
            url=str(settings.tsdb_url),
            token=token,
            org=settings.tsdb_org,
            timeout=int(settings.tsdb_timeout_seconds * 1000),
            enable_gzip=False,  # the body comes compressed
            retries=False,
        )
        self._service = WriteService(self._client.api_client)
        self._bucket = settings.tsdb_bucket
        self._org = settings.tsdb_org
        self._precision = WritePrecision.MS

    def write(self, lines: bytes) -> None:
        self._service.post_write(
            org=self._org,
            bucket=self._bucket,
            body=gzip.compress(lines, compresslevel=GZIP_LEVEL),
            precision=self._precision,
            content_encoding="gzip",
            content_type="text/plain; charset=utf-8",
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
        select = f"SELECT id, lines, points FROM tsdb_outbox ORDER BY id LIMIT {int(self._rows)}"
        if self._pg:
            with self._engine.begin() as conn:
                rows = conn.exec_driver_sql(select + " FOR UPDATE SKIP LOCKED").all()
                if rows:
                    self._writer.write(_body((r[1], r[2]) for r in rows))
                    self._delete(conn, [r[0] for r in rows])
            return len(rows)
        with read_connection(self._engine) as conn:
            rows = conn.exec_driver_sql(select).all()
        if rows:
            self._writer.write(_body((r[1], r[2]) for r in rows))
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
    engine: Engine,
    settings: ServerSettings,
    stop: threading.Event,
    writer_factory: Callable[[ServerSettings], Any] = InfluxWriter,
) -> None:
    """The periodic job: drain while there is work, back off (up to 30 s) while the store
    fails, and wait `tsdb_flush_seconds` when the outbox is empty."""
    if not settings.tsdb_url:
        return
    writer = writer_factory(settings)
    drainer = Drainer(engine, writer, settings.tsdb_rows_per_write)
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
