"""Reserved labels are the server's: a producer of facility A cannot write as facility B (or as
a VO, group or member) on any ingest route, with or without a time-series store.

A real `afmon serve` (facility `af-a`), optionally draining into a real VictoriaMetrics; each
reserved label is sent on the agent route, as a line-protocol tag and as an OTLP attribute;
the series carrying it is refused (quarantined, reason `reserved_label`) and the answer says
so. Clean bodies on the same routes land, and everything stored in the ledger, in the store
and on /metrics is under the credential's facility.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from afmon.collectors import wire
from tests.aggregator.test_influx_store import _wait_for

RESERVED = ("facility", "vo", "group", "member")
IDENTITY = """\
[vos.atlas]
issuer = "https://atlas-auth.cern.ch/"

[[members]]
vo = "atlas"
subject = "alice-sub"
display_name = "Alice"
accounts = [{ facility = "af-a", local = "alice" }]
"""


def _agent_body(now: float, seq: int, extra: dict[str, str]) -> bytes:
    series = wire.Series(
        metric="user_cpu_seconds",
        unit="seconds",
        kind="counter",
        labels={"user": "alice", "node": "wn01", **extra},
        times=[now - 60, now - 30],
        values=[0.0, 30.0],
        created=now - 60,
    )
    batch = wire.Batch(
        version=1, agent_id="agent-1", facility="af-a", node="wn01", seq=seq,
        sent_at=now, series=[series],
    )  # fmt: skip
    return wire.encode(batch)


def _line_body(now: float, extra: dict[str, str]) -> bytes:
    tags = "".join(f",{k}={v}" for k, v in {"host": "wn02", "user": "alice", **extra}.items())
    ns = int((now - 20) * 1e9)
    lines = [f"afmon{tags} user_cpu_seconds={v} {ns + i * 10**10}" for i, v in enumerate((10, 25))]
    return "\n".join(lines).encode()


def _otlp_body(now: float, extra: dict[str, str]) -> bytes:
    def attr(k: str, v: str) -> dict:
        return {"key": k, "value": {"stringValue": v}}

    start = int((now - 40) * 1e9)
    point = {
        "attributes": [attr("user", "alice"), *(attr(k, v) for k, v in extra.items())],
        "startTimeUnixNano": str(start),
        "timeUnixNano": str(start + 20 * 10**9),
        "asDouble": 20.0,
    }
    metric = {
        "name": "user_cpu_seconds",
        "unit": "s",
        "sum": {"aggregationTemporality": 2, "isMonotonic": True, "dataPoints": [point]},
    }
    request = {
        "resourceMetrics": [
            {
                "resource": {"attributes": [attr("host.name", "wn03")]},
                "scopeMetrics": [{"metrics": [metric]}],
            }
        ]
    }
    return json.dumps(request).encode()


@pytest.mark.parametrize("store", ["database only", "victoriametrics"])
def test_reserved_labels_are_refused_on_every_route(
    store: str, server_factory, vm_factory, tmp_path: Path
) -> None:
    identity = tmp_path / "identity.toml"
    identity.write_text(IDENTITY)
    extra: dict[str, str] = {}
    vm = None
    if store == "victoriametrics":
        vm = vm_factory()
        vm.start()
        extra = {"tsdb_url": vm.url, "tsdb_flush_seconds": "0.2"}
    server = server_factory(identity_file=identity, facility="af-a", dashboard="false", **extra)
    auth = {"Authorization": f"Bearer {server.token}"}
    now = time.time()
    routes = {
        "agent": ("/api/v1/ingest", {}, lambda labels, seq: _agent_body(now, seq, labels)),
        "line protocol": (
            "/api/v2/write?precision=ns",
            {},
            lambda labels, _: _line_body(now, labels),
        ),
        "otlp": (
            "/v1/metrics",
            {"Content-Type": "application/json"},
            lambda labels, _: _otlp_body(now, labels),
        ),
    }
    seq = 0
    with httpx.Client(base_url=server.url, headers=auth, timeout=30) as client:
        for label in RESERVED:
            for route, (path, headers, body) in routes.items():
                seq += 1
                r = client.post(path, content=body({label: "af-b"}, seq), headers=headers)
                # the record is refused (quarantined), the request answered as partial
                assert r.status_code in (200, 204), (label, route, r.status_code, r.text)
                said = r.text + r.headers.get("x-afmon-refused-reason", "")
                assert f".labels.{label}" in said or f"label {label!r}" in said, (route, said)
                assert "reserved" in said, (route, said)
        for route, (path, headers, body) in routes.items():  # the same bodies, clean
            seq += 1
            r = client.post(path, content=body({}, seq), headers=headers)
            assert r.status_code in (200, 204), (route, r.status_code, r.text)
        exposition = client.get("/metrics").text

    con = sqlite3.connect(tmp_path / "server.sqlite")
    rows = con.execute(
        "SELECT facility, SUM(amount) FROM usage WHERE resource = 'cpu_seconds' GROUP BY facility"
    ).fetchall()
    assert rows == [("af-a", 30.0 + 15.0 + 20.0)]  # the clean bodies only, once each
    quarantined = con.execute("SELECT reason, COUNT(*) FROM quarantine GROUP BY reason").fetchall()
    assert quarantined == [("reserved_label", len(RESERVED) * 3)]
    facilities = {
        line.split('facility="', 1)[1].split('"', 1)[0]
        for line in exposition.splitlines()
        if 'facility="' in line and not line.startswith("#")
    }
    assert facilities <= {"af-a", "unknown"} and "af-a" in facilities
    assert "af-b" not in exposition
    if vm is not None:

        def stored() -> set[tuple[str, str]]:
            return {(dict(k)["facility"], dict(k)["node"]) for k in vm.export()}

        _wait_for(lambda: stored() == {("af-a", "wn01"), ("af-a", "wn02"), ("af-a", "wn03")},
                  "the clean series in VictoriaMetrics")  # fmt: skip
        assert all("vo" not in dict(k) and "member" not in dict(k) for k in vm.export())
