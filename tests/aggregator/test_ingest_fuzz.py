"""A fuzzer over the three ingest bodies (the agent's wire batch, line protocol, OTLP JSON):
whatever a producer sends, the answer is never a 5xx, the server keeps answering, and what
was stored before does not change. Hypothesis, bounded examples, real app on SQLite."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire

NOW = 1_767_225_600.0 + 10 * 86400  # 2026-01-11 00:00 UTC
TOKEN = "a-token-for-the-ingest-fuzzer-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
IDENTITY = """
[vos.atlas]
issuer = "https://atlas.example/"
[[members]]
vo = "atlas"
subject = "sentinel"
display_name = "Sentinel"
accounts = [{ facility = "af", local = "sentinel" }]
"""
SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "identity.toml").write_text(IDENTITY)
    s = ServerSettings(
        database_url=f"sqlite:///{tmp}/fuzz.sqlite",
        facility_tokens={"af": TOKEN},
        identity_file=tmp / "identity.toml",
        ingest_rate_per_agent=1e6,
        metrics_public=True,
    )
    c = TestClient(create_app(s, clock=lambda: NOW, with_dashboard=False))
    sentinel = wire.Series(metric="user_cpu_seconds", unit="seconds", kind="counter",
                           labels={"user": "sentinel", "node": "n0"},
                           times=[NOW - 7200, NOW - 7100], values=[0.0, 100.0],
                           created=NOW - 7200)  # fmt: skip
    batch = wire.Batch(version=1, agent_id="sentinel-agent", facility="af", node="n0", seq=1,
                       sent_at=NOW, series=[sentinel])  # fmt: skip
    assert c.post("/api/v1/ingest", content=wire.encode(batch), headers=AUTH).status_code == 200
    return c


def _sentinel(client: TestClient) -> list[tuple[Any, ...]]:
    with client.app.state.services.engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT resource, hour, amount FROM usage WHERE member_id LIKE '%|sentinel' "
                "ORDER BY resource, hour"
            )  # fmt: skip
        ).all()


# Mostly what a producer means to send, sometimes what it gets wrong: control characters,
# NUL, long strings, non-ASCII, numbers out of every range.
WILD_TEXT = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=31), max_size=4),
    st.sampled_from(["", "a\x00b", "x" * 300, "ü→𝔘", "$.x", "9bad"]),
)


def mostly(good: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` nine times in ten, `wild` else (so most records reach the record rules)."""
    return st.integers(0, 9).flatmap(lambda k: wild if k == 9 else good)


NAME = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)
TEXT = mostly(NAME, WILD_TEXT)
WILD_NUMBER = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1e308, -1e308, 2**63, 2**64, NOW + 1e6, 1e-300, 1.0]),
)
TIME = mostly(st.floats(NOW - 3 * 86400, NOW + 60), WILD_NUMBER)
VALUE = mostly(st.floats(0, 1e6), WILD_NUMBER)
NUMBER = st.one_of(VALUE, TIME)
USERS = mostly(
    st.sampled_from(["alice", "bob", "carol"]), st.sampled_from(["", "x" * 300, "a\x00"])
)
METRICS = st.sampled_from(
    ["user_cpu_seconds", "user_memory_rss_bytes", "node_cpu_cores", "gpu_utilization_ratio",
     "user_cpu_seconds", "agent_spool_batches", "m", "", "9bad", "x" * 200]
)  # fmt: skip


@st.composite
def series(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(0, 4))
    labels = {"user": draw(USERS), "node": draw(st.sampled_from(["n1", "n2", "n1"]))}
    extra = st.dictionaries(st.one_of(st.sampled_from(["gpu", "vo", "x"]), TEXT), TEXT,
                            max_size=draw(st.sampled_from([0, 0, 2, 20])))  # fmt: skip
    labels.update(draw(extra))
    times = sorted(draw(st.lists(TIME, min_size=n, max_size=n, unique=True)))
    if draw(st.booleans()):
        times = draw(st.permutations(times))
    return {
        "metric": draw(METRICS),
        "unit": draw(st.sampled_from(["seconds", "bytes", "cores", "ratio", "1", "ms"])),
        "kind": draw(st.sampled_from(["counter", "gauge", "counter"])),
        "labels": labels,
        "times": times,
        "values": draw(st.lists(VALUE, min_size=n, max_size=draw(st.sampled_from([n, n, n + 1])))),
        **({"created": draw(TIME)} if draw(st.booleans()) else {}),
    }


@st.composite
def event(draw: st.DrawFn) -> dict[str, Any]:
    start = draw(TIME)
    return {
        "kind": draw(st.sampled_from(["session", "batch_job", "spawn", "dask_scale", "session"])),
        "id": draw(TEXT),
        "user": draw(USERS),
        "start": start,
        "end": draw(st.one_of(st.none(), st.floats(0, 7200).map(lambda d: start + d), TIME)),
        "attrs": draw(st.dictionaries(st.sampled_from(["cores", "cpu_seconds", "outcome", "x"]),
                                      st.one_of(VALUE, TEXT, st.booleans()), max_size=4)),
    }  # fmt: skip


SEQ = st.integers(1, 10**9)


@st.composite
def batch_body(draw: st.DrawFn) -> bytes:
    body: dict[str, Any] = {
        "version": 1,
        "agent_id": draw(TEXT),
        "facility": draw(st.sampled_from(["af", "af", "other"])),
        "node": draw(st.sampled_from(["n1", "n2", "n3"])),
        "seq": draw(mostly(SEQ, WILD_NUMBER)),
        "sent_at": NOW,
        "series": draw(st.lists(series(), max_size=4)),
        "events": draw(st.lists(event(), max_size=3)),
    }
    mutation = draw(st.sampled_from(["none"] * 6 + ["version", "extra", "missing", "nan"]))
    if mutation == "version":
        body["version"] = draw(st.sampled_from([0, 2, "1"]))
    elif mutation == "extra":
        body[draw(TEXT)] = draw(NUMBER)
    elif mutation == "missing":
        body.pop(draw(st.sampled_from(sorted(body))))
    raw = json.dumps(body, allow_nan=True)
    if mutation == "nan":  # NaN and Infinity where JSON has none
        raw = raw.replace("1e+308", "Infinity", 1).replace(", 0.0", ", NaN", 1)
    return raw.encode()


def _ok(status: int) -> bool:
    return status < 500


@SETTINGS
@given(body=batch_body())
def test_agent_batches_never_get_a_5xx(client: TestClient, body: bytes) -> None:
    before = _sentinel(client)
    r = client.post("/api/v1/ingest", content=body, headers=AUTH)
    assert _ok(r.status_code), (r.status_code, r.text[:300], body[:300])
    assert _sentinel(client) == before


@st.composite
def line_protocol(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        measurement = draw(st.sampled_from(["afmon", "procstat", "mem", "cpu", "x y", ""]))
        tags = draw(st.dictionaries(st.sampled_from(["host", "user", "node", "unit", "vo", "g"]),
                                    TEXT, max_size=4))  # fmt: skip
        fields = draw(st.dictionaries(st.one_of(METRICS, TEXT), NUMBER, min_size=1, max_size=3))
        tag_text = "".join(f",{k}={v}" for k, v in tags.items())
        field_text = ",".join(f"{k}={v!r}" for k, v in fields.items())
        ts = draw(st.one_of(st.just(""), NUMBER.map(lambda x: f" {x}")))
        lines.append(f"{measurement}{tag_text} {field_text}{ts}")
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@SETTINGS
@given(body=line_protocol(), precision=st.sampled_from(["ns", "s", "ms", "h", ""]))
def test_line_protocol_never_gets_a_5xx(client: TestClient, body: bytes, precision: str) -> None:
    before = _sentinel(client)
    r = client.post(f"/api/v2/write?precision={precision}", content=body, headers=AUTH)
    assert _ok(r.status_code), (r.status_code, r.text[:300], body[:300])
    assert _sentinel(client) == before


@st.composite
def otlp_json(draw: st.DrawFn) -> bytes:
    def attrs() -> list[dict[str, Any]]:
        return [
            {"key": k, "value": {"stringValue": v}}
            for k, v in draw(
                st.dictionaries(st.sampled_from(["user", "host.name", "vo", "x"]), TEXT, max_size=3)
            ).items()  # fmt: skip
        ]

    def point() -> dict[str, Any]:
        p: dict[str, Any] = {"attributes": attrs(), "timeUnixNano": str(draw(NUMBER))}
        p[draw(st.sampled_from(["asDouble", "asInt"]))] = draw(NUMBER)
        if draw(st.booleans()):
            p["startTimeUnixNano"] = draw(st.one_of(NUMBER, TEXT))
        return p

    shape = draw(st.sampled_from(["sum", "gauge", "histogram"]))
    metric = {
        "name": draw(METRICS),
        "unit": draw(st.sampled_from(["s", "By", "{cpu}", "1", ""])),
        shape: {"dataPoints": [point() for _ in range(draw(st.integers(0, 3)))],
                "aggregationTemporality": draw(st.sampled_from([0, 1, 2, 7])),
                "isMonotonic": draw(st.booleans())},
    }  # fmt: skip
    request = {"resourceMetrics": [{"resource": {"attributes": attrs()},
                                    "scopeMetrics": [{"metrics": [metric]}]}]}  # fmt: skip
    return json.dumps(request, allow_nan=True).encode()


@SETTINGS
@given(body=otlp_json())
def test_otlp_never_gets_a_5xx(client: TestClient, body: bytes) -> None:
    before = _sentinel(client)
    r = client.post("/v1/metrics", content=body,
                    headers={**AUTH, "Content-Type": "application/json"})  # fmt: skip
    assert _ok(r.status_code), (r.status_code, r.text[:300], body[:300])
    assert _sentinel(client) == before


def test_the_server_still_answers_and_the_ledger_is_finite(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    with client.app.state.services.engine.connect() as conn:
        amounts = [a for (a,) in conn.execute(text("SELECT amount FROM usage")).all()]
    assert amounts and all(math.isfinite(a) for a in amounts)
    assert _sentinel(client) == [
        ("cpu_hs23_seconds", int(NOW - 7200), 1000.0),
        ("cpu_seconds", int(NOW - 7200), 100.0),
    ]
