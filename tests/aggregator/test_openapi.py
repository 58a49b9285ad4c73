"""The OpenAPI document describes what the server does, and schemathesis holds it to that.

`schemathesis run --checks all` runs against a live `afmon serve` (PostgreSQL and SQLite:
PostgreSQL is the one that refuses NUL characters and integers over 2^63-1) as a facility
admin and a VO member (tokens of a real local OIDC issuer) and as an agent (the facility's
credential), with bounded examples and a fixed seed. Then one regression test per bug it
found: each is a 4xx naming the field now, never a 500 or the dashboard's page.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from fastapi.testclient import TestClient

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.web.app import create_app
from afmon.aggregator.web.openapi import EXAMPLE_BATCH, EXAMPLE_FACILITY
from afmon.collectors import wire
from tests.conftest import ServerProcess, free_port
from tests.oidc_issuer import Issuer, IssuerServer

AUD = "https://afmon.test"
METRICS_TOKEN = "scrape-token-of-the-openapi-test-0123456789"
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
EXAMPLES = 15  # per operation and role (the coverage phase adds its own, a fixed set)
READS = r"/api/v1/(usage|alerts|reports/weekly)"
WRITES = r"/(api/v1/ingest|api/v2/write|v1/metrics)"
# What each role runs against: what it may call, and for the member /metrics (refused), which
# keeps the whole run about a minute per database on two cores. Every operation is run by
# someone; that each role is refused elsewhere is the access-matrix test's.
ROLE_OPERATIONS = {
    "admin": ("--exclude-path-regex", f"^{WRITES}$"),  # reads, /metrics, /healthz, /auth/*
    "member": ("--include-path-regex", f"^({READS}|/metrics)$"),
    "agent": ("--include-path-regex", f"^{WRITES}$"),
}


def _operations(paths: dict[str, dict[str, Any]], option: str, pattern: str) -> int:
    """How many operations of the document a role's run selects."""
    include = option.startswith("--include")
    return sum(
        len(ops) for path, ops in paths.items() if bool(re.match(pattern, path)) == include
    )

# Which checks run differently, and why (everything else: `--checks all` as shipped).
# positive_data_acceptance expects a 2xx (or 401/403/404/409/429) for every request that the
# document calls valid. A JSON Schema cannot state what these routes check beyond it, so
# their refusals of schema-valid input are expected here, and only here:
# - /api/v1/ingest: the batch's cross-field rules (as many values as times, times strictly
#   increasing, the unit and kind of a known metric, no reserved label, not in the future):
#   422 naming the field;
# - /api/v2/write: line protocol is a grammar, not a JSON type: 400 naming the line;
# - /v1/metrics: OTLP protobuf bytes and the OTLP JSON mapping: 400;
# - /auth/callback: its only valid input is a `state` this server signed minutes earlier at
#   /auth/login, and the issuer's code: 400 (state) or 401 (the issuer's error);
# - /api/v1/reports/weekly: a week that has not ended yet by the server's clock: 400.
CONFIG = """\
[[operations]]
include-path = "/api/v1/ingest"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "422", "429"]

[[operations]]
include-path = "/api/v2/write"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "422", "429"]

[[operations]]
include-path = "/v1/metrics"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "422", "429"]

[[operations]]
include-path = "/auth/callback"
checks.positive_data_acceptance.expected-statuses = ["3xx", "400", "401"]

[[operations]]
include-path = "/api/v1/reports/weekly"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404"]
"""
# The facility admin is the operator here, who also holds the scrape credential of /metrics.
SCRAPER = f"""
[[operations]]
include-path = "/metrics"
headers = {{ Authorization = "Bearer {METRICS_TOKEN}" }}
"""


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    found = Issuer("atlas", AUD)
    with IssuerServer(free_port(), [found]):
        yield found


def _serve(server_factory: Callable[..., ServerProcess], database_url: str, iss: Issuer):
    return server_factory(
        database_url=database_url,
        facility=EXAMPLE_FACILITY,  # the document's example batch is the agent's own
        local_mode="false",
        oidc_issuers=json.dumps({iss.url: {"vo": "atlas", "admin_groups": ["/atlas/af-admins"]}}),
        oidc_audience=AUD,
        oidc_client_id="afmon",
        oidc_client_secret="client-secret",
        session_secret="a-session-secret-of-at-least-32-characters",
        metrics_token=METRICS_TOKEN,
        alert_interval_seconds="0",
        ingest_rate_per_agent="1000",
    )


def _schemathesis(
    url: str, token: str, select: tuple[str, str], config: Path, report: Path
) -> tuple[int, str]:
    cmd = [
        str(SCHEMATHESIS), "--config-file", str(config), "run", f"{url}/openapi.json", *select,
        "--checks", "all", "--max-examples", str(EXAMPLES), "--seed", "18",
        "--header", f"Authorization: Bearer {token}",
        "--generation-database", "none", "--no-color", "--max-failures", "20",
        "--request-timeout", "30", "--report", "junit", "--report-junit-path", str(report),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=report.parent)
    return done.returncode, done.stdout + done.stderr


def test_schemathesis_as_admin_member_and_agent(
    server_factory: Callable[..., ServerProcess],
    database_url: str,
    issuer: Issuer,
    tmp_path: Path,
) -> None:
    server = _serve(server_factory, database_url, issuer)
    roles = {
        "admin": (issuer.token("root", ["/atlas/af-admins"]), CONFIG + SCRAPER),
        "member": (issuer.token("alice", ["/atlas"]), CONFIG),
        "agent": (server.token, CONFIG),
    }
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert len(paths) >= 11
    failed: dict[str, str] = {}
    for role, (token, config) in roles.items():
        path = tmp_path / f"schemathesis-{role}.toml"
        path.write_text(config)
        option, pattern = ROLE_OPERATIONS[role]
        operations = _operations(paths, option, pattern)
        code, out = _schemathesis(
            server.url, token, (option, pattern), path, tmp_path / f"junit-{role}.xml"
        )
        summary = out[out.find("SUMMARY") :] if "SUMMARY" in out else out[-3000:]
        print(f"--- {role}: exit {code}\n{summary}")
        if code == 0:  # each of its operations tested, none skipped
            assert f"Tested: {operations}" in out, out[-3000:]
        if code != 0:
            failed[role] = out[-12000:]
    assert not failed, "\n\n".join(f"=== {role}\n{out}" for role, out in failed.items())
    assert "Traceback" not in server.log.read_text()  # no 500 hid behind an expected status


# -- the document ---------------------------------------------------------------------------


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    settings = ServerSettings(
        database_url=database_url,
        facility_tokens={EXAMPLE_FACILITY: "agent-token-of-the-openapi-test"},
        local_mode=True,
        alert_interval_seconds=0,
    )
    with TestClient(create_app(settings)) as c:
        yield c


AGENT = {"Authorization": "Bearer agent-token-of-the-openapi-test"}


def test_document_describes_bodies_and_answers(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    paths, schemas = doc["paths"], doc["components"]["schemas"]
    # the batch's schema is msgspec's, from the structs the decoder uses
    _, generated = msgspec.json.schema_components(
        (wire.Batch,), ref_template="#/components/schemas/{name}"
    )
    for name, schema in generated.items():
        if name != "Batch":
            assert schemas[name] == schema, name
    # the envelope is msgspec's; a record is judged on its own (`malformed` when unreadable)
    batch, documented = generated["Batch"], schemas["Batch"]
    for field, record in (("series", "Series"), ("events", "Event")):
        items = documented["properties"][field].pop("items")
        assert items == {"anyOf": [{"$ref": f"#/components/schemas/{record}"}, {}]}
        assert "malformed" in documented["properties"][field].pop("description")
        batch["properties"][field].pop("items")
    assert documented == batch
    ingest = paths["/api/v1/ingest"]["post"]
    body = ingest["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/Batch"}
    assert set(body) == {"application/json", wire.CONTENT_TYPE}
    assert set(ingest["responses"]) == {"200", "401", "413", "422", "429", "503"}
    write = paths["/api/v2/write"]["post"]
    assert set(write["requestBody"]["content"]) == {"text/plain"}
    assert set(write["responses"]) == {"204", "400", "401", "413", "415", "422", "429", "503"}
    assert "content" not in write["responses"]["204"]
    otlp = paths["/v1/metrics"]["post"]
    assert set(otlp["requestBody"]["content"]) == {"application/x-protobuf", "application/json"}
    scrape = paths["/metrics"]["get"]["responses"]
    assert {m.split(";")[0] for m in scrape["200"]["content"]} == {
        "text/plain",
        "application/openmetrics-text",
    }
    assert "401" in scrape
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "503"}
    for path in ("/api/v1/usage", "/api/v1/reports/weekly", "/api/v1/alerts"):
        assert "401" in paths[path]["get"]["responses"], path
    # every $ref points at a component
    refs = {r.rsplit("/", 1)[1] for r in _refs(doc)}
    assert refs <= set(schemas), refs - set(schemas)
    assert example_is_valid()


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def example_is_valid() -> bool:
    wire.check_batch(wire.decode(wire.encode(EXAMPLE_BATCH)))
    return True


# -- regressions: what schemathesis found ---------------------------------------------------


def _batch(seq: int, change: dict[str, Any] | None = None) -> dict[str, Any]:
    b = copy.deepcopy(msgspec.to_builtins(EXAMPLE_BATCH))
    b["seq"] = seq
    for where, value in (change or {}).items():
        target = b
        *parts, last = where.split(".")
        for p in parts:
            target = target[int(p)] if p.isdigit() else target[p]
        target[last] = value
    return b


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"seq": 2**63}, "$.seq"),  # BIGINT: was a 500 on both databases
        ({"node": "wn\x0001"}, "$.node"),  # NUL: PostgreSQL text refuses it (was a 500)
        ({"agent_id": "a\x00"}, "$.agent_id"),
        ({"series.0.labels": {"user": "al\x00ice"}}, "$.series[0].labels[...]"),
        ({"events.0.id": "s\x001"}, "$.events[0].id"),
        ({"events.0.user": "al\x00ice"}, "$.events[0].user"),
        ({"events.0.attrs": {"image": "x\x00"}}, "$.events[0].attrs[...]"),
    ],
)
def test_batch_values_the_database_cannot_store_are_named(
    client: TestClient, change: dict[str, Any], field: str
) -> None:
    """In the envelope: the batch is refused (422); in a record: that record (`malformed`,
    quarantined as sent, escaped), the rest applied. Never a 500."""
    r = client.post("/api/v1/ingest", content=json.dumps(_batch(7, change)), headers=AGENT)
    if field.startswith(("$.series", "$.events")):
        assert r.status_code == 200 and r.json()["status"] == "partial", r.text
        [refusal] = r.json()["refused"]
        assert (refusal["field"], refusal["reason"]) == (field, "malformed")
    else:
        assert r.status_code == 422, r.text
        assert r.json()["detail"]["field"] == field
    r = client.post("/api/v1/ingest", content=json.dumps(_batch(8)), headers=AGENT)
    assert r.status_code == 200 and r.json()["status"] == "applied", r.text
    assert client.get("/healthz").status_code == 200


def test_line_protocol_and_otlp_refuse_nul(client: TestClient) -> None:
    now_ns = int(time.time()) * 10**9
    line = f"afmon,host=wn01,user=al\x00ice user_cpu_seconds=1 {now_ns}\n"
    r = client.post("/api/v2/write", content=line.encode(), headers=AGENT)
    assert r.status_code == 400 and r.json()["code"] == "invalid", r.text
    otlp = {
        "resourceMetrics": [
            {
                "resource": {
                    "attributes": [{"key": "host.name", "value": {"stringValue": "wn\x0001"}}]
                },
                "scopeMetrics": [
                    {
                        "metrics": [
                            {
                                "name": "system.memory.usage",
                                "unit": "By",
                                "gauge": {
                                    "dataPoints": [{"timeUnixNano": str(now_ns), "asInt": "1"}]
                                },
                            }
                        ]
                    }
                ],
            }
        ]
    }
    headers = {**AGENT, "Content-Type": "application/json"}
    r = client.post("/v1/metrics", content=json.dumps(otlp), headers=headers)
    assert r.status_code in (200, 400), r.text  # refused, or nothing of it mapped: never a 500
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("body", ["[]", '"AAA"', "5", "null", ""])
def test_otlp_json_must_be_an_object(client: TestClient, body: str) -> None:
    headers = {**AGENT, "Content-Type": "application/json"}
    r = client.post("/v1/metrics", content=body, headers=headers)
    assert r.status_code == 400, r.text  # `[]` and `"AAA"` were a 200, an empty export
    assert r.json()["message"].startswith("$: not an OTLP JSON metrics request")


@pytest.mark.parametrize(
    "query",
    [
        "start=nan&end=1",
        "start=0&end=inf",
        "start=-inf&end=0",
        "start=0&end=2.6e103",  # an OverflowError in the database driver
        "start=-3.4e16&end=10",
    ],
)
def test_usage_times_are_bounded(client: TestClient, query: str) -> None:
    r = client.get(f"/api/v1/usage?{query}")
    assert r.status_code == 422, r.text  # was a 500 from the database
    assert r.json()["detail"][0]["loc"][0] == "query"
    assert r.json()["detail"][0]["loc"][1] in ("start", "end")


def test_report_refuses_an_unknown_level(client: TestClient) -> None:
    r = client.get("/api/v1/reports/weekly?format=json&level=AAA")
    assert r.status_code == 400 and "unknown level 'AAA'" in r.json()["detail"], r.text


def test_api_paths_answer_405_not_the_dashboard(client: TestClient) -> None:
    for method, path, allow in [
        ("GET", "/api/v1/ingest", "POST"),
        ("OPTIONS", "/v1/metrics", "POST"),
        ("PUT", "/api/v2/write", "POST"),
        ("POST", "/api/v1/usage", "GET"),
        ("DELETE", "/healthz", "GET"),
    ]:
        r = client.request(method, path)
        assert r.status_code == 405, (method, path, r.status_code, r.text[:200])
        assert r.headers["allow"] == allow
        assert "html" not in r.headers["content-type"]
    assert client.get("/").status_code == 200  # the dashboard is still at /
