"""The latency ledger: hourly buckets per member and profile; exact percentiles from the per-wait
records (histogram buckets only beyond them, never outside [min, max]); windows that start inside
an hour; the successful-waits and all-starts populations; Dask worker time, spawn failures,
exactly once, /metrics histograms; SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from afmon.aggregator.core import latency
from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.reads import LOCAL_ADMIN, Principal, QueryError
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from afmon.dashboard.pages import interactive
from afmon.dashboard.pages.common import Window
from tests.dashboard.conftest import ALICE_ID, FACILITY, IDENTITY_TOML

NOW = 1_790_000_000.0
TOKEN = "t"
START = (NOW // 3600 - 6) * 3600  # whole hours


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> TestClient:
    identity = tmp_path / "identity.toml"
    identity.write_text(IDENTITY_TOML)
    settings = ServerSettings(
        database_url=database_url,
        facility_tokens={FACILITY: TOKEN},
        identity_file=identity,
        metrics_public=True,  # /metrics readable without a scrape credential
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
        # every wait has its record: the standard (linear, numpy's default) sample quantile
        assert got[col][0] == pytest.approx(float(np.quantile(raw, qq)), rel=1e-12), qq
    assert got["exact_count"][0] == 300 and got["failed_count"][0] == 0
    assert (got["min_seconds"][0], got["max_seconds"][0]) == (raw.min(), raw.max())
    assert got["population"][0] == "ok"

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

    # bad attributes refuse their event, named (quarantined), and nothing of it is kept
    bad = [wire.Event("dask_worker", "c1/w9", "alice", t0, t0 + 5, {"nthreads": 0})]
    r = post(client, bad, seq=2)
    assert r["status"] == "partial", r
    [refusal] = r["refused"]
    assert (refusal["field"], refusal["reason"]) == ("$.events[0].attrs.nthreads", "bad_attribute")
    with client.app.state.services.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM event WHERE id = 'c1/w9'")).scalar() == 0


def spawn(i: str, user: str, start: float, wait: float, **attrs: object) -> wire.Event:
    return wire.Event("spawn", i, user, start, start + wait, {"profile": "small", **attrs})


def test_a_window_that_starts_inside_an_hour_keeps_that_hours_waits(client: TestClient) -> None:
    """A query made 30 s after a UTC hour boundary for "the last hour" starts 59.5 min into
    the previous hour: the waits after that instant count, the ones before it do not."""
    boundary = START + 3 * 3600
    now = boundary + 30  # a fixed clock, just after the hour boundary
    events = [
        spawn("before", "alice", boundary - 3590, 1.0),  # before the window: left out
        spawn("early", "alice", boundary - 3000, 2.0),  # early in the hour that holds `start`
        spawn("late", "bob", boundary - 60, 4.0),
        spawn("after", "carol", boundary + 10, 8.0),
    ]
    assert post(client, events, seq=1)["status"] == "applied"
    q = client.app.state.services.query
    lo, hi = now - 3600, now + 3600
    got = q.latency_percentiles(LOCAL_ADMIN, "time_to_session", lo, hi, quantiles=(0.0, 1.0))
    assert got["count"].tolist() == [3] and got["exact_count"].tolist() == [3]
    assert (got["p0_seconds"][0], got["p100_seconds"][0]) == (2.0, 8.0)
    assert got["mean_seconds"][0] == pytest.approx(14.0 / 3)
    buckets = q.latency_buckets(LOCAL_ADMIN, "time_to_session", lo, hi)
    assert dict(zip(buckets["le"], buckets["count"], strict=True)) == {2.5: 1, 5.0: 1, 10.0: 1}
    hourly = q.latency_percentiles(LOCAL_ADMIN, "time_to_session", lo, hi, step="hour")
    assert hourly["count"].tolist() == [2, 1]
    assert hourly["time"].tolist() == [
        pd.Timestamp(boundary - 3600, unit="s", tz="UTC"),
        pd.Timestamp(boundary, unit="s", tz="UTC"),
    ]
    # a window that ends inside an hour stops at its end too
    early = q.latency_percentiles(LOCAL_ADMIN, "time_to_session", boundary - 3585, boundary - 100)
    assert early["count"].tolist() == [1] and early["p50_seconds"].tolist() == [2.0]

    # waits known only by their hour's histogram (no per-wait record, e.g. kept before the
    # records were): the hour overlaps the window, so they count
    with client.app.state.services.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO latency VALUES (:f, 'atlas', '/atlas', :m, 'time_to_session', "
                "'small', :h, 30.0, 1, 15.29)"
            ),
            {"f": FACILITY, "m": ALICE_ID, "h": int(boundary - 3600)},
        )
    mixed = q.latency_percentiles(LOCAL_ADMIN, "time_to_session", lo, hi, quantiles=(1.0,))
    assert mixed["count"].tolist() == [4] and mixed["exact_count"].tolist() == [3]
    assert mixed["p100_seconds"][0] == pytest.approx(15.29)  # one bucketed wait: its own value


def test_a_single_wait_is_every_percentile_of_itself(client: TestClient) -> None:
    """One 15.29 s wait: median = p99 = 15.29 s, never interpolated to 22.5 s or 29.85 s."""
    one = spawn("one", "alice", START + 600, 15.29)
    wait = one.end - one.start  # 15.29 s to within the float resolution of epoch seconds
    assert post(client, [one], seq=1)["status"] == "applied"
    q = client.app.state.services.query
    win = (START, NOW + 3600)
    for by in ((), ("facility",), ("member", "profile")):
        got = q.latency_percentiles(
            LOCAL_ADMIN, "time_to_session", *win, by=by, quantiles=(0.5, 0.9, 0.99)
        )
        assert len(got) == 1 and got["count"][0] == 1
        for col in ("p50_seconds", "p90_seconds", "p99_seconds", "min_seconds", "max_seconds"):
            assert got[col][0] == wait, (by, col)
    hourly = q.latency_percentiles(LOCAL_ADMIN, "time_to_session", *win, step="hour")
    assert hourly["p99_seconds"].tolist() == [wait]
    # the same wait known only by its histogram bucket (its record gone) is still itself
    with client.app.state.services.engine.begin() as conn:
        conn.execute(text("DELETE FROM event WHERE id = 'one'"))
    alone = q.latency_percentiles(LOCAL_ADMIN, "time_to_session", *win)
    assert alone["exact_count"][0] == 0
    assert alone[["p50_seconds", "p99_seconds"]].values.tolist() == [[wait, wait]]


def test_failed_starts_are_a_population_of_their_own(client: TestClient) -> None:
    t0 = START + 60
    events = [
        spawn("ok-1", "alice", t0, 2.0, outcome="ok"),
        spawn("ok-2", "bob", t0 + 10, 4.0, outcome="ok"),
        spawn("fail", "alice", t0 + 20, 30.0, outcome="failed", error="boom"),
        spawn("slow", "carol", t0 + 30, 60.0, outcome="timeout", error="timed out"),
        wire.Event(
            "dask_scale", "c/up-1", "alice", t0, t0 + 9.0,
            {"reason": "scale", "target": 4, "from": 1, "outcome": "superseded"},
        ),
        wire.Event(
            "dask_scale", "c/up-2", "alice", t0 + 9.0, t0 + 12.0,
            {"reason": "scale", "target": 3, "from": 1},
        ),
        wire.Event(
            "dask_scale", "c/down-3", "alice", t0 + 20, t0 + 21.0,
            {"reason": "scale", "target": 1, "from": 3},
        ),
    ]  # fmt: skip
    assert post(client, events, seq=1)["status"] == "applied"
    q = client.app.state.services.query
    win = (START, NOW + 3600)
    ok = q.latency_percentiles(LOCAL_ADMIN, "time_to_session", *win, slo_seconds=10.0)
    assert ok["population"].tolist() == ["ok"]  # the default: successful waits only
    assert (ok["count"][0], ok["failed_count"][0], ok["max_seconds"][0]) == (2, 0, 4.0)
    assert ok["within_slo_ratio"][0] == 1.0
    everyone = q.latency_percentiles(
        LOCAL_ADMIN, "time_to_session", *win, slo_seconds=10.0, population="all"
    )
    assert everyone["population"].tolist() == ["all"]
    assert (everyone["count"][0], everyone["failed_count"][0]) == (4, 2)
    assert everyone["within_slo_ratio"][0] == 0.5
    assert everyone["mean_seconds"][0] == pytest.approx(24.0)
    assert everyone["p50_seconds"][0] == pytest.approx(17.0)  # between 4 and 30 s
    assert everyone["max_seconds"][0] == 60.0 and everyone["p99_seconds"][0] <= 60.0
    per_member = q.latency_percentiles(
        LOCAL_ADMIN, "time_to_session", *win, by=("member",), population="all"
    )
    assert dict(zip(per_member["member"], per_member["failed_count"], strict=True))[ALICE_ID] == 1
    assert q.latency_buckets(LOCAL_ADMIN, "time_to_session", *win)["count"].sum() == 2
    all_buckets = q.latency_buckets(LOCAL_ADMIN, "time_to_session", *win, population="all")
    assert dict(zip(all_buckets["le"], all_buckets["count"], strict=True)) == {
        2.5: 1, 5.0: 1, 30.0: 1, 60.0: 1
    }  # fmt: skip
    # the listing of waits one by one says which population it is: all starts by default
    listed = q.latency_events(LOCAL_ADMIN, "time_to_session", *win)
    assert listed["outcome"].tolist() == ["timeout", "failed", "ok", "ok"]
    only_ok = q.latency_events(LOCAL_ADMIN, "time_to_session", *win, population="ok")
    assert only_ok["id"].tolist() == ["ok-2", "ok-1"]
    # a superseded scale request is a start that did not succeed; a scale-down is no wait
    up = q.latency_percentiles(LOCAL_ADMIN, "time_to_scale_up", *win)
    assert (up["count"][0], up["p50_seconds"][0]) == (1, 3.0)
    up_all = q.latency_percentiles(LOCAL_ADMIN, "time_to_scale_up", *win, population="all")
    assert (up_all["count"][0], up_all["failed_count"][0]) == (2, 1)
    assert q.latency_events(LOCAL_ADMIN, "time_to_scale_up", *win)["id"].tolist() == [
        "c/up-1",
        "c/up-2",
    ]
    with pytest.raises(QueryError, match="population"):
        q.latency_percentiles(LOCAL_ADMIN, "time_to_session", *win, population="some")


_example = itertools.count()


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    waits=st.lists(
        st.tuples(
            st.floats(0.0, 7 * 3600, allow_nan=False),  # when, from the example's start
            st.floats(0.0, 9000.0, allow_nan=False),  # the wait
            st.sampled_from(latency.SPAWN_OUTCOMES),
        ),
        min_size=1,
        max_size=25,
    ),
    window=st.tuples(st.floats(0.0, 7 * 3600), st.floats(1.0, 7 * 3600)),
    population=st.sampled_from(sorted(latency.POPULATIONS)),
)
def test_percentiles_are_exact_and_within_min_max_through_the_app(
    client: TestClient,
    waits: list[tuple[float, float, str]],
    window: tuple[float, float],
    population: str,
) -> None:
    """Waits ingested as spawn events: for any window (starting anywhere in an hour) and
    either population, the percentiles are numpy's linear quantiles of exactly the waits that
    began in the window, hence within [min, max] of them."""
    k = next(_example)
    base = START - (k + 1) * 10 * 86400  # each example in its own days
    events = [
        spawn(f"h{k}-{i}", ("alice", "bob", "carol")[i % 3], base + t, w, outcome=o)
        for i, (t, w, o) in enumerate(waits)
    ]
    assert post(client, events, seq=k + 1000)["status"] == "applied"
    lo, hi = base + window[0], base + window[0] + window[1]
    inside = np.array(
        [e.end - e.start for e in events
         if lo <= e.start < hi and (population == "all" or e.attrs["outcome"] == "ok")]
    )  # fmt: skip
    q = client.app.state.services.query
    qs = (0.0, 0.25, 0.5, 0.9, 0.99, 1.0)
    got = q.latency_percentiles(
        LOCAL_ADMIN, "time_to_session", lo, hi, quantiles=qs, population=population
    )
    if inside.size == 0:
        assert got.empty
        return
    assert got["count"].tolist() == [inside.size]
    for qq in qs:
        value = got[latency.quantile_column(qq)][0]
        assert inside.min() <= value <= inside.max()
        assert value == pytest.approx(float(np.quantile(inside, qq)), rel=1e-9, abs=1e-9)


_one_read_example = itertools.count()


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    waits=st.lists(
        st.tuples(
            st.floats(0.0, 7 * 3600, allow_nan=False),  # when, from the example's start
            st.floats(0.0, 9000.0, allow_nan=False),  # the wait
            st.sampled_from(latency.SPAWN_OUTCOMES),
            st.sampled_from(["small", "gpu"]),
        ),
        max_size=20,
    ),
    bucketed=st.lists(  # waits known only by their histogram bucket: (hour, le, count)
        st.tuples(st.integers(0, 6), st.sampled_from(latency.BUCKETS_SECONDS), st.integers(1, 3)),
        max_size=3,
    ),
    window=st.tuples(st.floats(0.0, 7 * 3600), st.floats(1.0, 7 * 3600)),
    population=st.sampled_from(sorted(latency.POPULATIONS)),
    step=st.sampled_from(["hour", "day"]),
)
def test_one_read_gives_what_each_query_method_gives(
    client: TestClient,
    waits: list[tuple[float, float, str, str]],
    bucketed: list[tuple[int, float, int]],
    window: tuple[float, float],
    population: str,
    step: str,
) -> None:
    """`latency_waits` reads the waits once (the Interactive page's one read per render): its
    percentiles, buckets and slowest waits, per group and step, are exactly the frames of
    `latency_percentiles`, `latency_buckets` and `latency_events`, for any window and either
    population, records and histogram-only waits mixed, for an admin and for a member."""
    k = next(_one_read_example)
    base = START - (k * 10 + 15) * 86400  # each example in its own days, not the test above's
    events = [
        spawn(f"o{k}-{i}", ("alice", "bob", "carol")[i % 3], base + t, w, outcome=o, profile=pr)
        for i, (t, w, o, pr) in enumerate(waits)
    ]
    if events:
        assert post(client, events, seq=k + 5000)["status"] == "applied"
    with client.app.state.services.engine.begin() as conn:
        for hour, le, count in bucketed:
            mean = latency.lower_bound(le) + 0.5 if math.isinf(le) else le
            conn.execute(
                text(
                    "INSERT INTO latency VALUES (:f, 'atlas', '/atlas', :m, 'time_to_session', "
                    "'legacy', :h, :le, :c, :s) ON CONFLICT DO NOTHING"
                ),
                {"f": FACILITY, "m": ALICE_ID, "h": int(base // 3600 + hour) * 3600, "le": le,
                 "c": count, "s": count * mean},
            )  # fmt: skip
    lo, hi = base + window[0], base + window[0] + window[1]
    q = client.app.state.services.query
    kind = "time_to_session"
    alice = Principal("member", member_id=ALICE_ID, vo="atlas")
    for p in (LOCAL_ADMIN, alice):
        once = q.latency_waits(p, kind, lo, hi, population=population)
        for by, at in itertools.product(((), ("profile",), ("member", "profile")), (None, step)):
            stats = {"quantiles": (0.0, 0.5, 0.9, 0.99, 1.0), "slo_seconds": 10.0}
            pd.testing.assert_frame_equal(
                once.percentiles(by, at, **stats),
                q.latency_percentiles(p, kind, lo, hi, by, at, population=population, **stats),
                check_exact=True,
            )
            pd.testing.assert_frame_equal(
                once.buckets(by, at),
                q.latency_buckets(p, kind, lo, hi, by, at, population=population),
                check_exact=True,
            )
        for limit in (1, 3, 50):
            pd.testing.assert_frame_equal(
                once.events(limit),
                q.latency_events(p, kind, lo, hi, limit=limit, population=population),
                check_exact=True,
            )
    # the page draws every figure from one such read: the frames of the query methods
    w = Window("custom", lo, hi, step)
    got = interactive.read_figures(q, LOCAL_ADMIN, kind, w, population, 10.0)
    stats = {"quantiles": interactive.QUANTILES, "slo_seconds": 10.0, "population": population}
    want = interactive.Figures(
        total=q.latency_percentiles(LOCAL_ADMIN, kind, lo, hi, **stats),
        buckets=q.latency_buckets(LOCAL_ADMIN, kind, lo, hi, population=population),
        over_time=q.latency_percentiles(LOCAL_ADMIN, kind, lo, hi, step=step, **stats),
        profiles=q.latency_percentiles(LOCAL_ADMIN, kind, lo, hi, by=("profile",), **stats),
        slowest=q.latency_events(LOCAL_ADMIN, kind, lo, hi, limit=10, population=population),
    )
    for name, a, b in zip(interactive.Figures._fields, got, want, strict=True):
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=name)


@settings(max_examples=300, deadline=None)
@given(
    waits=st.lists(st.floats(0.0, 20000.0, allow_nan=False), min_size=1, max_size=60),
    recorded=st.lists(st.booleans(), min_size=60, max_size=60),
    q=st.floats(0.0, 1.0),
)
def test_no_percentile_outside_min_max_with_or_without_records(
    waits: list[float], recorded: list[bool], q: float
) -> None:
    """Some waits with records, the rest only in their buckets: every quantile lies within
    [min, max] of all the waits; with every wait recorded it is numpy's exactly."""
    exact = [w for w, r in zip(waits, recorded, strict=False) if r]
    rest: dict[float, list[float]] = {}
    for w, r in zip(waits, recorded, strict=False):
        if not r:
            rest.setdefault(latency.bucket_of(w), []).append(w)
    buckets = [(le, len(ws), sum(ws)) for le, ws in rest.items()]
    (value,) = latency.quantiles_of(exact, buckets, (q,))
    assert min(waits) - 1e-9 <= value <= max(waits) + 1e-9
    if not buckets:
        assert value == pytest.approx(float(np.quantile(exact, q)), rel=1e-12, abs=1e-12)
    if len(waits) == 1:
        assert value == pytest.approx(waits[0], abs=1e-9)


def test_quantile_edges() -> None:
    assert math.isnan(latency.quantile([], 0.5))
    assert latency.quantile([(math.inf, 2, 20000.0)], 0.5) == 10000.0  # open bucket: its mean
    # four waits known only by their (5, 10] bucket, summing to 30 s: spread evenly around
    # their mean 7.5 s within the bucket; the median is the mean
    assert latency.quantile([(10.0, 4, 30.0)], 0.5) == pytest.approx(7.5)
    assert latency.quantile([(30.0, 1, 15.29)], 0.99) == 15.29  # one wait: itself
    assert latency.quantiles_of([15.29], [], (0.5, 0.99)) == [15.29, 15.29]
    # records and bucketed waits mixed: never beyond the records and the buckets' means
    assert latency.quantiles_of([3.0], [(30.0, 2, 40.0)], (0.0, 1.0)) == [3.0, 20.0]
    assert latency.bucket_of(10.0) == 10.0 and latency.bucket_of(10.01) == 15.0
    with pytest.raises(ValueError):
        latency.bucket_of(-1.0)
