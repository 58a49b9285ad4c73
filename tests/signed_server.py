"""A real `afmon serve` with sign-in configured against a local OIDC issuer, and data.

Alice (1 core-hour) and Bob (2 core-hours) are atlas members; Dan manages atlas.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from afmon.collectors import wire
from tests.conftest import ServerProcess, free_port
from tests.oidc_issuer import Issuer, IssuerServer

AUD = "https://afmon.test"
USERS = {"alice": ["/atlas"], "bob": ["/atlas"], "dan": ["/atlas", "/atlas/af-managers"]}
IDENTITY = """
[vos.atlas]
issuer = "{issuer}"
[[members]]
vo = "atlas"
subject = "alice"
display_name = "Alice Adams"
accounts = [{{ facility = "test-af", local = "alice" }}]
[[members]]
vo = "atlas"
subject = "bob"
display_name = "Bob Brown"
accounts = [{{ facility = "test-af", local = "bob" }}]
"""


@pytest.fixture
def signed_server(
    tmp_path, server_factory: Callable[..., ServerProcess]
) -> Iterator[tuple[ServerProcess, Issuer]]:
    issuer = Issuer("atlas", AUD, USERS)
    with IssuerServer(free_port(), [issuer]):
        identity = tmp_path / "identity.toml"
        identity.write_text(IDENTITY.format(issuer=issuer.url))
        server = server_factory(
            identity_file=identity,
            local_mode="false",
            oidc_issuers=json.dumps(
                {issuer.url: {"vo": "atlas", "manager_groups": ["/atlas/af-managers"]}}
            ),
            oidc_audience=AUD,
            oidc_client_id=issuer.client_id,
            oidc_client_secret=issuer.client_secret,
            session_secret="s3ssion-secret-for-tests-0123456789abcdef",
        )
        ingest(server, {"alice": 3600.0, "bob": 7200.0})
        yield server, issuer


ATLAS_CLIENT = ("afmon-at-atlas", "atlas-client-secret")
CMS_CLIENT = ("afmon-at-cms", "cms-client-secret")
TWO_VOS = """
[vos.atlas]
issuer = "{atlas}"
client_id = "{atlas_id}"
client_secret = "{atlas_secret}"
manager_groups = ["/atlas/af-managers"]
[vos.cms]
issuer = "{cms}"
client_id = "{cms_id}"
client_secret = "{cms_secret}"
[[members]]
vo = "atlas"
subject = "alice"
display_name = "Alice Adams"
accounts = [{{ facility = "test-af", local = "alice" }}]
[[members]]
vo = "atlas"
subject = "bob"
display_name = "Bob Brown"
accounts = [{{ facility = "test-af", local = "bob" }}]
[[members]]
vo = "cms"
subject = "carol"
display_name = "Carol Cruz"
accounts = [{{ facility = "test-af", local = "carol" }}]
"""


@pytest.fixture(params=["global client", "no global client"])
def two_issuer_server(
    request: pytest.FixtureRequest, tmp_path, server_factory: Callable[..., ServerProcess]
) -> Iterator[tuple[ServerProcess, Issuer, Issuer]]:
    """Two VOs, each issuer written once (in the identity map, no AFMON_OIDC_ISSUERS) with
    the dashboard's own client at it; the global client, when there is one, is one neither
    issuer knows (without it, the issuers' own clients alone turn sign-in on)."""
    atlas = Issuer("atlas", AUD, USERS, *ATLAS_CLIENT)
    cms = Issuer(
        "cms", AUD, {"carol": ["/cms"], "dan": ["/cms", "/atlas/af-managers"]}, *CMS_CLIENT
    )
    with IssuerServer(free_port(), [atlas, cms]):
        identity = tmp_path / "identity.toml"
        identity.write_text(
            TWO_VOS.format(
                atlas=atlas.url,
                atlas_id=ATLAS_CLIENT[0],
                atlas_secret=ATLAS_CLIENT[1],
                cms=cms.url,
                cms_id=CMS_CLIENT[0],
                cms_secret=CMS_CLIENT[1],
            )
        )
        server = server_factory(
            identity_file=identity,
            local_mode="false",
            oidc_audience=AUD,
            session_secret="s3ssion-secret-for-tests-0123456789abcdef",
            **(
                {"oidc_client_id": "global-client-no-issuer-knows",
                 "oidc_client_secret": "global-secret"}
                if request.param == "global client" else {}
            ),
        )  # fmt: skip
        ingest(server, {"alice": 3600.0, "bob": 7200.0, "carol": 1800.0})
        yield server, atlas, cms


def ingest(server: ServerProcess, cpu: dict[str, float]) -> None:
    """One agent batch: `cpu` seconds per local user over the last minute."""
    now = time.time()
    series = [
        wire.Series(
            metric="user_cpu_seconds",
            unit="seconds",
            kind="counter",
            labels={"user": user, "node": "n1"},
            times=[now - 60, now - 30],
            values=[0.0, seconds],
            created=now - 60,
        )
        for user, seconds in cpu.items()
    ]
    batch = wire.Batch(
        version=1, agent_id="a", facility="test-af", node="n1", seq=1, sent_at=now, series=series
    )
    r = httpx.post(
        f"{server.url}/api/v1/ingest",
        content=wire.encode(batch),
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert r.status_code == 200, r.text
