"""The ingest API: exactly once, bad input refused with the field named, nothing half-written."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.store.retention import prune_samples
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire

NOW = 1_790_000_000.0  # a fixed clock: 2026-09-21T14:13:20Z
TOKEN = "agent-token"


def batch(seq: int = 1, series: list[wire.Series] | None = None, **kw: object) -> wire.Batch:
    fields = dict(
        version=1,
        agent_id="agent-1",
        facility="af",
        node="n1",
        seq=seq,
        sent_at=NOW,
        series=series if series is not None else [],
        events=[],
    )
    fields.update(kw)
    return wire.Batch(**fields)  # type: ignore[arg-type]


def cpu(
    times: list[float], values: list[float], user: str = "alice", created: float | None = None
) -> wire.Series:
    return wire.Series(
        metric="user_cpu_seconds",
        unit="seconds",
        kind="counter",
        labels={"user": user, "node": "n1"},
        times=times,
        values=values,
        created=created,
    )


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path}/a.sqlite",
        facility_tokens={"af": TOKEN, "other": "x"},
        max_body_bytes=200_000,
        metrics_public=True,
    )
    return TestClient(create_app(settings, clock=lambda: NOW, with_dashboard=False))


def post(client: TestClient, body: bytes | wire.Batch, token: str = TOKEN):
    data = wire.encode(body) if isinstance(body, wire.Batch) else body
    return client.post("/api/v1/ingest", content=data, headers={"Authorization": f"Bearer {token}"})


def counts(client: TestClient) -> dict[str, int]:
    engine = client.app.state.services.engine
    with engine.connect() as conn:
        return {
            t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one()
            for t in ("sample", "usage", "applied_batch", "series", "event")
        }


def cpu_total(client: TestClient) -> float:
    engine = client.app.state.services.engine
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT COALESCE(SUM(amount), 0) FROM usage WHERE resource = 'cpu_seconds'")
        ).scalar_one()


def test_batch_applied_once_even_when_sent_twice(client: TestClient) -> None:
    b = batch(series=[cpu([NOW - 20, NOW - 10], [10.0, 25.0], created=NOW - 30)])
    first = post(client, b)
    assert first.status_code == 200
    assert first.json() == {
        "status": "applied",
        "facility": "af",
        "seq": 1,
        "samples": 2,
        "stale_samples": 0,
        "events": 0,
    }
    again = post(client, gzip.compress(wire.encode(b)))
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert cpu_total(client) == 25.0
    assert counts(client)["sample"] == 2


def test_same_samples_under_a_new_seq_count_once(client: TestClient) -> None:
    post(client, batch(1, [cpu([NOW - 20, NOW - 10], [10.0, 25.0], created=NOW - 30)]))
    r = post(client, batch(2, [cpu([NOW - 10, NOW - 5], [25.0, 30.0], created=NOW - 30)]))
    assert r.json()["samples"] == 1 and r.json()["stale_samples"] == 1
    assert cpu_total(client) == 30.0


def test_counter_without_created_starts_from_a_baseline_and_survives_a_reset(
    client: TestClient,
) -> None:
    post(client, batch(1, [cpu([NOW - 40, NOW - 30], [1000.0, 1010.0])]))
    post(client, batch(2, [cpu([NOW - 20, NOW - 10], [4.0, 9.0])]))  # process restarted
    assert cpu_total(client) == 10.0 + 4.0 + 5.0


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b'{"version": 1}', "$", "agent_id"),
        (b"not json", "$", "not valid JSON"),
        (wire.encode(batch(version=2)), "$.version", "unsupported wire version 2"),
        (
            b'{"version":1,"agent_id":"a","facility":"af","node":"n","seq":-1,"sent_at":1}',
            "$.seq",
            "Expected `int` >= 0",
        ),
        (
            b'{"version":1,"agent_id":"a","facility":"af","node":"n","seq":1,"sent_at":1,'
            b'"series":{"metric":"m"}}',
            "$.series",
            "Expected `array`",
        ),
    ],
)
def test_malformed_envelope_gets_422_naming_the_field_and_writes_nothing(
    client: TestClient, body: bytes, field: str, words: str
) -> None:
    before = counts(client)
    r = post(client, body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail["field"] == field
    assert words in detail["message"]
    assert counts(client) == before


GOOD = cpu([NOW - 20, NOW - 10], [10.0, 25.0], created=NOW - 30)  # 25 s of CPU, alice


def _other(**kw: object) -> wire.Series:
    base = {"metric": "user_cpu_seconds", "unit": "seconds", "kind": "counter",
            "labels": {"user": "bob"}, "times": [NOW - 10], "values": [1.0]}  # fmt: skip
    return wire.Series(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("bad", "field", "reason", "words"),
    [
        (_other(values=[1.0, 2.0]), "$.series[1].values", "length_mismatch", "2 values for 1"),
        (_other(times=[NOW, NOW - 1], values=[1.0, 2.0]), "$.series[1].times",
         "times_not_increasing", "strictly increase"),
        (_other(unit="ms"), "$.series[1].unit", "wrong_unit", "in 'seconds', not 'ms'"),
        (_other(times=[NOW + 3600]), "$.series[1].times", "future", "in the future"),
        (_other(values=[-1.0]), "$.series[1].values", "negative_counter", "negative"),
        (_other(labels={"user": "alice", "node": "n1"}, times=[NOW - 5], values=[30.0]),
         "$.series[1]", "repeated_series", "repeats the series of $.series[0]"),
        (_other(labels={"user": "bob", "vo": "cms"}), "$.series[1].labels.vo",
         "reserved_label", "label 'vo' of series user_cpu_seconds is reserved"),
        (_other(values=[1e308]), "$.series[1].values", "value_too_large",
         "beyond 1e+18 (AFMON_MAX_SAMPLE_VALUE)"),
        (_other(metric="user_memory_rss_bytes", unit="bytes", kind="gauge", values=[-5.0]),
         "$.series[1].values", "negative_gauge", "gauge user_memory_rss_bytes has a negative"),
    ],
)  # fmt: skip
def test_a_bad_record_is_quarantined_and_the_rest_applied(
    client: TestClient, bad: wire.Series, field: str, reason: str, words: str
) -> None:
    r = post(client, batch(1, [GOOD, bad]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "partial" and body["samples"] == 2
    [refusal] = body["refused"]
    assert (refusal["field"], refusal["reason"]) == (field, reason)
    assert words in refusal["message"]
    assert cpu_total(client) == 25.0  # the good series, exactly once
    with client.app.state.services.engine.connect() as conn:
        rows = conn.execute(text("SELECT reason, field, kind, record FROM quarantine")).all()
    assert [(r[0], r[1], r[2]) for r in rows] == [(reason, field, "series")]
    assert msgspec.json.decode(rows[0][3], type=wire.Series) == bad  # kept as sent
    again = post(client, batch(1, [GOOD, bad]))  # a retry changes nothing
    assert again.json()["status"] == "duplicate" and cpu_total(client) == 25.0
    assert counts(client)["applied_batch"] == 1
    metrics = client.get("/metrics").text
    assert f'afmon_ingest_refused_records_total{{facility="af",reason="{reason}"}} 1.0' in metrics
    assert 'afmon_ingest_batches_total{facility="af",outcome="partial"} 1.0' in metrics


def test_a_bad_event_is_quarantined_and_the_rest_applied(client: TestClient) -> None:
    ok = wire.Event(kind="session", id="s1", user="alice", start=NOW - 3600, end=NOW - 1800)
    bad = wire.Event(kind="session", id="s2", user="alice", start=NOW - 600, end=NOW - 900)
    r = post(client, batch(1, [GOOD], events=[bad, ok]))
    assert r.json()["status"] == "partial" and r.json()["events"] == 1
    assert r.json()["refused"][0]["reason"] == "ends_before_start"
    assert r.json()["refused"][0]["field"] == "$.events[0].end"
    assert counts(client)["event"] == 1
    # a session that "started" in 1970 would spread over half a million ledger hours
    epoch = wire.Event(kind="session", id="s3", user="alice", start=1.0, end=NOW - 60)
    r = post(client, batch(2, events=[epoch]))
    [refusal] = r.json()["refused"]
    assert (refusal["field"], refusal["reason"]) == ("$.events[0].start", "too_old")
    assert "before AFMON_MAX_EVENT_AGE_DAYS" in refusal["message"]
    assert counts(client)["event"] == 1


def test_a_record_that_cannot_be_read_is_quarantined_and_the_rest_applied(
    client: TestClient,
) -> None:
    """A wrong type, an unknown field or a bad name inside one record refuses that record
    only (`malformed`, kept as sent); `afmon quarantine replay` leaves it there."""
    good = msgspec.json.encode(GOOD).decode()
    bad_value = good.replace("[10.0,25.0]", '[10.0,"25"]')
    unknown = good[:-1] + ',"colour":"blue"}'
    event = f'{{"kind":"session","id":"s1","user":"alice","start":{NOW - 60},"end":"later"}}'
    ok_event = (
        f'{{"kind":"session","id":"s2","user":"alice","start":{NOW - 3600},"end":{NOW - 1800}}}'
    )
    body = (
        '{"version":1,"agent_id":"agent-1","facility":"af","node":"n1","seq":1,'
        f'"sent_at":{NOW},"series":[{bad_value},{good},{unknown}],'
        f'"events":[{event},{ok_event}]}}'
    ).encode()
    r = post(client, body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["status"], answer["samples"], answer["events"]) == ("partial", 2, 1)
    got = [(x["field"], x["reason"]) for x in answer["refused"]]
    assert got == [
        ("$.series[0].values[1]", "malformed"),
        ("$.series[2]", "malformed"),
        ("$.events[0].end", "malformed"),
    ]
    assert "Expected `float`, got `str`" in answer["refused"][0]["message"]
    assert "colour" in answer["refused"][1]["message"]
    assert cpu_total(client) == 25.0
    with client.app.state.services.engine.connect() as conn:
        rows = conn.execute(text("SELECT reason, kind, record FROM quarantine ORDER BY id")).all()
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("malformed", "series", bad_value),
        ("malformed", "series", unknown),
        ("malformed", "event", event),
    ]
    metrics = client.get("/metrics").text
    assert 'afmon_ingest_refused_records_total{facility="af",reason="malformed"} 3.0' in metrics
    env = {**os.environ, "AFMON_DATABASE_URL": str(client.app.state.services.engine.url)}
    done = subprocess.run(
        [sys.executable, "-m", "afmon.aggregator.cli", "quarantine", "replay"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "malformed" in done.stdout + done.stderr
    assert cpu_total(client) == 25.0


def _node_series(metric: str, unit: str, value: float, node: str = "n1") -> wire.Series:
    return wire.Series(metric=metric, unit=unit, kind="gauge", labels={"node": node},
                       times=[NOW - 30], values=[value])  # fmt: skip


def _user(metric: str, user: str, times: list[float], values: list[float], **kw: object):
    unit, kind = ("seconds", "counter") if metric == "user_cpu_seconds" else ("bytes", "gauge")
    return wire.Series(metric=metric, unit=unit, kind=kind, labels={"user": user, "node": "n1"},
                       times=times, values=values, **kw)  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize("bad", ["al\nice", "alice\x1b[31m", "tab\there", "del\x7f"])
def test_a_control_character_in_a_label_refuses_its_record(client: TestClient, bad: str) -> None:
    """A newline or escape in a label would garble logs, exports and /metrics."""
    r = post(client, batch(1, [GOOD, _other(labels={"user": bad, "node": "n1"})]))
    assert r.status_code == 200 and r.json()["status"] == "partial", r.text
    [refusal] = r.json()["refused"]
    assert refusal["reason"] == "malformed"
    assert refusal["field"] == "$.series[1].labels[...]"  # msgspec names no key
    assert cpu_total(client) == 25.0


def test_more_than_the_node_could_do_is_refused_beyond_capacity(client: TestClient) -> None:
    """4 cores and 8 GB: CPU time growing faster than 4 cores (x 1.5 slack, +1 s), a counter
    reset to more than 4 cores could have used since the sample before, memory beyond
    8 GB x 1.5 are refused; within capacity, and on a node that reported none, applied."""
    capacity = [
        _node_series("node_cpu_cores", "cores", 4.0),
        _node_series("node_memory_bytes", "bytes", 8e9),
    ]
    r = post(client, batch(1, [*capacity, GOOD]))
    assert r.json()["status"] == "applied", r.text
    r = post(client, batch(2, [
        _user("user_cpu_seconds", "alice", [NOW - 5, NOW], [40.0, 70.0]),  # 4 cores x 6 s x 1.5
        _user("user_cpu_seconds", "bob", [NOW - 20, NOW - 10], [0.0, 1e6], created=NOW - 30),
        _user("user_cpu_seconds", "carol", [NOW - 20, NOW - 10, NOW], [50.0, 60.0, 5.0]),
        _user("user_cpu_seconds", "dave", [NOW - 20, NOW - 10, NOW], [50.0, 60.0, 1e5]),
        _user("user_memory_rss_bytes", "bob", [NOW - 10, NOW], [1e9, 1.3e10]),
        _user("user_memory_rss_bytes", "carol", [NOW - 10, NOW], [1e9, 1.1e10]),
    ]))  # fmt: skip
    answer = r.json()
    assert answer["status"] == "partial", answer
    got = {(x["field"], x["reason"]) for x in answer["refused"]}
    assert got == {
        ("$.series[1].values[1]", "beyond_capacity"),  # 1e6 s in 10 s
        ("$.series[3].values[2]", "beyond_capacity"),  # a "reset" to 1e5 s in 10 s
        ("$.series[4].values[1]", "beyond_capacity"),  # 13 GB
    }
    bob = next(x for x in answer["refused"] if x["field"] == "$.series[1].values[1]")
    assert "grew by 1e+06 s in 10 s: more than node n1's 4 cores allow" in bob["message"]
    assert cpu_total(client) == 25.0 + 45.0 + 15.0  # alice before and now, carol (dave refused)
    # a node that reported no capacity is not judged
    other = wire.Series(metric="user_cpu_seconds", unit="seconds", kind="counter",
                        labels={"user": "erin", "node": "n2"}, times=[NOW - 20, NOW - 10],
                        values=[0.0, 1e6], created=NOW - 30)  # fmt: skip
    assert post(client, batch(3, [other])).json()["status"] == "applied"


def test_an_event_longer_than_the_bound_is_refused_too_long(client: TestClient) -> None:
    long = wire.Event(kind="session", id="s1", user="alice", start=NOW - 100 * 86400, end=NOW)
    ok = wire.Event(kind="session", id="s2", user="alice", start=NOW - 80 * 86400, end=NOW)
    r = post(client, batch(1, events=[long, ok]))
    [refusal] = r.json()["refused"]
    assert (refusal["field"], refusal["reason"]) == ("$.events[0].end", "too_long")
    assert (
        "lasted 100.0 days, longer than AFMON_MAX_EVENT_DURATION_DAYS (90)" in (refusal["message"])
    )
    assert r.json()["events"] == 1


def test_envelope_refusal_leaves_earlier_data_and_seq_usable(client: TestClient) -> None:
    post(client, batch(1, [cpu([NOW - 20, NOW - 10], [1.0, 2.0], created=NOW - 30)]))
    bad = post(client, batch(2, [cpu([NOW - 5], [3.0])], version=2))
    assert bad.status_code == 422
    good = post(client, batch(2, [cpu([NOW - 5], [3.0])]))
    assert good.json()["status"] == "applied"  # the refused batch did not consume seq 2
    assert cpu_total(client) == 3.0


def test_oversize_body_is_413(client: TestClient) -> None:
    r = post(client, b"{" + b" " * 300_000 + b"}")
    assert r.status_code == 413
    assert "larger than 200000 bytes" in r.json()["detail"]["message"]
    bomb = post(client, gzip.compress(b"x" * 3_000_000))  # small on the wire, huge unpacked
    assert bomb.status_code == 413
    assert "decompressed body is larger than 1600000 bytes" in bomb.json()["detail"]["message"]


def test_unknown_token_is_401_and_the_facility_is_the_credentials(client: TestClient) -> None:
    assert post(client, batch(), token="nope").status_code == 401
    assert counts(client)["applied_batch"] == 0
    # stamped "af" by an agent whose token is other's: the data is other's, never af's
    r = post(client, batch(1, [cpu([NOW - 20, NOW - 10], [1.0, 3.0])]), token="x")
    assert r.status_code == 200
    assert r.json()["facility"] == "other" and r.json()["stamped_facility"] == "af"
    with client.app.state.services.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT DISTINCT facility FROM usage").fetchall() == [
            ("other",)
        ]
        assert conn.exec_driver_sql("SELECT facility FROM series").fetchall() == [("other",)]


def test_events_are_accounted_once_when_they_end(client: TestClient) -> None:
    start = NOW - 5400  # 1.5 h before NOW
    open_ = wire.Event(kind="session", id="s1", user="alice", start=start)
    post(client, batch(1, events=[open_]))
    assert counts(client)["usage"] == 0
    ended = wire.Event(kind="session", id="s1", user="alice", start=start, end=NOW - 1800)
    post(client, batch(2, events=[ended]))
    post(client, batch(3, events=[ended]))  # repeated by a restarted agent
    engine = client.app.state.services.engine
    with engine.connect() as conn:
        rows = dict(
            conn.execute(text("SELECT resource, SUM(amount) FROM usage GROUP BY resource")).all()
        )
    assert rows == {"session_seconds": 3600.0, "sessions": 1.0}


def test_metrics_count_outcomes(client: TestClient) -> None:
    post(client, batch(1, [cpu([NOW - 10], [1.0])]))
    post(client, batch(1, [cpu([NOW - 10], [1.0])]))
    post(client, b"junk")
    body = client.get("/metrics").text
    assert 'afmon_ingest_batches_total{facility="af",outcome="applied"} 1.0' in body
    assert 'afmon_ingest_batches_total{facility="af",outcome="duplicate"} 1.0' in body
    assert 'afmon_ingest_batches_total{facility="af",outcome="rejected"} 1.0' in body
    assert 'afmon_ingest_samples_total{facility="af"} 1.0' in body


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["database"] == "sqlite"


def test_retention_prunes_raw_samples_and_keeps_the_ledger(client: TestClient) -> None:
    post(
        client,
        batch(1, [cpu([NOW - 7200, NOW - 3600, NOW - 10], [1.0, 2.0, 3.0], created=NOW - 9000)]),
    )
    engine = client.app.state.services.engine
    assert prune_samples(engine, older_than=NOW - 3600) == 1  # strictly older only
    assert counts(client)["sample"] == 2
    assert cpu_total(client) == 3.0
