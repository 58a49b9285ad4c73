"""InfluxDB line protocol (Telegraf's outputs.influxdb_v2) into a real afmon server."""
# ruff: noqa: E501  (a recorded Telegraf body keeps its long lines)

from __future__ import annotations

import gzip
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import influxdb_client
import pytest
from fastapi.testclient import TestClient
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from influxdb_client.client.write_api import WritePrecision
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.ingest import lp_parse
from afmon.aggregator.ingest.lineprotocol import LineError, Point, parse_line, to_batch
from afmon.aggregator.ingest.lp_parse import MAX_STAMP, split_lines
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
        (
            "afmon,host=n\x001,user=a user_cpu_seconds=1 1",
            2,
            "line 2: node has a control character",
        ),
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


# The reference: https://docs.influxdata.com/influxdb/v2/reference/syntax/line-protocol/ (its
# own examples first) and the grammar of github.com/influxdata/line-protocol. A tuple is the
# point read (measurement, tags, fields, timestamp as sent); a string, part of the refusal.
CONFORMANCE = {
    # the reference's examples
    "syntax": (
        'myMeasurement,tag1=value1,tag2=value2 fieldKey="fieldValue" 1556813561098000000',
        ("myMeasurement", {"tag1": "value1", "tag2": "value2"}, {"fieldKey": "fieldValue"}, 1556813561098000000),
    ),
    "float 1.0": ("myMeasurement fieldKey=1.0", ("myMeasurement", {}, {"fieldKey": 1.0}, None)),
    "float 1": ("myMeasurement fieldKey=1", ("myMeasurement", {}, {"fieldKey": 1.0}, None)),
    "float exponent": ("m fieldKey=-1.234456e+78", ("m", {}, {"fieldKey": -1.234456e78}, None)),
    "float forms": ("m a=.5,b=1.,c=-1.5E-3,d=1e5,e=-0", ("m", {}, {"a": 0.5, "b": 1.0, "c": -0.0015, "d": 1e5, "e": -0.0}, None)),
    "integers": ("m a=1i,b=12485903i,c=-12485903i", ("m", {}, {"a": 1, "b": 12485903, "c": -12485903}, None)),
    "int64 range": ("m a=-9223372036854775808i,b=9223372036854775807i", ("m", {}, {"a": -(2**63), "b": 2**63 - 1}, None)),
    "uintegers": ("m a=0u,b=12485903u,c=18446744073709551615u", ("m", {}, {"a": 0, "b": 12485903, "c": 2**64 - 1}, None)),
    "string": ('myMeasurement fieldKey="this is a string"', ("myMeasurement", {}, {"fieldKey": "this is a string"}, None)),
    "booleans true": ("m a=t,b=T,c=true,d=True,e=TRUE", ("m", {}, dict.fromkeys("abcde", True), None)),
    "booleans false": ("m a=f,b=F,c=false,d=False,e=FALSE", ("m", {}, dict.fromkeys("abcde", False), None)),
    "timestamp range": ("m f=1i -9223372036854775806", ("m", {}, {"f": 1}, -9223372036854775806)),
    "measurement with a space": (r'my\ Measurement fieldKey="string value"', ("my Measurement", {}, {"fieldKey": "string value"}, None)),
    "quotes in a string": (r'myMeasurement fieldKey="\"string\" within a string"', ("myMeasurement", {}, {"fieldKey": '"string" within a string'}, None)),
    "tags with spaces": (r"myMeasurement,tag\ Key1=tag\ Value1,tag\ Key2=tag\ Value2 fieldKey=100", ("myMeasurement", {"tag Key1": "tag Value1", "tag Key2": "tag Value2"}, {"fieldKey": 100.0}, None)),
    "emojis": ('myMeasurement,tagKey=🍭 fieldKey="Launch 🚀" 1556813561098000000', ("myMeasurement", {"tagKey": "🍭"}, {"fieldKey": "Launch 🚀"}, 1556813561098000000)),
    # escaping backslashes in a string field value (the reference's table)
    "backslash x1": (r'm f="a\b"', ("m", {}, {"f": "a\\b"}, None)),
    "backslash x2": (r'm f="a\\b"', ("m", {}, {"f": "a\\b"}, None)),
    "backslash x3": (r'm f="a\\\b"', ("m", {}, {"f": "a\\\\b"}, None)),
    "backslash x4": (r'm f="a\\\\b"', ("m", {}, {"f": "a\\\\b"}, None)),
    "backslash x5": (r'm f="a\\\\\b"', ("m", {}, {"f": "a\\\\\\b"}, None)),
    "backslash x6": (r'm f="a\\\\\\b"', ("m", {}, {"f": "a\\\\\\b"}, None)),
    "backslash before the closing quote": (r'm f="a\\" 5', ("m", {}, {"f": "a\\"}, 5)),
    # escapes per element: the measurement escapes comma and space; keys and tag values comma,
    # equals sign and space; any other backslash is literal
    "escapes": (r"m\,e\ a\=s,t\,k\=\ y=v\,\=\ w f\,k\=\ y=1i", ("m,e a\\=s", {"t,k= y": "v,= w"}, {"f,k= y": 1}, None)),
    "literal backslashes in keys": (r'm\x,t=a\\b,u=c\"d f\x=1i', ("m\\x", {"t": "a\\\\b", "u": 'c\\"d'}, {"f\\x": 1}, None)),
    "a run of backslashes: the last one escapes": (r"m,t\\\==v f\\\,=1i", ("m", {"t\\\\=": "v"}, {"f\\\\,": 1}, None)),
    "string with spaces, commas, equals": ('m f="a b,c=d e",g=1i 7', ("m", {}, {"f": "a b,c=d e", "g": 1}, 7)),
    "string with a newline": ('m f="one\ntwo"', ("m", {}, {"f": "one\ntwo"}, None)),
    "string with U+2028 and U+0085": ('m f="a\u2028b\u0085c"', ("m", {}, {"f": "a\u2028b\u0085c"}, None)),
    "tag with U+2028": ("m,t=a\u2028b f=1i", ("m", {"t": "a\u2028b"}, {"f": 1}, None)),
    "empty string": ('m f=""', ("m", {}, {"f": ""}, None)),
    "no timestamp, trailing spaces": ("m f=1i   ", ("m", {}, {"f": 1}, None)),
    "several spaces between sections": ("m,t=a   f=1i   9", ("m", {"t": "a"}, {"f": 1}, 9)),
    # quotes are literal outside field values
    "quote in a tag value": ('m,t=a"b f=1i', ("m", {"t": 'a"b'}, {"f": 1}, None)),
    "quotes everywhere but values": ('"m",t="v" "f"=1i', ('"m"', {"t": '"v"'}, {'"f"': 1}, None)),
    "a quote does not quote a tag value": ('m,t="a b" f=1i', "bad field"),
    "a quote in a measurement": ('m"x f="y"', ('m"x', {}, {"f": "y"}, None)),
    # refused: numbers out of their type or range
    "negative uinteger": ("m f=-5u", "unsigned integer '-5u' is negative"),
    "uinteger past 2^64": ("m f=18446744073709551616u", "out of range (uint64)"),
    "integer past int64": ("m f=9223372036854775808i", "out of range (int64)"),
    "integer under int64": ("m f=-9223372036854775809i", "out of range (int64)"),
    "underscore in an integer": ("m f=1_000i", "is not a number"),
    "underscore in a float": ("m f=1_000", "is not a number"),
    "float with i": ("m f=1.5i", "is not a number"),
    "float past float64": ("m f=1e400", "out of range"),
    "inf": ("m f=inf", "is not a number"),
    "nan": ("m f=NaN", "is not a number"),
    "plus sign": ("m f=+1", "is not a number"),
    "hex": ("m f=0x10", "is not a number"),
    "not a boolean": ("m f=tru", "is not a number"),
    "unicode digits": ("m f=\u0663i", "is not a number"),
    # refused: structure
    "unterminated string": ('m f="abc', "unterminated string"),
    "escaped closing quote": (r'm f="abc\"', "unterminated string"),
    "junk after a string": ('m f="a"b', "unexpected 'b' after the value"),
    "no fields": ("m,t=a", "missing fields"),
    "no fields after the space": ("m ", "missing fields"),
    "field without a value": ("m f=", "missing value"),
    "field without =": ("m f", "bad field 'f'"),
    "empty field key": ("m =1", "want a field key"),
    "trailing comma in fields": ("m f=1,", "want a field key"),
    "unescaped = in a tag value": ("m,t=a=b f=1", "unescaped '=' in the tag value"),
    "empty tag value": ("m,t= f=1", "missing tag value"),
    "empty tag key": ("m,=a f=1", "want a tag key"),
    "duplicate tag": ("m,t=a,t=b f=1", "duplicate tag 't'"),
    "missing measurement": (",t=a f=1", "missing measurement"),
    "float timestamp": ("m f=1 1.5", "timestamp '1.5' is not an integer"),
    "timestamp out of range": ("m f=1 9223372036854775807", "timestamp out of range"),
    "text after the timestamp": ("m f=1 1 2", "unexpected text after the timestamp"),
    # refused: InfluxDB's reserved names and its string length limit
    "reserved measurement": ("_m f=1", "measurement '_m': names starting with '_' are reserved"),
    "reserved tag key": ("m,_t=a f=1", "tag key '_t': names starting with '_' are reserved"),
    "reserved field key": ("m _field=1", "field key '_field': names starting with '_' are reserved"),
    "underscore inside names": ("m_x,t_=a f_=1i", ("m_x", {"t_": "a"}, {"f_": 1}, None)),
    "a 64 KiB string": ('m f="' + "é" * 32_768 + '"', ("m", {}, {"f": "é" * 32_768}, None)),
    "a string over 64 KiB": ('m f="' + "é" * 32_768 + 'x"', "string value of 65537 bytes is longer than 65536"),
}  # fmt: skip


@pytest.mark.parametrize(("line", "expected"), CONFORMANCE.values(), ids=CONFORMANCE.keys())
def test_conformance_with_the_reference(line: str, expected: tuple | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=re.escape(expected)):
            parse_line(line, 1e-9)
        return
    p = parse_line(line, 1e-9)
    measurement, tags, fields, stamp = expected
    assert (p.measurement, p.tags, p.stamp) == (measurement, tags, stamp)
    assert typed(p.fields) == typed(fields)
    assert p.time == (None if stamp is None else stamp * 1e-9)
    # a body of one line with a line break (`\n` or `\r\n`) reads the same
    assert list(split_lines(line + "\r\n")) == [(1, line)]


def typed(fields: dict) -> dict:
    """Fields with their types: 1 == 1.0 == True, but 1i is not 1."""
    return {k: (type(v), v) for k, v in fields.items()}


@pytest.mark.parametrize(
    ("body", "lines"),
    [
        # a line ends at \n outside a quoted field string value, nowhere else
        ('m f="a\nb" 1\nn g=1i 2\n', [(1, 'm f="a\nb" 1'), (3, "n g=1i 2")]),
        ('m f="a\r\nb" 1\r\nn g=1i\r\n', [(1, 'm f="a\r\nb" 1'), (3, "n g=1i")]),
        (
            'm f="a\u2028b\u0085c\x0bd\x0ce\x1cf" 1\nn g=1',
            [(1, 'm f="a\u2028b\u0085c\x0bd\x0ce\x1cf" 1'), (2, "n g=1")],
        ),
        ("m,t=a\u2028b f=1\u2029\nn g=1", [(1, "m,t=a\u2028b f=1\u2029"), (2, "n g=1")]),
        # quotes in the measurement and tags open nothing
        ('m,t="a f=1\nn,t=b" g=1', [(1, 'm,t="a f=1'), (2, 'n,t=b" g=1')]),
        # a string field value of a key with escapes, several strings, escaped quotes
        (
            'm f\\=\\ k="x\n\\"y",g="\n" 1\nn g=1',
            [(1, 'm f\\=\\ k="x\n\\"y",g="\n" 1'), (4, "n g=1")],
        ),
        # comments and blank lines are skipped, a quote in a comment opens nothing
        ('# a "comment\n\n   \n\r\n  m f=1\n# "', [(5, "m f=1")]),
        # an unterminated string runs to the end of the body: one bad line, as in InfluxDB
        ('m f="abc\nn g=1\n', [(1, 'm f="abc\nn g=1\n')]),
        # a backslash does not join lines outside a string
        ("m f=1\\\nn g=1", [(1, "m f=1\\"), (2, "n g=1")]),
    ],
)
def test_lines_end_at_newline_outside_strings(body: str, lines: list) -> None:
    assert list(split_lines(body)) == lines


def test_a_newline_in_a_string_field_keeps_the_body_whole() -> None:
    body = (
        'procstat,host=n1,user=a,process_name=x memory_rss=10i,cmdline="run\n--x \\"y\\"" 5\n'
        'procstat,host=n1,user=a,process_name=y memory_rss=20i,cmdline="a\u2028b\u0085" 5\n'
        'afmon,host=n"1,user=a user_cpu_seconds=1 5\n'
        "afmon,host=n1,user=a user_cpu_seconds=1_0i 6\n"
    )
    c = to_batch(body, precision="s", facility="f", agent_id="a", seq=1, now=10.0)
    by_metric = {s.metric: s for s in c.batch.series}
    assert by_metric["user_memory_rss_bytes"].values == [30.0]
    # the quote is part of the node's name, not the start of a string
    assert by_metric["user_cpu_seconds"].labels == {"node": 'n"1', "user": "a"}
    assert (c.good_lines, c.ignored_fields) == (3, 2)
    (bad,) = c.bad_lines  # numbered by the line it starts on
    assert bad.index == 5 and "line 5: field 'user_cpu_seconds'" in bad.message


# influxdb-client's own serializer writes the points. It escapes \n, \r and \t in names and
# tag values as two characters (which the reference reads back as such) and does not escape a
# backslash there, so names and tags leave those out; string field values hold anything.
TRICKY = st.sampled_from(list(' ,="#\u2028\u2029\u0085\x0b\x1cé🍭'))
NAME = st.text(
    st.one_of(st.characters(exclude_categories=("Cs",), exclude_characters="\\\n\r\t"), TRICKY),
    min_size=1,
    max_size=8,
).filter(lambda name: not name.startswith("_"))  # reserved by InfluxDB
STRING = st.text(st.one_of(st.characters(exclude_categories=("Cs",)), TRICKY, st.sampled_from(list('"\\\n\r'))), max_size=12)  # fmt: skip
VALUE = st.one_of(
    STRING,
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
STAMP = st.one_of(st.none(), st.integers(-MAX_STAMP, MAX_STAMP))
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def client_points(draw: st.DrawFn) -> tuple[str, Point]:
    """A point written by influxdb_client.Point, and what it holds."""
    measurement = draw(NAME.filter(lambda m: not m.startswith("#")))
    tags = draw(st.dictionaries(NAME, NAME, max_size=4))
    fields = draw(st.dictionaries(NAME, VALUE, min_size=1, max_size=4))
    stamp = draw(STAMP)
    point = influxdb_client.Point(measurement)
    for k, v in tags.items():
        point = point.tag(k, v)
    for k, v in fields.items():
        point = point.field(k, v)
    if stamp is not None:
        point = point.time(stamp, WritePrecision.NS)
    time = None if stamp is None else stamp * 1e-9
    return point.to_line_protocol(), Point(measurement, tags, fields, time, stamp)


def same(p: Point, q: Point) -> bool:
    return (p.measurement, p.tags, typed(p.fields), p.time, p.stamp) == (
        q.measurement, q.tags, typed(q.fields), q.time, q.stamp,
    )  # fmt: skip


@PROPERTY
@given(written=client_points())
def test_what_influxdb_client_writes_reads_back(written: tuple[str, Point]) -> None:
    line, point = written
    assert same(parse_line(line, 1e-9), point), line


@PROPERTY
@given(written=st.lists(client_points(), min_size=1, max_size=5))
def test_lines_joined_by_newline_read_back_in_order(written: list[tuple[str, Point]]) -> None:
    body = "\n".join(line for line, _ in written)
    read = list(split_lines(body))
    assert [text for _, text in read] == [line for line, _ in written]
    starts = [1]
    for line, _ in written[:-1]:
        starts.append(starts[-1] + 1 + line.count("\n"))
    assert [n for n, _ in read] == starts
    for (_, text), (_, point) in zip(read, written, strict=True):
        assert same(parse_line(text, 1e-9), point), text


@PROPERTY
@given(value=st.integers(0, 2**64 - 1), stamp=st.integers(0, MAX_STAMP))
def test_uintegers_the_client_writes_read_back(value: int, stamp: int) -> None:
    point = influxdb_client.Point.from_dict(
        {"measurement": "m", "tags": {"t": "v"}, "fields": {"u": value}, "time": stamp},
        WritePrecision.NS,
        field_types={"u": "uint"},
    )
    line = point.to_line_protocol()
    assert line.endswith(f"u={value}u {stamp}")
    p = parse_line(line, 1e-9)
    assert (p.fields, p.stamp) == ({"u": value}, stamp)


def outcome(read: Callable[[str], lp_parse.Parsed], line: str) -> object:
    try:
        p = read(line)
    except ValueError as exc:
        return str(exc)
    return (p.measurement, p.tags, typed(p.fields), p.stamp)


@PROPERTY
@given(line=st.one_of(
    st.text(st.sampled_from(list('ab=, "\\#\r\n1i.u-eTt_')), max_size=30),
    st.sampled_from([line for line, _ in CONFORMANCE.values()] + TELEGRAF_BODY.splitlines()),
))  # fmt: skip
def test_the_one_match_path_reads_as_the_full_parser(line: str) -> None:
    """`parse` reads a line without quotes or backslashes in one match: it must accept and
    read exactly what the full parser does (whose reasons every refusal gives)."""
    assert outcome(lp_parse.parse, line) == outcome(_full_parse, line)


def _full_parse(line: str) -> lp_parse.Parsed:
    """The full parser with the limits every path checks."""
    point = lp_parse._parse(line)
    lp_parse._check_limits(point)
    return point


def test_a_timestamp_must_fit_int64_nanoseconds_in_its_precision() -> None:
    assert parse_line("m f=1 9223372036", 1.0).stamp == 9223372036
    with pytest.raises(ValueError, match="timestamp out of range"):
        parse_line("m f=1 9223372037", 1.0)  # past 2262 in seconds
    assert parse_line("m f=1 -9223372036854775806", 1e-9).time == -9223372036854775806 * 1e-9


OTLP_JSON = {"resourceMetrics": [{
    "resource": {"attributes": [{"key": "host.name", "value": {"stringValue": "wn01"}}]},
    "scopeMetrics": [{"metrics": [{"name": "node_cpu_cores", "unit": "{cpu}", "gauge": {
        "dataPoints": [{"timeUnixNano": str(T0 * NS), "asDouble": 4.0}]}}]}],
}]}  # fmt: skip


def test_a_rate_limited_write_says_when_to_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFMON_INGEST_RATE_PER_AGENT", "0.001")  # a burst of one request
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path}/rate.sqlite",
        facility_tokens={"af": "a-token-of-the-line-protocol-rate-test"},
    )
    assert settings.ingest_rate_per_agent == 0.001
    client = TestClient(create_app(settings, clock=lambda: T0 + 60, with_dashboard=False))
    auth = {"Authorization": "Token a-token-of-the-line-protocol-rate-test"}
    # InfluxDB v2 write: the second body is refused, and says when to retry (1000 s at 0.001/s)
    r = client.post("/api/v2/write?precision=s", content=GOOD_AT_T0, headers=auth)
    assert r.status_code == 204, r.text
    r = client.post("/api/v2/write?precision=s", content=GOOD_AT_T0 + "\n", headers=auth)
    assert r.status_code == 429, r.text
    assert 990 <= int(r.headers["retry-after"]) <= 1000  # when the bucket has one again
    assert r.json()["code"] == "too many requests"
    # OTLP/HTTP: JSON, then protobuf (the same agent), both RESOURCE_EXHAUSTED with Retry-After
    r = client.post("/v1/metrics", json=OTLP_JSON, headers=auth)
    assert r.status_code == 200, r.text
    r = client.post("/v1/metrics", json=OTLP_JSON, headers=auth)
    assert r.status_code == 429 and 990 <= int(r.headers["retry-after"]) <= 1000, r.text
    assert r.json()["code"] == code_pb2.RESOURCE_EXHAUSTED
    proto = json_format.ParseDict(OTLP_JSON, ExportMetricsServiceRequest())
    r = client.post(
        "/v1/metrics",
        content=proto.SerializeToString(),
        headers={**auth, "Content-Type": "application/x-protobuf"},
    )
    assert r.status_code == 429 and 990 <= int(r.headers["retry-after"]) <= 1000
    assert status_pb2.Status.FromString(r.content).code == code_pb2.RESOURCE_EXHAUSTED
