"""The ledger is a function of the set of samples, not of their arrival order
(aggregator/ingest/late.py, docs/accounting.md "Late samples").

- property: any permutation of a simulated facility's batches, each arriving at any server
  time within the late window (and up to the allowed future skew before it), gives the same
  ledger, daily ledger and latency histograms as the batches in time order;
- through a real `afmon serve` on SQLite and PostgreSQL: two batches of a node delivered
  swapped are accounted exactly (the simulator's ground truth); a record reaching beyond the
  window is refused `too_old`, quarantined, and replayed exactly once after the window is
  widened; a sample repeated late counts once.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.identity.accounts import IdentityMap, load_identity_file
from afmon.aggregator.ingest.apply import Ingestor
from afmon.aggregator.store.db import create_schema, make_engine
from afmon.collectors import wire
from afmon.collectors.simulator import FacilitySimulator, Poster
from tests.aggregator.ledger_truth import expected_totals, member_totals
from tests.conftest import ServerProcess

HOUR = 3600.0
START = 1_790_006_400.0 - 1_800  # half past an hour: batches straddle hour boundaries
SPAN = 2 * HOUR
WINDOW = 86_400.0
SKEW = 300.0  # AFMON_MAX_FUTURE_SKEW_SECONDS


@cache
def workload() -> tuple[tuple[wire.Batch, ...], str]:
    """Two hours of a small facility with sessions, Dask, batch jobs, GPUs and data access,
    in 5-minute batches per node."""
    sim = FacilitySimulator(
        facility="af", nodes=2, members_per_vo=2, seed=23, sessions_per_member_day=24, rich=True
    )
    batches = tuple(sim.batches(START, START + SPAN, ticks_per_batch=30))
    return batches, sim.identity_toml()


def newest(batch: wire.Batch) -> float:
    times = [s.times[-1] for s in batch.series if s.times]
    times += [max(e.start, e.end or e.start) for e in batch.events]
    return max(times)


Ledger = dict[tuple[object, ...], float]


def ledgers(engine: Engine) -> tuple[Ledger, Ledger, Ledger]:
    """usage, usage_day and latency (count and sum per bucket), rows with a zero amount left
    out (a correction may leave one where the in-order ledger has none)."""
    out: list[Ledger] = []
    with engine.connect() as conn:
        for sql in (
            "SELECT facility, vo, grp, member_id, resource, hour, amount FROM usage",
            "SELECT facility, vo, grp, member_id, resource, day, amount FROM usage_day",
        ):
            out.append({tuple(r[:-1]): r[-1] for r in conn.exec_driver_sql(sql) if r[-1]})
        latency: Ledger = {}
        for r in conn.exec_driver_sql(
            "SELECT facility, vo, grp, member_id, kind, profile, hour, le, count, sum_seconds "
            "FROM latency"
        ):
            latency[(*r[:8], "count")] = r[8]
            latency[(*r[:8], "sum")] = r[9]
        out.append(latency)
    return out[0], out[1], out[2]


def apply_all(order: list[int], delays: list[float]) -> tuple[Ledger, Ledger, Ledger]:
    """A fresh SQLite ledger fed the workload's batches in `order`, batch i arriving
    `delays[i]` seconds after its newest record (the server's clock)."""
    batches, identity = workload()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "identity.toml")
        path.write_text(identity)
        engine = make_engine(f"sqlite:///{tmp}/afmon.sqlite")
        create_schema(engine)
        load_identity_file(engine, path)
        settings_ = ServerSettings(
            database_url=f"sqlite:///{tmp}/afmon.sqlite",
            facility_tokens={"af": "t"},
            late_sample_window_seconds=WINDOW,
            max_future_skew_seconds=SKEW,
        )
        now = [0.0]
        ingestor = Ingestor(engine, IdentityMap(engine), settings_, clock=lambda: now[0])
        for i in order:
            now[0] = newest(batches[i]) + delays[i]
            result = ingestor.apply(batches[i], ingestor.judge(batches[i]))
            assert result.status == "applied", result.refused
        try:
            return ledgers(engine)
        finally:
            engine.dispose()


@cache
def in_time_order() -> tuple[Ledger, Ledger, Ledger]:
    n = len(workload()[0])
    return apply_all(list(range(n)), [0.0] * n)


def assert_same(got: Ledger, expected: Ledger, what: str) -> None:
    """Equal up to the rounding of float sums added in another order."""
    for key in expected.keys() | got.keys():
        a, b = got.get(key, 0.0), expected.get(key, 0.0)
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6), f"{what} {key}: {a} != {b}"


def test_the_in_order_ledger_is_a_real_workload() -> None:
    usage, _day, latency = in_time_order()
    resources = {k[4] for k in usage}
    assert {"cpu_seconds", "memory_byte_seconds", "gpu_allocated_seconds"} <= resources
    assert {"sessions", "session_seconds", "data_read_remote_bytes"} <= resources
    assert len({k[3] for k in usage}) >= 5 and latency  # several members, some waits


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_arrival_order_and_delay_within_the_window_gives_the_same_ledger(
    data: st.DataObject,
) -> None:
    n = len(workload()[0])
    order = data.draw(st.permutations(range(n)), label="order")
    delays = data.draw(
        st.lists(st.floats(-SKEW + 1, WINDOW - SPAN - HOUR), min_size=n, max_size=n),
        label="delays",
    )
    usage, day, latency = apply_all(order, delays)
    expected = in_time_order()
    assert_same(usage, expected[0], "usage")
    assert_same(day, expected[1], "usage_day")
    assert_same(latency, expected[2], "latency")


def test_reversed_order_gives_the_same_ledger() -> None:
    n = len(workload()[0])
    got = apply_all(list(reversed(range(n))), [0.0] * n)
    for g, e, what in zip(got, in_time_order(), ("usage", "usage_day", "latency"), strict=True):
        assert_same(g, e, what)


# -- through a real server ---------------------------------------------------------------


def test_swapped_batches_too_old_refusal_and_replay(
    database_url: str, tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    sim = FacilitySimulator(facility="test-af", nodes=2, members_per_vo=2, seed=7)
    identity = tmp_path / "identity.toml"
    identity.write_text(sim.identity_toml())
    server = server_factory(
        database_url=database_url,
        identity_file=identity,
        dashboard="false",
        late_sample_window_seconds="7200",
    )
    first = list(sim.batches(START, START + HOUR, ticks_per_batch=30))  # 12 per node
    rest = list(sim.batches(START + HOUR, START + 4 * HOUR, ticks_per_batch=30))
    per_node = [[b for b in first if b.node == node] for node in sim.nodes]
    held = per_node[0].pop(3)  # delivered last, 3 h behind its series' newest samples
    poster = Poster(server.url, server.token)
    # each node's batches two by two, the later one first
    for batches in per_node:
        for a, b in zip(batches[0::2], batches[1::2], strict=False):
            assert poster.post(b)["status"] == "applied"
            assert poster.post(a)["status"] == "applied"
        if len(batches) % 2:
            assert poster.post(batches[-1])["status"] == "applied"
    answer = poster.post(with_seq(per_node[1][0], 10_000))  # resent under a new seq
    assert answer["samples"] == 0 and answer["stale_samples"] == per_node[1][0].sample_count
    for batch in rest:
        poster.post(batch)
    # a batch already stored, resent 3 h behind under a new seq (an agent replaying its spool
    # under a new id): every sample a repeat, nothing refused
    again = poster.post(with_seq(per_node[1][1], 10_001))
    assert again["status"] == "applied", again
    assert again["samples"] == 0 and again["stale_samples"] == per_node[1][1].sample_count
    answer = poster.post(held)
    assert answer["status"] == "partial"
    reasons = {r["reason"] for r in answer["refused"]}  # type: ignore[union-attr]
    assert reasons == {"too_old"}  # the series that went on; a user's last samples did not
    refused = len(answer["refused"])  # type: ignore[arg-type]
    assert 0 < refused < len(held.series)
    message = answer["refused"][0]["message"]  # type: ignore[index]
    assert "AFMON_LATE_SAMPLE_WINDOW_SECONDS (7200 s)" in message, message
    # counters telescope and the gauges hold over the hole: the totals are right already
    assert member_totals(server) == pytest.approx(expected_totals(sim), rel=1e-9)

    # widened, the replay places the late samples among their stored neighbours: the
    # ledger is the full truth, and a second replay does nothing
    env = {**server.env, "AFMON_LATE_SAMPLE_WINDOW_SECONDS": str(WINDOW)}
    cli = [sys.executable, "-m", "afmon.aggregator.cli", "quarantine"]
    listed = subprocess.run([*cli, "list"], env=env, capture_output=True, text=True, check=True)
    assert "too_old" in listed.stdout, listed.stdout
    done = subprocess.run([*cli, "replay"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"replayed {refused} records; 0 had been" in done.stdout, done.stdout
    again = subprocess.run([*cli, "replay"], env=env, capture_output=True, text=True, check=True)
    assert "replayed 0 records" in again.stdout, again.stdout
    assert member_totals(server) == pytest.approx(expected_totals(sim), rel=1e-9)


def with_seq(batch: wire.Batch, seq: int) -> wire.Batch:
    return msgspec.structs.replace(batch, seq=seq)


def test_a_late_sample_is_placed_between_its_neighbours(
    database_url: str, server_factory: Callable[..., ServerProcess]
) -> None:
    """A counter and a gauge whose middle sample comes late, in the previous hour: the
    ledger hours are those of the samples in time order."""
    server = server_factory(database_url=database_url, dashboard="false")
    h = START + 1_800  # a whole hour
    poster = Poster(server.url, server.token)

    def batch(seq: int, times: list[float], cpu: list[float], rss: list[float]) -> wire.Batch:
        labels = {"user": "alice", "node": "n1"}
        return wire.Batch(
            version=wire.WIRE_VERSION, agent_id="a1", facility="test-af", node="n1", seq=seq,
            sent_at=h + 60, events=[],
            series=[
                wire.Series("user_cpu_seconds", "seconds", "counter", labels, times, cpu),
                wire.Series("user_memory_rss_bytes", "bytes", "gauge", labels, times, rss),
            ],
        )  # fmt: skip

    assert poster.post(batch(1, [h - 10, h + 10], [0.0, 10.0], [100.0, 100.0]))["samples"] == 4
    assert poster.post(batch(2, [h - 5], [5.0], [300.0]))["samples"] == 2
    # in time order: cpu 0 at h-10 (baseline), 5 at h-5, 10 at h+10; rss 100, 300, 300
    expected = {
        (h - HOUR, "cpu_seconds"): 5.0,
        (h, "cpu_seconds"): 5.0,
        (h - HOUR, "memory_byte_seconds"): 100 * 5 + 300 * 5,
        (h, "memory_byte_seconds"): 300 * 10,
    }
    got: dict[tuple[float, str], float] = {}
    for hour in (h - HOUR, h):
        r = httpx.get(
            f"{server.url}/api/v1/usage",
            params={"start": hour, "end": hour + HOUR, "by": "member"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        for row in r.json():
            if row["resource"] in ("cpu_seconds", "memory_byte_seconds"):
                got[(hour, row["resource"])] = row["amount"]
    assert got == pytest.approx(expected, rel=1e-12)
