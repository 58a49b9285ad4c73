"""The latency ledger: hourly buckets per member and profile, percentiles from summed buckets,
Dask worker time, spawn failures, exactly once, /metrics histograms; SQLite and PostgreSQL."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from afmon.aggregator.core import latency
from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.reads import LOCAL_ADMIN, Principal, QueryError
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from tests.dashboard.conftest import ALICE_ID, FACILITY, IDENTITY_TOML

NOW = 1_790_000_000.0
TOKEN = "t"
START = (NOW // 3600 - 6) * 3600  # whole hours


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> TestClient:
    identity = tmp_path / "identity.toml"
    identity.write_text(IDENTITY_TOML)
    settings = ServerSettings(
        database_url=database_url, facility_tokens={FACILITY: TOKEN}, identity_file=identity
    )
    return TestClient(create_app(settings, clock=lambda: NOW, with_dashboard=False))


def post(client: TestClient, events: list[wire.Event], seq: int) -> dict:
    batch = wire.Batch(
        version=1,
        agent_id="lat-agent",
        facility=FACILITY,
        node="hub",
        seq=seq,
        sent_at=NOW,
        events=events,
    )
    r = client.post(
        "/api/v1/ingest", content=wire.encode(batch), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    return {"code": r.status_code, **r.json()}


def spawns(n: int, seed: int = 7) -> list[wire.Event]:
    """Lognormal waits (median ~8 s, tail into minutes) spread over six hours."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        start = START + rng.uniform(0, 6 * 3600 - 600)
        wait = rng.lognormvariate(2.1, 1.1)
        user = ("alice", "bob", "carol")[i % 3]
        profile = ("small", "gpu")[i % 2]
        out.append(
            wire.Event(
                "spawn", f"sp-{i}", user, start, start + wait, {"profile": profile, "outcome": "ok"}
            )
        )
    return out


def bucket_width_of(value: float) -> float:
    le = latency.bucket_of(value)
    return (le if not math.isinf(le) else value) - latency.lower_bound(le)


def test_percentiles_from_hourly_buckets_match_raw_events(client: TestClient) -> None:
    events = spawns(300)
    for i in range(0, 300, 100):
        assert post(client, events[i : i + 100], seq=i)["status"] == "applied"
    q = client.app.state.services.query
    raw = np.array([e.end - e.start for e in events])
    got = q.latency_percentiles(
        LOCAL_ADMIN,
        "time_to_session",
        START,
        NOW + 3600,
        quantiles=(0.5, 0.9, 0.95, 0.99),
        slo_seconds=10.0,
    )
    assert len(got) == 1 and got["count"][0] == 300
    assert got["mean_seconds"][0] == pytest.approx(raw.mean())
    assert got["within_slo_ratio"][0] == pytest.approx((raw <= 10.0).mean())
    for qq, col in (
        (0.5, "p50_seconds"),
        (0.9, "p90_seconds"),
        (0.95, "p95_seconds"),
        (0.99, "p99_seconds"),
    ):
        exact = float(np.quantile(raw, qq, method="inverted_cdf"))  # nearest rank
        assert abs(got[col][0] - exact) <= bucket_width_of(exact), (qq, got[col][0], exact)
        assert latency.bucket_of(got[col][0]) == latency.bucket_of(exact) or math.isclose(
            got[col][0], latency.lower_bound(latency.bucket_of(exact))
        )

    # per profile and per hour: the buckets hold every event once
    by_profile = q.latency_percentiles(
        LOCAL_ADMIN, "time_to_session", START, NOW + 3600, by=("profile",)
    )
    assert dict(zip(by_profile["profile"], by_profile["count"], strict=True)) == {
        "gpu": 150,
        "small": 150,
    }
    hourly = q.latency_percentiles(LOCAL_ADMIN, "time_to_session", START, NOW + 3600, step="hour")
    assert hourly["count"].sum() == 300 and len(hourly) == 6

    # a member sees only their own waits; percentiles of theirs match their raw events
    alice = Principal("member", member_id=ALICE_ID, vo="atlas")
    mine = q.latency_percentiles(alice, "time_to_session", START, NOW + 3600, by=("member",))
    assert mine["member"].tolist() == [ALICE_ID] and mine["count"][0] == 100
    own = q.latency_events(alice, "time_to_session", START, NOW + 3600, limit=500)
    assert len(own) == 100 and set(own["member_id"]) == {ALICE_ID}
    assert own["seconds"].is_monotonic_decreasing
    raw_alice = np.array([e.end - e.start for e in events if e.user == "alice"])
    assert own["seconds"].iloc[0] == pytest.approx(raw_alice.max())

    # a batch seen again counts nothing twice
    assert post(client, events[:100], seq=0)["status"] == "duplicate"
    again = q.latency_percentiles(LOCAL_ADMIN, "time_to_session", START, NOW + 3600)
    assert again["count"][0] == 300
    with pytest.raises(QueryError, match="unknown latency kind"):
        q.latency_buckets(LOCAL_ADMIN, "time_to_lunch", START, NOW)


def test_dask_events_worker_time_failures_and_metrics(client: TestClient) -> None:
    t0 = NOW - 2 * 3600 - 30  # the cluster straddles an hour boundary
    events = [
        wire.Event(
            "dask_scale",
            "c1/first-worker",
            "alice",
            t0,
            t0 + 0.8,
            {"reason": "first_worker", "target": 1, "from": 0},
        ),
        wire.Event(
            "dask_scale",
            "c1/up-1",
            "alice",
            t0 + 1,
            t0 + 3.5,
            {"reason": "scale", "target": 4, "from": 1},
        ),
        wire.Event(
            "dask_scale",
            "c1/down-2",
            "alice",
            t0 + 10,
            t0 + 11,
            {"reason": "scale", "target": 1, "from": 4},
        ),
        wire.Event("dask_worker", "c1/w1", "alice", t0 + 0.8, t0 + 100.0, {"nthreads": 2}),
        wire.Event("dask_worker", "c1/w2", "alice", t0 + 2.0, t0 + 50.0, {"nthreads": 1}),
        wire.Event("dask_computation", "c1/g1", "alice", t0 + 20, t0 + 21.25, {}),
        wire.Event(
            "spawn",
            "sp-fail",
            "bob",
            t0,
            t0 + 2.0,
            {"outcome": "failed", "error": "boom", "profile": "gpu"},
        ),
    ]
    assert post(client, events, seq=1)["status"] == "applied"
    q = client.app.state.services.query
    win = (NOW - 4 * 3600, NOW + 3600)
    totals = q.usage_totals(LOCAL_ADMIN, *win, by=("member",))
    amount = {r: a for r, a in zip(totals["resource"], totals["amount"], strict=True)}
    assert amount["dask_worker_seconds"] == pytest.approx(99.2 + 48.0)
    assert amount["dask_worker_core_seconds"] == pytest.approx(99.2 * 2 + 48.0)
    assert amount["spawn_failures"] == 1.0
    first = q.latency_percentiles(LOCAL_ADMIN, "time_to_first_worker", *win)
    assert first["count"][0] == 1 and first["mean_seconds"][0] == pytest.approx(0.8)
    up = q.latency_percentiles(LOCAL_ADMIN, "time_to_scale_up", *win)
    assert up["count"][0] == 1 and up["mean_seconds"][0] == pytest.approx(2.5)  # not the down
    fin = q.latency_events(LOCAL_ADMIN, "time_to_finish", *win)
    assert fin["seconds"].tolist() == [pytest.approx(1.25)]
    assert q.latency_buckets(LOCAL_ADMIN, "time_to_session", *win).empty  # a failure is no wait

    body = client.get("/metrics").text
    line = 'afmon_time_to_first_worker_seconds_bucket{facility="af-test",le="%s",vo="atlas"} %s'
    assert line % ("0.5", "0.0") not in body  # 0.5 is a ledger bound, not a /metrics one
    assert line % ("1.0", "1.0") in body and line % ("+Inf", "1.0") in body
    assert "afmon_time_to_scale_up_seconds_count" in body
    assert "alice" not in body and "member" not in body

    # bad attributes are refused with the attribute named, and nothing of the batch is kept
    bad = [wire.Event("dask_worker", "c1/w9", "alice", t0, t0 + 5, {"nthreads": 0})]
    r = post(client, bad, seq=2)
    assert r["code"] == 422 and r["detail"]["field"] == "$.events[0].attrs.nthreads"
    with client.app.state.services.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM event WHERE id = 'c1/w9'")).scalar() == 0


def test_quantile_edges() -> None:
    assert math.isnan(latency.quantile([], 0.5))
    assert latency.quantile([(math.inf, 2, 20000.0)], 0.5) == 10000.0  # open bucket: its mean
    assert latency.quantile([(10.0, 4, 30.0)], 0.5) == pytest.approx(7.5)  # 5 + 5 x 2/4
    assert latency.bucket_of(10.0) == 10.0 and latency.bucket_of(10.01) == 15.0
    with pytest.raises(ValueError):
        latency.bucket_of(-1.0)
