"""When the database cannot store data, ingest answers 503 with Retry-After (never 500),
counts the failure by reason, /readyz says not ready while /healthz stays alive, and the
batch retried after the fault is applied once. Real `afmon serve` on PostgreSQL (made
read-only) and SQLite (write-locked by another process)."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from afmon.collectors import wire
from tests.conftest import PG_ADMIN_URL


def _batch(seq: int, now: float) -> bytes:
    series = wire.Series(metric="user_cpu_seconds", unit="seconds", kind="counter",
                         labels={"user": "alice", "node": "wn1"}, times=[now - 20 + seq],
                         values=[10.0 * seq], created=now - 60)  # fmt: skip
    return wire.encode(wire.Batch(version=1, agent_id="a", facility="test-af", node="wn1",
                                  seq=seq, sent_at=now, series=[series]))  # fmt: skip


def _until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout} s: {what}")


def _failures(url: str) -> dict[str, float]:
    body = httpx.get(f"{url}/metrics", timeout=30).text
    found = re.finditer(
        r'afmon_ingest_write_failures_total\{facility="test-af",reason="(\w+)"\} (\S+)', body
    )
    counts = {m.group(1): float(m.group(2)) for m in found}
    assert set(counts) >= {"locked", "disk_full", "read_only", "unavailable", "other"}  # all at 0
    return {reason: n for reason, n in counts.items() if n}  # those that happened


def _set_read_only(db: str, on: bool) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{db}" SET default_transaction_read_only = {on}'))
        conn.execute(  # the server's pooled connections go: new ones get the setting
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
            {"d": db},
        )
    admin.dispose()


def test_a_read_only_postgresql_is_503_counted_and_retried(server_factory, pg_url: str) -> None:
    server = server_factory(database_url=pg_url, dashboard="false")
    auth = {"Authorization": f"Bearer {server.token}"}
    now = time.time()
    with httpx.Client(base_url=server.url, headers=auth, timeout=60) as client:
        assert client.post("/api/v1/ingest", content=_batch(1, now)).json()["status"] == "applied"
        assert client.get("/readyz").json() == {
            "status": "ready",
            "checks": {"database": "writable"},
        }
        _set_read_only(pg_url.rsplit("/", 1)[1], True)
        _until(lambda: "read-only" in client.get("/readyz").text, "/readyz says read-only")
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "not ready"
        assert client.get("/healthz").status_code == 200  # alive: reads still work
        r = client.post("/api/v1/ingest", content=_batch(2, now))
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "5"
        assert "the database cannot store data now (read_only)" in r.json()["detail"]["message"]
        assert _failures(server.url).get("read_only") == 1.0
        _set_read_only(pg_url.rsplit("/", 1)[1], False)
        _until(lambda: client.get("/readyz").status_code == 200, "/readyz ready again")
        r = client.post("/api/v1/ingest", content=_batch(2, now))  # the agent's retry
        assert r.status_code == 200 and r.json()["status"] == "applied"
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        total = conn.execute(
            text("SELECT SUM(amount) FROM usage WHERE resource = 'cpu_seconds'")
        ).scalar_one()
    engine.dispose()
    assert total == 20.0  # both batches, once each


def test_a_write_locked_sqlite_is_503_and_not_ready(server_factory, tmp_path: Path) -> None:
    server = server_factory(dashboard="false")
    auth = {"Authorization": f"Bearer {server.token}"}
    now = time.time()
    with httpx.Client(base_url=server.url, headers=auth, timeout=120) as client:
        assert client.post("/api/v1/ingest", content=_batch(1, now)).json()["status"] == "applied"
        holder = sqlite3.connect(tmp_path / "server.sqlite", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock for long
        try:
            r = client.post("/api/v1/ingest", content=_batch(2, now))  # waits its 30 s, fails
            assert r.status_code == 503, r.text
            assert "(locked)" in r.json()["detail"]["message"]
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["database"].startswith(
                "locked"
            )
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert client.post("/api/v1/ingest", content=_batch(2, now)).json()["status"] == "applied"
        assert _failures(server.url) == {"locked": 1.0}
