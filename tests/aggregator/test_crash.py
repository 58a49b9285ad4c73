"""A server killed (SIGKILL) while it applies a batch loses nothing and counts nothing twice.

The agent's answer never came, so it sends the same batch again to the restarted server:
the ledger and the stored samples must then hold that batch exactly once, whether the
kill hit before, during or after the transaction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import create_engine, text

from afmon.collectors import wire
from tests.conftest import ServerProcess

NOW = time.time()
USERS, SAMPLES = 40, 6000  # 240,000 samples: applying them takes a good fraction of a second


def big_batch() -> wire.Batch:
    times = [NOW - 2 * 86400 + 10 * i for i in range(SAMPLES)]
    series = [
        wire.Series(metric="user_cpu_seconds", unit="seconds", kind="counter",
                    labels={"user": f"u{u:02d}", "node": "n1"}, times=times,
                    values=[2.5 * i for i in range(SAMPLES)], created=times[0])
        for u in range(USERS)
    ]
    return wire.Batch(version=1, agent_id="crash-agent", facility="test-af", node="n1", seq=1,
                      sent_at=NOW, series=series)


def stored(database_url: str) -> tuple[int, float, int]:
    engine = create_engine(database_url)
    with engine.connect() as conn:
        samples = conn.execute(text("SELECT COUNT(*) FROM sample")).scalar_one()
        cpu = conn.execute(text(
            "SELECT COALESCE(SUM(amount), 0) FROM usage WHERE resource = 'cpu_seconds'"
        )).scalar_one()
        batches = conn.execute(text("SELECT COUNT(*) FROM applied_batch")).scalar_one()
    engine.dispose()
    return samples, cpu, batches


@pytest.mark.parametrize("kill_after", [0.1, 0.3, 0.6])
def test_kill_during_a_batch_then_resend(
    database_url: str, server_factory: Callable[..., ServerProcess], kill_after: float
) -> None:
    server = server_factory(database_url=database_url, dashboard="false")
    body = wire.encode(big_batch(), compress=True)
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": wire.CONTENT_TYPE}
    answers: list[object] = []

    def send() -> None:
        try:
            answers.append(httpx.post(f"{server.url}/api/v1/ingest", content=body,
                                      headers=headers, timeout=60).status_code)
        except httpx.HTTPError as exc:
            answers.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(kill_after)  # while the body arrives, is decoded, applied or answered
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait()
    sender.join(timeout=60)
    samples, cpu, batches = stored(database_url)
    # all or nothing: never a part of the batch
    assert (samples, batches) in ((0, 0), (USERS * SAMPLES, 1))

    server.start()  # the same database
    again = httpx.post(f"{server.url}/api/v1/ingest", content=body, headers=headers, timeout=60)
    assert again.status_code == 200
    assert again.json()["status"] == ("duplicate" if batches else "applied")
    expected_cpu = USERS * 2.5 * (SAMPLES - 1)
    assert stored(database_url) == (USERS * SAMPLES, expected_cpu, 1)
