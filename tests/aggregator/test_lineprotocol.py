"""InfluxDB line protocol (Telegraf's outputs.influxdb_v2) into a real afmon server."""
# ruff: noqa: E501  (a recorded Telegraf body keeps its long lines)

from __future__ import annotations

import gzip
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.ingest.lineprotocol import LineError, parse_line, to_batch
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire

T0 = 1767225600  # 2026-01-01T00:00:00Z
NS = 1_000_000_000
ALICE = "https://atlas-auth.cern.ch/|alice-sub"
GOOD_AT_T0 = f"afmon,host=wn01,user=alice user_cpu_seconds=100 {T0}"  # precision s

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


GOOD = "afmon,host=n1,user=a user_cpu_seconds=1 1"


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("afmon,host=n1 broken", 2, "line 2: bad field"),
        ("afmon,host=n1,user=a user_cpu_seconds=x 1", 2, "line 2: field 'user_cpu_seconds'"),
        ("afmon,host=n1 user_cpu_seconds=1 1", 2, "line 2: user_cpu_seconds needs a `user` tag"),
        ("afmon,host=n1,user=a,unit=ms user_cpu_seconds=1 1", 2, "is in 'seconds', not 'ms'"),
        ("\n\nafmon,host=n1,user=a no_such_metric=1 1", 4, "line 4: 'no_such_metric' is not"),
        ("afmon,host=n1,user=a user_cpu_seconds=-1 1", 2, "line 2: counter user_cpu_seconds"),
        ("afmon,host=n1,user=a user_cpu_seconds=1 -5", 2, "line 2: timestamp before 1970"),
        ("afmon,host=n1,user=a user_cpu_seconds=1 " + "9" * 400, 2, "timestamp out of range"),
        ("afmon,host=n1,user=a user_cpu_seconds=" + "9" * 400 + "i 1", 2, "is out of range"),
        (f"afmon,host={'h' * 257},user=a user_cpu_seconds=1 1", 2, "node is longer than 256"),
        ("afmon,host=n\x001,user=a user_cpu_seconds=1 1", 2, "line 2: node has a control character"),
        # validated as a whole: two good fields before the bad third add nothing
        ("afmon,host=n1,user=b user_cpu_seconds=1,user_processes=2,no_such=3 1", 2, "no_such"),
    ],
)
def test_bad_lines_are_named(body: str, line: int, message: str) -> None:
    c = to_batch(f"{GOOD}\n{body}", precision="s", facility="f", agent_id="a", seq=1, now=10.0)
    (bad,) = c.bad_lines
    assert (bad.kind, bad.index, bad.field, bad.reason) == (
        "line",
        line,
        f"line {line}",
        "malformed",
    )
    assert message in bad.message and bad.message.startswith(f"line {line}: ")
    text = body.strip().replace("\x00", "\ufffd")  # PostgreSQL keeps no NUL in text
    assert bad.raw == text[: wire.MAX_RAW_KEPT]
    # the good line of the same body is in the batch, nothing of the bad one
    assert [(s.metric, s.labels, s.times, s.values) for s in c.batch.series] == [
        ("user_cpu_seconds", {"node": "n1", "user": "a"}, [1.0], [1.0])
    ]
    assert c.batch.node == "n1" and (c.good_lines, c.ignored_fields) == (1, 0)


def test_a_bad_line_keeps_at_most_max_raw_kept_characters() -> None:
    long = "afmon,host=n1,user=a user_cpu_seconds=1," + "f=1," * wire.MAX_RAW_KEPT + "g=1 1"
    c = to_batch(long, precision="s", facility="f", agent_id="a", seq=1, now=10.0)
    (bad,) = c.bad_lines
    assert bad.raw == long[: wire.MAX_RAW_KEPT] and len(bad.message) < 400
    assert not c.batch.series and c.batch.node == "n1"  # of the bad line: its agent row
    c = to_batch("a b c d", precision="s", facility="f", agent_id="a", seq=1, now=10.0)
    assert not c.batch.series and c.batch.node == "line-protocol"  # no node to be read


def test_a_bad_precision_refuses_the_whole_body() -> None:
    with pytest.raises(LineError) as exc:
        to_batch(GOOD, precision="h", facility="f", agent_id="a", seq=1, now=10.0)
    assert exc.value.line == 0 and "precision must be one of" in str(exc.value)


def test_a_repeated_point_the_last_one_wins_summed_rows_add_up() -> None:
    body = """\
afmon,host=n1,user=a user_cpu_seconds=1 5
afmon,host=n1,user=a user_cpu_seconds=2 5
afmon,node=n1,host=other,user=a user_cpu_seconds=3 5
procstat,host=n1,user=a,process_name=x memory_rss=10i 5
procstat,host=n1,user=a,process_name=y memory_rss=20i 5
procstat,host=n1,user=a,process_name=x memory_rss=10i,pid=x 5
afmon,host=n1,user=a user_cpu_seconds=4 6
"""
    c = to_batch(body, precision="s", facility="f", agent_id="a", seq=1, now=10.0)
    by_metric = {s.metric: s for s in c.batch.series}
    # the third line is the same afmon series (node from `node`, not `host`): it wins
    assert by_metric["user_cpu_seconds"].times == [5.0, 6.0]
    assert by_metric["user_cpu_seconds"].values == [3.0, 4.0]
    # procstat RSS sums over processes; the bad sixth line adds nothing
    assert by_metric["user_memory_rss_bytes"].values == [30.0]
    assert [b.index for b in c.bad_lines] == [6]


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


def quarantined(db: Path) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT kind, reason, field, record FROM quarantine ORDER BY id"
        ).fetchall()


def refused_malformed(metrics: str) -> float:
    m = re.search(
        r'afmon_ingest_refused_records_total\{[^}]*reason="malformed"[^}]*\} (\S+)', metrics
    )
    return float(m.group(1)) if m else 0.0


# line 6 of TELEGRAF_BODY, broken in a field nothing maps: the whole line is refused, so the
# bash process's RSS at T0 is not summed into alice's (3 MB less for 10 s)
GOOD_LINE_6 = "cpu_time_user=0.1,memory_rss=3000000i,pid=4243i"
BAD_LINE_6 = "cpu_time_user=0.1,memory_rss=3000000i,pid=4243x"


def test_recorded_telegraf_body_lands_in_the_ledger(server_factory, tmp_path: Path) -> None:
    identity = tmp_path / "identity.toml"
    identity.write_text(IDENTITY)
    server = server_factory(identity_file=identity, dashboard="false", metrics_public="true")
    lines = TELEGRAF_BODY.splitlines()
    bad_line = lines[5].replace(GOOD_LINE_6, BAD_LINE_6)
    assert bad_line != lines[5] and f"{T0 * NS}" in bad_line
    body = gzip.compress("\n".join([*lines[:5], bad_line, *lines[6:]]).encode())
    headers = {
        "Authorization": f"Token {server.token}",
        "Content-Encoding": "gzip",
        "Content-Type": "text/plain; charset=utf-8",
    }
    params = {"org": "my-org", "bucket": "telegraf"}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        # one bad line: refused on its own (quarantined), every other line applied
        r = client.post("/api/v2/write", params=params, content=body, headers=headers)
        assert r.status_code == 204, r.text
        assert r.headers["X-Afmon-Status"] == "partial"
        assert r.headers["X-Afmon-Samples"] == "8"
        assert r.headers["X-Afmon-Refused"] == "1"
        assert r.headers["X-Afmon-Refused-Reason"] == "malformed: line 6"
        assert r.headers["X-Afmon-Refused-Lines"] == "1"
        # Telegraf retries the same body after a timeout: applied (and quarantined) once
        r = client.post("/api/v2/write", params=params, content=body, headers=headers)
        assert r.status_code == 204 and r.headers["X-Afmon-Status"] == "duplicate"
        assert r.headers["X-Afmon-Refused-Lines"] == "1" and "X-Afmon-Refused" not in r.headers
        # no good line: nothing written, 400 naming the first bad line (each one quarantined)
        only_bad = (
            f"cpu,cpu=cpu-total,host=wn01 usage_idle=hi {T0 * NS}\n"
            "# a comment\n"
            f"afmon,host=wn01 user_cpu_seconds=5 {T0 * NS}\n"
        )
        r = client.post(
            "/api/v2/write",
            params=params,
            content=gzip.compress(only_bad.encode()),
            headers=headers,
        )
        assert r.status_code == 400, r.text
        answer = r.json()
        assert answer["code"] == "invalid" and answer["line"] == 1, answer
        assert answer["refused_lines"] == 2
        assert answer["message"].startswith("line 1: field 'usage_idle'")
        # a good line that maps to nothing and a bad one: partial, the bad line quarantined
        unmapped = f"disk,host=wn01 free=1i {T0 * NS}\nmem,host=wn01 total=-- {T0 * NS}"
        plain = {**headers, "Content-Encoding": "identity"}
        r = client.post("/api/v2/write", params=params, content=unmapped, headers=plain)
        assert r.status_code == 204 and r.headers["X-Afmon-Status"] == "partial", r.text
        assert r.headers["X-Afmon-Samples"] == "0" and r.headers["X-Afmon-Refused-Lines"] == "1"
        assert r.headers["X-Afmon-Ignored-Fields"] == "1"
        # nothing afmon maps, or nothing at all: empty, as before
        for empty in ("", "# only a comment\n\n", f"disk,host=wn01 free=1i {T0 * NS}"):
            r = client.post("/api/v2/write", params=params, content=empty, headers=plain)
            assert r.status_code == 204 and r.headers["X-Afmon-Status"] == "empty", r.text
        r = client.post(
            "/api/v2/write", content=body, headers={**headers, "Authorization": "Token wrong"}
        )
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert refused_malformed(client.get("/metrics").text) == 4
    usage = ledger(tmp_path / "server.sqlite")
    assert usage == {
        (ALICE, "cpu_seconds"): 30.0,  # 130 - 100: the first sample is a baseline
        (ALICE, "cpu_hs23_seconds"): 300.0,  # x the default 10 HS23 per core
        (ALICE, "memory_byte_seconds"): 1_000_000.0 * 10,  # python3's RSS only (line 6 refused)
    }
    assert quarantined(tmp_path / "server.sqlite") == [
        ("line", "malformed", "line 6", bad_line),
        ("line", "malformed", "line 1", only_bad.splitlines()[0]),
        ("line", "malformed", "line 3", only_bad.splitlines()[2]),
        ("line", "malformed", "line 2", unmapped.splitlines()[1]),
    ]


def test_a_quarantined_line_is_never_replayed(database_url: str) -> None:
    settings = ServerSettings(
        database_url=database_url,
        facility_tokens={"af": "a-token-of-the-line-protocol-replay-test"},
        metrics_public=True,
        ingest_rate_per_agent=1000.0,
    )
    client = TestClient(create_app(settings, clock=lambda: T0 + 60, with_dashboard=False))
    auth = {"Authorization": "Token a-token-of-the-line-protocol-replay-test"}
    body = f"{GOOD_AT_T0}\nafmon,host=wn01,user=alice user_cpu_seconds=oops {T0}\n"
    r = client.post("/api/v2/write?precision=s", content=body, headers=auth)
    assert r.status_code == 204 and r.headers["x-afmon-status"] == "partial", r.text
    assert r.headers["x-afmon-refused-lines"] == "1" and r.headers["x-afmon-samples"] == "1"
    # every line bad: applied all the same (an empty batch), so its lines are quarantined
    r = client.post(
        "/api/v2/write?precision=s", content="a b c d\nmem,host=wn01 total=x", headers=auth
    )
    assert r.status_code == 400 and r.json()["refused_lines"] == 2, r.text
    assert refused_malformed(client.get("/metrics").text) == 3
    env = {**os.environ, "AFMON_DATABASE_URL": database_url}
    cli = [sys.executable, "-m", "afmon.aggregator.cli", "quarantine"]
    done = subprocess.run([*cli, "replay"], env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "replayed 0 records" in done.stdout
    assert "still refused (malformed): 3 records stay in the quarantine" in done.stdout
    with client.app.state.services.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT kind, reason, field, record FROM quarantine WHERE replayed_at IS NULL "
            "ORDER BY id"
        ).all()
    assert [tuple(r) for r in rows] == [
        ("line", "malformed", "line 2", f"afmon,host=wn01,user=alice user_cpu_seconds=oops {T0}"),
        ("line", "malformed", "line 1", "a b c d"),
        ("line", "malformed", "line 2", "mem,host=wn01 total=x"),
    ]
