"""InfluxDB line protocol (Telegraf's outputs.influxdb_v2) into a real afmon server."""
# ruff: noqa: E501  (a recorded Telegraf body keeps its long lines)

from __future__ import annotations

import gzip
import sqlite3
from pathlib import Path

import httpx
import pytest

from afmon.aggregator.ingest.lineprotocol import LineError, parse_line, to_batch

T0 = 1767225600  # 2026-01-01T00:00:00Z
NS = 1_000_000_000
ALICE = "https://atlas-auth.cern.ch/|alice-sub"

# What Telegraf 1.3x sends with inputs.mem, inputs.system, inputs.cpu (totalcpu),
# inputs.procstat (user = "alice", two processes), an exec input in afmon's own format,
# and fields nothing maps (ignored): recorded, two collection intervals 10 s apart.
TELEGRAF_BODY = f"""\
mem,host=wn01 active=1893462016i,available=14232588288i,total=16643522560i,used=2410934272i {T0 * NS}
system,host=wn01 load1=0.52,n_cpus=8i,n_users=2i {T0 * NS}
cpu,cpu=cpu-total,host=wn01 usage_idle=75.5,usage_user=20.1,usage_system=4.4 {T0 * NS}
cpu,cpu=cpu0,host=wn01 usage_idle=10,usage_user=80,usage_system=10 {T0 * NS}
procstat,host=wn01,pattern=.,process_name=python3,user=alice cpu_time_user=12.5,memory_rss=1000000i,pid=4242i {T0 * NS}
procstat,host=wn01,pattern=.,process_name=bash,user=alice cpu_time_user=0.1,memory_rss=3000000i,pid=4243i {T0 * NS}
afmon,host=wn01,user=alice user_cpu_seconds=100 {T0 * NS}
mem,host=wn01 active=1893462016i,available=14232588288i,total=16643522560i,used=2410934272i {(T0 + 10) * NS}
procstat,host=wn01,pattern=.,process_name=python3,user=alice cpu_time_user=22.5,memory_rss=2000000i,pid=4242i {(T0 + 10) * NS}
procstat,host=wn01,pattern=.,process_name=bash,user=alice cpu_time_user=0.1,memory_rss=3000000i,pid=4243i {(T0 + 10) * NS}
afmon,host=wn01,user=alice,unit=seconds user_cpu_seconds=130 {(T0 + 10) * NS}
"""

IDENTITY = """\
[vos.atlas]
issuer = "https://atlas-auth.cern.ch/"

[[members]]
vo = "atlas"
subject = "alice-sub"
display_name = "Alice"
groups = ["/atlas", "/atlas/higgs"]
accounts = [{ facility = "test-af", local = "alice" }]
"""


def ledger(db: Path) -> dict[tuple[str, str], float]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT member_id, resource, SUM(amount) FROM usage GROUP BY member_id, resource"
        ).fetchall()
    return {(m, r): a for m, r, a in rows}


def test_parse_line_types_and_escapes() -> None:
    p = parse_line(
        r'my\ meas,tag\,a=x\ y,t2=v\=1 f1=1.5,f2=3i,f3="a \"q\", b",f4=t 1700000000', 1.0
    )
    assert p.measurement == "my meas"
    assert p.tags == {"tag,a": "x y", "t2": "v=1"}
    assert p.fields == {"f1": 1.5, "f2": 3, "f3": 'a "q", b', "f4": True}
    assert p.time == 1700000000.0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("afmon,host=n1,user=a user_cpu_seconds=1 1\nafmon,host=n1 broken", "line 2: bad field"),
        ("afmon,host=n1,user=a user_cpu_seconds=x 1", "line 1: field 'user_cpu_seconds'"),
        ("afmon,host=n1 user_cpu_seconds=1 1", "line 1: user_cpu_seconds needs a `user` tag"),
        ("afmon,host=n1,user=a,unit=ms user_cpu_seconds=1 1", "is in 'seconds', not 'ms'"),
        ("\n\nafmon,host=n1,user=a no_such_metric=1 1", "line 3: 'no_such_metric' is not"),
        ("afmon,host=n1,user=a user_cpu_seconds=-1 1", "line 1: counter user_cpu_seconds"),
        (
            "afmon,host=n1,user=a user_cpu_seconds=1 5\nafmon,host=n1,user=a user_cpu_seconds=2 5",
            "line 2: repeats user_cpu_seconds",
        ),
    ],
)
def test_bad_lines_are_named(body: str, message: str) -> None:
    with pytest.raises(LineError) as exc:
        to_batch(body, precision="s", facility="f", agent_id="a", seq=1, now=10.0)
    assert message in str(exc.value)


def test_mapping_of_a_telegraf_body() -> None:
    c = to_batch(TELEGRAF_BODY, precision="ns", facility="f", agent_id="a", seq=1, now=T0 + 60)
    by_metric = {s.metric: s for s in c.batch.series}
    assert by_metric["user_memory_rss_bytes"].labels == {"user": "alice", "node": "wn01"}
    assert by_metric["user_memory_rss_bytes"].values == [4_000_000.0, 5_000_000.0]
    assert by_metric["node_memory_bytes"].values == [16643522560.0, 16643522560.0]
    assert by_metric["node_cpu_cores"].values == [8.0]
    assert by_metric["node_cpu_busy_ratio"].values == [pytest.approx(0.245)]
    assert by_metric["user_cpu_seconds"].values == [100.0, 130.0]
    assert by_metric["user_cpu_seconds"].times == [float(T0), float(T0 + 10)]
    # mem: 3 unmapped fields x 2; system: 2; cpu-total: 2; cpu0: 3; procstat: 2 x 4
    assert c.ignored_fields == 6 + 2 + 2 + 3 + 8


def test_recorded_telegraf_body_lands_in_the_ledger(server_factory, tmp_path: Path) -> None:
    identity = tmp_path / "identity.toml"
    identity.write_text(IDENTITY)
    server = server_factory(identity_file=identity, dashboard="false")
    body = gzip.compress(TELEGRAF_BODY.encode())
    headers = {
        "Authorization": f"Token {server.token}",
        "Content-Encoding": "gzip",
        "Content-Type": "text/plain; charset=utf-8",
    }
    params = {"org": "my-org", "bucket": "telegraf"}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        r = client.post("/api/v2/write", params=params, content=body, headers=headers)
        assert r.status_code == 204, r.text
        assert r.headers["X-Afmon-Status"] == "applied"
        assert r.headers["X-Afmon-Samples"] == "8"
        # Telegraf retries the same body after a timeout: applied once
        r = client.post("/api/v2/write", params=params, content=body, headers=headers)
        assert r.status_code == 204 and r.headers["X-Afmon-Status"] == "duplicate"
        # a bad line: 400 naming it, nothing of the body applied
        bad = gzip.compress(TELEGRAF_BODY.replace("usage_idle=75.5", "usage_idle=hi").encode())
        r = client.post("/api/v2/write", params=params, content=bad, headers=headers)
        assert r.status_code == 400
        assert r.json()["line"] == 3 and "line 3: field 'usage_idle'" in r.json()["message"]
        r = client.post(
            "/api/v2/write", content=body, headers={**headers, "Authorization": "Token wrong"}
        )
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    usage = ledger(tmp_path / "server.sqlite")
    assert usage[(ALICE, "cpu_seconds")] == 30.0  # 130 - 100: the first sample is a baseline
    assert usage[(ALICE, "cpu_hs23_seconds")] == 300.0  # x the default 10 HS23 per core
    assert usage[(ALICE, "memory_byte_seconds")] == 4_000_000.0 * 10  # summed RSS x 10 s
    assert {m for m, _ in usage} == {ALICE}
