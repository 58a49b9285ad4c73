"""Who may read and write what: an access matrix over real tokens from a local issuer.

A local test issuer (RSA keys, its OpenID configuration and JWKS served over real HTTP)
signs WLCG-profile tokens; agent credentials come from `afmon agent-token`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from afmon.aggregator.auth.agent_tokens import AgentAuthenticator, create_token, revoke_token
from afmon.aggregator.cli.serve import weak_secrets
from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from tests.conftest import free_port
from tests.oidc_issuer import Issuer, IssuerServer

NOW = time.time()
AUD = "https://afmon.test"


@pytest.fixture(scope="module")
def issuers() -> Iterator[tuple[str, dict[str, Issuer]]]:
    found = {"atlas": Issuer("atlas", AUD), "cms": Issuer("cms", AUD)}
    with IssuerServer(free_port(), list(found.values())) as server:
        yield server.base, found


IDENTITY = """
[vos.atlas]
issuer = "{base}/atlas"
[vos.cms]
issuer = "{base}/cms"

[[members]]
vo = "atlas"
subject = "alice"
display_name = "Alice"
accounts = [{{ facility = "af", local = "alice" }}]
[[members]]
vo = "atlas"
subject = "bob"
display_name = "Bob"
accounts = [{{ facility = "af", local = "bob" }}]
[[members]]
vo = "cms"
subject = "carol"
display_name = "Carol"
accounts = [{{ facility = "af", local = "carol" }}]
"""


@pytest.fixture(scope="module")
def app(issuers: tuple[str, dict[str, Issuer]], tmp_path_factory: pytest.TempPathFactory):
    base, _ = issuers
    tmp = tmp_path_factory.mktemp("auth")
    (tmp / "identity.toml").write_text(IDENTITY.format(base=base))
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp}/auth.sqlite",
        identity_file=tmp / "identity.toml",
        facility_tokens={"af": "static-token-of-the-af-facility-0123456789"},
        oidc_issuers={
            f"{base}/atlas": {
                "vo": "atlas",
                "manager_groups": ["/atlas/af-managers"],
                "admin_groups": ["/af-admins"],
            },
            f"{base}/cms": {"vo": "cms", "manager_groups": ["/cms/af-managers"]},
        },
        oidc_audience=AUD,
        ingest_rate_per_agent=1.0,
    )
    client = TestClient(create_app(settings, clock=lambda: NOW))
    series = [
        wire.Series(
            metric="user_cpu_seconds",
            unit="seconds",
            kind="counter",
            labels={"user": user, "node": "n1"},
            times=[NOW - 60, NOW - 30],
            values=[0.0, cpu],
            created=NOW - 60,
        )
        for user, cpu in (("alice", 10.0), ("bob", 20.0), ("carol", 40.0), ("mallory", 80.0))
    ]
    batch = wire.Batch(
        version=1, agent_id="a", facility="af", node="n1", seq=1, sent_at=NOW, series=series
    )
    r = client.post(
        "/api/v1/ingest",
        content=wire.encode(batch),
        headers={"Authorization": "Bearer static-token-of-the-af-facility-0123456789"},
    )
    assert r.json()["status"] == "applied"
    return client


def members_seen(client: TestClient, token: str | None) -> tuple[int, set[str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = client.get(
        "/api/v1/usage", params={"start": 0, "end": NOW + 7200, "by": "member"}, headers=headers
    )
    if r.status_code != 200:
        return r.status_code, set()
    return 200, {row["member"].rsplit("/", 1)[-1] for row in r.json()}


def test_access_matrix_on_the_usage_api(
    app: TestClient, issuers: tuple[str, dict[str, Issuer]]
) -> None:
    _, iss = issuers
    atlas, cms = iss["atlas"], iss["cms"]
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    matrix = {
        "anonymous": (None, 401, set()),
        "member alice": (atlas.token("alice", ["/atlas"]), 200, {"atlas|alice"}),
        "member bob": (atlas.token("bob", ["/atlas"]), 200, {"atlas|bob"}),
        "atlas manager": (
            atlas.token("dan", ["/atlas", "/atlas/af-managers"]),
            200,
            {"atlas|alice", "atlas|bob"},
        ),
        "cms manager": (cms.token("erin", ["/cms", "/cms/af-managers"]), 200, {"cms|carol"}),
        "facility admin": (
            atlas.token("root", ["/af-admins"]),
            200,
            {"atlas|alice", "atlas|bob", "cms|carol", "afmon:unmapped|af"},
        ),
        "forged signature": (
            atlas.token("alice", ["/af-admins"], key=other_key),
            401,
            set(),
        ),
        "expired": (atlas.token("alice", ["/atlas"], exp=int(NOW) - 3600), 401, set()),
        "wrong audience": (atlas.token("alice", ["/atlas"], aud="https://other"), 401, set()),
        "untrusted issuer": (
            atlas.token("alice", ["/af-admins"], iss="https://evil.example/"),
            401,
            set(),
        ),
        "agent token": ("static-token-of-the-af-facility-0123456789", 401, set()),
    }
    for who, (token, status, expected) in matrix.items():
        got_status, seen = members_seen(app, token)
        assert got_status == status, who
        assert seen == expected, who


def test_every_read_endpoint_refuses_anonymous_and_agent_tokens(app: TestClient) -> None:
    paths = [
        path
        for path, ops in app.get("/openapi.json").json()["paths"].items()
        if path.startswith("/api/") and "get" in ops
    ]
    assert "/api/v1/usage" in paths
    for path in paths:
        url = path.replace("{", "").replace("}", "")
        assert app.get(url).status_code == 401, path
        agent = {"Authorization": "Bearer static-token-of-the-af-facility-0123456789"}
        assert app.get(url, headers=agent).status_code == 401, path


def test_reader_tokens_cannot_write(
    app: TestClient, issuers: tuple[str, dict[str, Issuer]]
) -> None:
    _, iss = issuers
    admin = iss["atlas"].token("root", ["/af-admins"])
    batch = wire.Batch(version=1, agent_id="x", facility="af", node="n", seq=1, sent_at=NOW)
    r = app.post(
        "/api/v1/ingest", content=wire.encode(batch), headers={"Authorization": f"Bearer {admin}"}
    )
    assert r.status_code == 401


def test_agent_tokens_are_bound_to_a_facility_and_revocable(app: TestClient) -> None:
    services = app.app.state.services
    token = create_token(services.engine, "node-17", "af")
    other = create_token(services.engine, "node-99", "other-af")
    services.agents = AgentAuthenticator(services.engine, {}, cache_ttl=0.0)

    def post(tok: str, seq: int, facility: str = "af") -> int:
        b = wire.Batch(
            version=1,
            agent_id=f"agent-{tok[-6:]}",
            facility=facility,
            node="n",
            seq=seq,
            sent_at=NOW,
        )
        return app.post(
            "/api/v1/ingest", content=wire.encode(b), headers={"Authorization": f"Bearer {tok}"}
        ).status_code

    assert post(token, 1) == 200
    # a token for other-af cannot write af's data: what it posts, whatever the batch's own
    # facility field says, is other-af's (so a batch spooled under a wrong AFMON_FACILITY is
    # delivered, not stuck, once the agent has the right token)
    assert post(other, 1) == 200
    with services.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT facility FROM applied_batch WHERE agent_id = ?", (f"agent-{other[-6:]}",)
        ).fetchall()
    assert rows == [("other-af",)]
    revoke_token(services.engine, "node-17")
    assert post(token, 2) == 401
    with services.engine.connect() as conn:
        stored = [r[0] for r in conn.exec_driver_sql("SELECT token_sha256 FROM agent_token")]
    assert token not in stored and len(stored[0]) == 64  # only hashes are kept


def test_ingest_rate_limit_per_agent_says_when_to_retry(app: TestClient) -> None:
    services = app.app.state.services
    token = create_token(services.engine, "busy-node", "af")
    services.agents = AgentAuthenticator(services.engine, {}, cache_ttl=0.0)
    statuses = []
    for seq in range(1, 9):
        b = wire.Batch(version=1, agent_id="busy", facility="af", node="n", seq=seq, sent_at=NOW)
        r = app.post(
            "/api/v1/ingest", content=wire.encode(b), headers={"Authorization": f"Bearer {token}"}
        )
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert "more than 1 batches/s" in r.json()["detail"]["message"]
    assert statuses[:5] == [200] * 5 and 429 in statuses[5:]


def test_security_headers_everywhere(app: TestClient) -> None:
    for path in ("/", "/metrics", "/healthz", "/api/v1/usage?start=0&end=1"):
        r = app.get(path)
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path


def test_weak_static_tokens_are_refused_outside_local_mode(tmp_path: Path) -> None:
    weak = ServerSettings(facility_tokens={"af": "secret"})
    assert weak_secrets(weak) == [
        "the AFMON_FACILITY_TOKENS token of 'af' has 6 characters; use at least 24 random ones, "
        "or per-agent tokens (`afmon agent-token create`)"
    ]
    assert weak_secrets(ServerSettings(facility_tokens={"af": "secret"}, local_mode=True)) == []
    assert weak_secrets(ServerSettings(facility_tokens={"af": "aaaaaaaaaaaaaaaaaaaaaaaaaaaa"}))


MAPPED = """
[vos.atlas]
issuer = "https://atlas-iam.example/"
manager_groups = ["/atlas/af-managers"]
client_id = "afmon-at-atlas"
client_secret = "atlas-secret"
[vos.cms]
issuer = "https://cms-iam.example/"
"""


def test_an_issuer_is_written_once_in_the_identity_map(tmp_path: Path) -> None:
    (tmp_path / "identity.toml").write_text(MAPPED)
    settings = ServerSettings(identity_file=tmp_path / "identity.toml")
    atlas = settings.oidc_issuers["https://atlas-iam.example/"]
    cms = settings.oidc_issuers["https://cms-iam.example/"]
    assert (atlas.vo, atlas.manager_groups, atlas.admin_groups) == (
        "atlas",
        ["/atlas/af-managers"],
        [],
    )
    assert atlas.client_id == "afmon-at-atlas"
    assert atlas.client_secret and atlas.client_secret.get_secret_value() == "atlas-secret"
    assert (cms.vo, cms.manager_groups, cms.admin_groups, cms.client_id) == ("cms", [], [], None)
    # sign-in: atlas through its own client; cms only once a global client is set
    assert settings.sign_in_issuers == ["https://atlas-iam.example/"]
    with_global = ServerSettings(identity_file=tmp_path / "identity.toml", oidc_client_id="g")
    assert len(with_global.sign_in_issuers) == 2
    # named in AFMON_OIDC_ISSUERS too, with the same VO: the fields set there win
    both = ServerSettings(
        identity_file=tmp_path / "identity.toml",
        oidc_issuers={
            "https://cms-iam.example/": {"vo": "cms", "admin_groups": ["/cms/af-admins"]},
            "https://other.example/": {"vo": "lhcb"},
        },
    )
    assert both.oidc_issuers["https://cms-iam.example/"].admin_groups == ["/cms/af-admins"]
    assert both.oidc_issuers["https://atlas-iam.example/"].client_id == "afmon-at-atlas"
    assert set(both.oidc_issuers) == {
        "https://atlas-iam.example/",
        "https://cms-iam.example/",
        "https://other.example/",
    }


def test_the_identity_maps_issuer_roles_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "identity.toml"
    path.write_text('[vos.atlas]\nissuer = "https://i/"\nadmin_groups = ["af-admins"]\n')
    with pytest.raises(ValueError, match="vos.atlas.admin_groups.*not a WLCG group path"):
        ServerSettings(identity_file=path)
    path.write_text('[vos.atlas]\nissuer = "https://i/"\n[vos.cms]\nissuer = "https://i/"\n')
    with pytest.raises(ValueError, match=r"\[vos.cms\] and \[vos.atlas\] name the same issuer"):
        ServerSettings(identity_file=path)


def test_an_issuer_with_two_vos_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "identity.toml").write_text(MAPPED)
    env = {
        **os.environ,
        "AFMON_DATABASE_URL": f"sqlite:///{tmp_path}/x.sqlite",
        "AFMON_IDENTITY_FILE": str(tmp_path / "identity.toml"),
        "AFMON_OIDC_ISSUERS": json.dumps({"https://atlas-iam.example/": {"vo": "cms"}}),
    }
    r = subprocess.run(
        [sys.executable, "-m", "afmon.aggregator.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr
    assert "'https://atlas-iam.example/' is VO 'cms' in AFMON_OIDC_ISSUERS" in line
    assert f"VO 'atlas' in the identity map {tmp_path / 'identity.toml'}" in line
