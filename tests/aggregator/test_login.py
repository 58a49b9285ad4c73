"""Dashboard sign-in end to end: a real server process, a local OIDC issuer, real HTTP.

The browser's part is played by an httpx client that follows redirects and keeps
cookies; tests/dashboard/test_login_browser.py does the same in headless Chromium.
"""

from __future__ import annotations

import time
from contextlib import closing

import httpx

from afmon.aggregator.auth.login import Sessions
from afmon.aggregator.query.reads import Principal
from tests.conftest import ServerProcess
from tests.oidc_issuer import Issuer
from tests.signed_server import ATLAS_CLIENT, CMS_CLIENT


def sign_in(server: ServerProcess, issuer: Issuer, user: str) -> httpx.Client:
    client = httpx.Client(follow_redirects=True, timeout=30)
    r = client.get(f"{server.url}/auth/login", params={"issuer": issuer.url, "login_hint": user})
    assert r.status_code == 200, r.text
    assert str(r.url) == f"{server.url}/"  # back at the dashboard
    return client


def seen_members(client: httpx.Client, server: ServerProcess) -> set[str]:
    r = client.get(
        f"{server.url}/api/v1/usage", params={"start": 0, "end": time.time() + 7200, "by": "member"}
    )
    assert r.status_code == 200, r.text
    return {row["member"].rsplit("|", 1)[-1] for row in r.json()}


def test_sign_in_scopes_what_each_person_sees(signed_server) -> None:
    server, issuer = signed_server
    assert httpx.get(f"{server.url}/api/v1/usage", params={"start": 0, "end": 1}).status_code == 401
    with closing(sign_in(server, issuer, "alice")) as alice:
        assert seen_members(alice, server) == {"alice"}
        cookie = alice.cookies.get("afmon_session")
        assert cookie  # signed, HttpOnly
    with closing(sign_in(server, issuer, "dan")) as manager:
        assert seen_members(manager, server) == {"alice", "bob"}
        manager.get(f"{server.url}/auth/logout")
        r = manager.get(f"{server.url}/api/v1/usage", params={"start": 0, "end": 1})
        assert r.status_code == 401


def test_a_forged_or_tampered_session_cookie_is_refused(signed_server) -> None:
    server, issuer = signed_server
    with closing(sign_in(server, issuer, "alice")) as alice:
        cookie = alice.cookies.get("afmon_session")
    forged = Sessions("not-the-server-secret-0123456789abcdef").dump(
        Principal("facility_admin", name="mallory"), time.time() + 3600
    )
    payload, _, signature = cookie.partition(".")
    for bad in (forged, cookie[:-2] + "xx", payload + "." + signature[::-1]):
        r = httpx.get(
            f"{server.url}/api/v1/usage",
            params={"start": 0, "end": 1},
            cookies={"afmon_session": bad},
        )
        assert r.status_code == 401


def test_unknown_users_and_bad_state_are_refused(signed_server) -> None:
    server, issuer = signed_server
    with httpx.Client(follow_redirects=True, timeout=30) as client:
        r = client.get(
            f"{server.url}/auth/login", params={"issuer": issuer.url, "login_hint": "mallory"}
        )
        assert r.status_code == 401
        assert "the issuer refused the sign-in: access_denied" in r.json()["detail"]
    r = httpx.get(f"{server.url}/auth/callback", params={"code": "x", "state": "y"})
    assert r.status_code == 400 and "start again at /auth/login" in r.json()["detail"]
    r = httpx.get(f"{server.url}/auth/login", params={"issuer": "https://evil.example/"})
    assert r.status_code == 400 and "pick an issuer" in r.json()["detail"]


def test_each_issuer_signs_in_through_its_own_client(two_issuer_server) -> None:
    """Issuers written once, in the identity map, each with the dashboard's own client: the
    local issuers refuse any other client id or secret, so signing in proves which was used."""
    server, atlas, cms = two_issuer_server
    for issuer, client_id in ((atlas, ATLAS_CLIENT[0]), (cms, CMS_CLIENT[0])):
        r = httpx.get(f"{server.url}/auth/login", params={"issuer": issuer.url})
        assert r.status_code == 302
        assert f"client_id={client_id}&" in r.headers["location"]
    with closing(sign_in(server, atlas, "alice")) as alice:
        assert seen_members(alice, server) == {"alice"}
    with closing(sign_in(server, cms, "carol")) as carol:
        assert seen_members(carol, server) == {"carol"}
    with closing(sign_in(server, atlas, "dan")) as manager:  # the map's manager_groups
        assert seen_members(manager, server) == {"alice", "bob"}
    # the same group asserted by the other VO's issuer grants nothing
    with closing(sign_in(server, cms, "dan")) as dan_at_cms:
        assert seen_members(dan_at_cms, server) == set()


def test_a_token_for_another_client_is_refused(two_issuer_server) -> None:
    server, atlas, cms = two_issuer_server

    def status(token: str) -> int:
        return httpx.get(
            f"{server.url}/api/v1/usage",
            params={"start": 0, "end": 1},
            headers={"Authorization": f"Bearer {token}"},
        ).status_code

    assert status(atlas.token("alice", ["/atlas"])) == 200  # AFMON_OIDC_AUDIENCE
    assert status(atlas.token("alice", ["/atlas"], aud=ATLAS_CLIENT[0])) == 200  # its client
    assert status(cms.token("carol", ["/cms"], aud=CMS_CLIENT[0])) == 200
    assert status(atlas.token("alice", ["/atlas"], aud="another-client-of-atlas")) == 401
    assert status(atlas.token("alice", ["/atlas"], aud=CMS_CLIENT[0])) == 401  # cms's client
    assert status(cms.token("carol", ["/cms"], aud=ATLAS_CLIENT[0])) == 401
    assert status(atlas.token("alice", ["/atlas"], aud="global-client-no-issuer-knows")) == 401
