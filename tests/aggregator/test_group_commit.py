"""Group commit (aggregator/ingest/group_commit.py) on real SQLite and PostgreSQL: the works of
concurrent callers share one commit, each returns only once committed, a work that raises
is rolled back alone, a database error fails its whole group and nothing of it is written;
and through the Ingestor, concurrent batches are applied exactly once each."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, text

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.identity.accounts import IdentityMap
from afmon.aggregator.ingest.apply import Ingestor
from afmon.aggregator.ingest.group_commit import GroupCommit
from afmon.aggregator.store.db import create_schema, make_engine
from afmon.collectors import wire


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS gc_probe")
        conn.exec_driver_sql("CREATE TABLE gc_probe (k INTEGER PRIMARY KEY)")
    yield engine
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS gc_probe")
    engine.dispose()


def _stored(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT k FROM gc_probe ORDER BY k"))]


def _insert(k: int) -> Callable[[Connection], int]:
    def work(conn: Connection) -> int:
        conn.execute(text("INSERT INTO gc_probe (k) VALUES (:k)"), {"k": k})
        return k

    return work


def _queued(group: GroupCommit, n: int) -> None:
    """Wait until `n` callers wait in `group`'s queue."""
    for _ in range(2000):
        with group._lock:
            if len(group._queue) >= n:
                return
        threading.Event().wait(0.005)
    raise AssertionError(f"{n} callers never queued")


def test_concurrent_works_share_a_commit_and_a_bad_one_is_rolled_back_alone(
    engine: Engine,
) -> None:
    group = GroupCommit(engine, max_group=32)
    release = threading.Event()

    def blocking(conn: Connection) -> str:  # holds the lead while the others queue
        release.wait(30)
        conn.execute(text("INSERT INTO gc_probe (k) VALUES (0)"))
        return "first"

    def refused(conn: Connection) -> None:
        conn.execute(text("INSERT INTO gc_probe (k) VALUES (99)"))
        raise ValueError("batch 3 refused as a whole")

    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(group.run, blocking)
        while not group._leading:
            threading.Event().wait(0.005)
        others = [pool.submit(group.run, _insert(k)) for k in (1, 2)]
        bad = pool.submit(group.run, refused)
        others += [pool.submit(group.run, _insert(k)) for k in (4, 5)]
        _queued(group, 5)
        release.set()
        assert first.result(30) == "first"
        assert [f.result(30) for f in others] == [1, 2, 4, 5]
        with pytest.raises(ValueError, match="batch 3 refused as a whole"):
            bad.result(30)
    assert _stored(engine) == [0, 1, 2, 4, 5]  # 99 rolled back with its savepoint
    assert (group.commits, group.applied) == (2, 5)  # the blocking one, then the other five


def test_a_database_error_fails_the_whole_group(engine: Engine) -> None:
    group = GroupCommit(engine, max_group=32)
    release = threading.Event()

    def blocking(conn: Connection) -> None:
        release.wait(30)

    def broken(conn: Connection) -> None:
        conn.execute(text("INSERT INTO no_such_table (k) VALUES (1)"))

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(group.run, blocking)
        while not group._leading:
            threading.Event().wait(0.005)
        fine = pool.submit(group.run, _insert(7))
        bad = pool.submit(group.run, broken)
        _queued(group, 2)
        release.set()
        first.result(30)
        for f in (fine, bad):
            with pytest.raises(Exception, match="no_such_table"):
                f.result(30)
    assert _stored(engine) == []  # nothing of the failed group was written
    # the next caller leads a fresh transaction
    assert group.run(_insert(8)) == 8
    assert _stored(engine) == [8]


@pytest.mark.parametrize("max_group", [1, 32])
def test_a_lone_work_that_raises_leaves_nothing(engine: Engine, max_group: int) -> None:
    group = GroupCommit(engine, max_group=max_group)  # 1: off, a transaction per caller

    def refused(conn: Connection) -> None:
        conn.execute(text("INSERT INTO gc_probe (k) VALUES (1)"))
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        group.run(refused)
    assert group.run(_insert(2)) == 2
    assert _stored(engine) == [2]


def test_concurrent_batches_through_the_ingestor_apply_exactly_once(
    tmp_path: Path, database_url: str
) -> None:
    """16 threads post 8 agents' batches in any order, every one twice (a retry): each batch
    is applied once, the ledger is exact."""
    engine = make_engine(database_url)
    create_schema(engine)
    settings = ServerSettings(
        database_url=database_url, facility_tokens={"af": "t" * 32}, ingest_group_commit=8
    )
    ingestor = Ingestor(engine, IdentityMap(engine), settings)
    t0 = 1_790_006_400.0

    def batch(agent: int, seq: int) -> wire.Batch:
        cpu = wire.Series(
            "user_cpu_seconds", "seconds", "counter", {"user": f"u{agent}", "node": f"n{agent}"},
            [t0 + 10 * seq], [5.0 * seq], created=t0,
        )  # fmt: skip
        return wire.Batch(
            version=wire.WIRE_VERSION, agent_id=f"gc-{agent}", facility="af",
            node=f"n{agent}", seq=seq, sent_at=t0 + 10 * seq, series=[cpu],
        )  # fmt: skip

    jobs = [batch(a, s) for a in range(8) for s in range(1, 6)]
    jobs += jobs  # every batch again: a retry
    random.Random(7).shuffle(jobs)

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda b: ingestor.apply(b, ingestor.judge(b)).status, jobs))
    assert outcomes.count("applied") == 40
    assert outcomes.count("duplicate") == 40
    with engine.connect() as conn:
        total = conn.execute(
            text("SELECT SUM(amount) FROM usage WHERE resource = 'cpu_seconds'")
        ).scalar_one()
        batches = conn.execute(text("SELECT COUNT(*) FROM applied_batch")).scalar_one()
    assert total == 8 * 25.0  # each agent's counter reached 25 s from `created`
    assert batches == 40
    engine.dispose()
