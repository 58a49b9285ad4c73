"""Several workers on one PostgreSQL: exactly once under concurrent duplicate deliveries."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from afmon.collectors import wire
from tests.conftest import free_port

AGENTS = 3
SEQS = 8
T0 = float(int(time.time()) // 3600 * 3600 - 7200)


def _batch(agent: int, seq: int) -> wire.Batch:
    node = f"wn{agent}"
    t = T0 + 60 * seq
    return wire.Batch(
        version=1,
        agent_id=f"agent-{agent}",
        facility="test-af",
        node=node,
        seq=seq,
        sent_at=t + 60,
        series=[
            wire.Series(
                metric="user_cpu_seconds",
                unit="seconds",
                kind="counter",
                labels={"user": user, "node": node},
                times=[t + 30, t + 60],
                values=[10.0 * seq + 5, 10.0 * seq + 10],
                created=T0,  # counts in full from the first sample
            )
            for user in ("alice", "bob")
        ],
        events=[
            wire.Event(
                kind="session",
                id=f"s-{agent}-{seq}",
                user="alice",
                start=t,
                end=t + 30,
            )
        ],
    )


EXPECTED = {
    ("cpu_seconds", "alice"): AGENTS * 10.0 * SEQS,
    ("cpu_seconds", "bob"): AGENTS * 10.0 * SEQS,
    ("session_seconds", "alice"): AGENTS * SEQS * 30.0,
    ("sessions", "alice"): float(AGENTS * SEQS),
}


def _post(url: str, token: str, body: bytes) -> str:
    """Post like an agent: retry on connection errors and 5xx (e.g. a deadlock victim)."""
    for _ in range(10):
        try:
            r = httpx.post(
                f"{url}/api/v1/ingest",
                content=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        if r.status_code < 500:
            assert r.status_code == 200, r.text
            return r.json()["status"]
        time.sleep(0.2)
    raise AssertionError("no answer after 10 tries")


def _deliver_twice_at_once(targets: list[tuple[str, str]]) -> list[list[str]]:
    """Each batch to two targets at the same instant (a barrier per pair)."""
    tasks = []
    for a in range(AGENTS):
        for s in range(SEQS):
            body = wire.encode(_batch(a, s))
            barrier = threading.Barrier(2, timeout=60)
            tasks.append([(barrier, url, token, body) for url, token in targets])

    def run(barrier: threading.Barrier, url: str, token: str, body: bytes) -> str:
        barrier.wait()
        return _post(url, token, body)

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [[pool.submit(run, *t) for t in pair] for pair in tasks]
        return [sorted(f.result() for f in pair) for pair in futures]


def _ledger(url: str) -> dict[tuple[str, str], float]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT u.resource, m.subject, SUM(u.amount) FROM usage u "
                    "JOIN member m ON m.id = u.member_id GROUP BY u.resource, m.subject"
                )
            ).all()
    finally:
        engine.dispose()
    return {(r, s): a for r, s, a in rows}


def _usage_total(metrics_text: str, resource: str) -> float:
    pattern = rf"^afmon_usage_{resource}_total\{{[^}}]*\}} (\S+)$"
    return sum(float(v) for v in re.findall(pattern, metrics_text, re.M))


def _members(ledger: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    # unmapped accounts are accounted under one member per facility: compare per resource
    out: dict[tuple[str, str], float] = {}
    for (resource, _subject), amount in ledger.items():
        if resource in {"cpu_seconds", "session_seconds", "sessions"}:
            out[(resource, "all")] = out.get((resource, "all"), 0.0) + amount
    return out


def _expected_totals() -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for (resource, _user), amount in EXPECTED.items():
        out[(resource, "all")] = out.get((resource, "all"), 0.0) + amount
    return out


def test_two_servers_one_database_exactly_once(server_factory, pg_url: str) -> None:
    a = server_factory(pg_url, dashboard="false", ingest_rate_per_agent="1000")
    b = server_factory(pg_url, dashboard="false", ingest_rate_per_agent="1000")
    statuses = _deliver_twice_at_once([(a.url, a.token), (b.url, b.token)])
    assert statuses == [["applied", "duplicate"]] * (AGENTS * SEQS)
    ledger = _ledger(pg_url)
    assert _members(ledger) == _expected_totals()
    # /metrics: the ledger families come from the database, the same on every worker
    deadline = time.monotonic() + 20
    while True:
        seen = [httpx.get(f"{s.url}/metrics", timeout=10).text for s in (a, b)]
        got = [_usage_total(t, "cpu_seconds") for t in seen]
        if got == [EXPECTED[("cpu_seconds", "alice")] * 2] * 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got == [EXPECTED[("cpu_seconds", "alice")] * 2] * 2
    assert [_usage_total(t, "sessions") for t in seen] == [float(AGENTS * SEQS)] * 2


def test_serve_workers_on_one_port(pg_url: str, tmp_path: Path) -> None:
    port = free_port()
    token = "w" * 8 + "0123456789abcdefghijklmnop"
    env = {
        **os.environ,
        "AFMON_FACILITY_TOKENS": json.dumps({"test-af": token}),
        "AFMON_DASHBOARD": "false",
        "AFMON_LOG_LEVEL": "warning",
        "AFMON_INGEST_RATE_PER_AGENT": "1000",
    }
    log = tmp_path / "workers.log"
    argv = [sys.executable, "-m", "afmon.aggregator.cli", "serve", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*argv, "--database-url", pg_url, "--workers", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        # the same batch twice at once through one port (two workers behind it)
        statuses = _deliver_twice_at_once([(url, token), (url, token)])
        assert statuses == [["applied", "duplicate"]] * (AGENTS * SEQS)
        assert _members(_ledger(pg_url)) == _expected_totals()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # several workers on SQLite are refused with the reason
    r = subprocess.run(
        [*argv, "--database-url", f"sqlite:///{tmp_path}/x.sqlite", "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "--workers needs PostgreSQL" in r.stderr
