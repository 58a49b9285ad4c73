"""Authority is (issuer, group): two VOs with their own issuers, every role from every issuer,
against every read route and every dashboard page; zero leaks.

Two real local issuers (RSA keys, OpenID configuration and JWKS over HTTP) sign WLCG-profile
tokens. Each token is used as a bearer token on every read route and, turned into a sign-in
session exactly as `/auth/callback` does, on every page callback of the dashboard. What each
answer names (members' subjects) must be exactly what its role may see.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from afmon.aggregator.auth.login import SESSION_COOKIE
from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.report.week import Week
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from tests.conftest import free_port
from tests.oidc_issuer import Issuer, IssuerServer

NOW = time.time()
WEEK = Week.last_complete(NOW)
T = WEEK.start + 86400 + 3600.0  # inside the last complete week: the weekly report has it
AUD = "https://afmon.test"
AGENT = "static-token-of-the-af-facility-0123456789"
SUBJECTS = {"alice": "atlas", "bob": "atlas", "carol": "cms", "dave": "cms"}
UNMAPPED = "mallory"  # a local account mapped to nobody: only the facility admin sees it,
UNMAPPED_MEMBER = "afmon:unmapped"  # as this member of the facility
IDENTITY = """
[vos.atlas]
issuer = "{base}/atlas"
[vos.cms]
issuer = "{base}/cms"
""" + "".join(
    f"""
[[members]]
vo = "{vo}"
subject = "{sub}"
display_name = "{sub.title()}"
accounts = [{{ facility = "af", local = "{sub}" }}]
"""
    for sub, vo in SUBJECTS.items()
)


@pytest.fixture(scope="module")
def issuers() -> Iterator[dict[str, Issuer]]:
    found = {"atlas": Issuer("atlas", AUD), "cms": Issuer("cms", AUD)}
    with IssuerServer(free_port(), list(found.values())):
        yield found


@pytest.fixture(scope="module")
def client(issuers: dict[str, Issuer], tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    tmp = tmp_path_factory.mktemp("matrix")
    base = issuers["atlas"].url.rsplit("/", 1)[0]
    (tmp / "identity.toml").write_text(IDENTITY.replace("{base}", base))
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp}/matrix.sqlite",
        identity_file=tmp / "identity.toml",
        facility_tokens={"af": AGENT},
        oidc_issuers={
            issuers["atlas"].url: {
                "vo": "atlas",
                "manager_groups": ["/atlas/af-managers"],
                "admin_groups": ["/atlas/af-admins"],
            },
            issuers["cms"].url: {"vo": "cms", "manager_groups": ["/cms/af-managers"]},
        },
        oidc_audience=AUD,
        oidc_client_id="afmon",
        oidc_client_secret="client-secret",
        session_secret="a-session-secret-of-at-least-32-characters",
        alert_interval_seconds=0,
    )
    c = TestClient(create_app(settings, clock=lambda: NOW))
    users = [*SUBJECTS, UNMAPPED]
    series = [
        wire.Series(
            metric="user_cpu_seconds",
            unit="seconds",
            kind="counter",
            labels={"user": user, "node": "n1"},
            times=[T, T + 600],
            values=[0.0, 100.0 * (i + 1)],
            created=T,
        )
        for i, user in enumerate(users)
    ]
    jobs = [  # one batch job each: the per-account/QoS reads have rows to leak
        wire.Event(kind="batch_job", id=f"job-{i}", user=user, start=T, end=T + 600,
                   attrs={"cores": 1, "cpu_seconds": 60.0, "account": f"acct{i}",
                          "qos": "normal", "partition": "main"})  # fmt: skip
        for i, user in enumerate(users)
    ]
    batch = wire.Batch(
        version=1, agent_id="a", facility="af", node="n1", seq=1, sent_at=NOW, series=series,
        events=jobs,
    )  # fmt: skip
    r = c.post("/api/v1/ingest", content=wire.encode(batch), headers=_bearer(AGENT))
    assert r.status_code == 200 and r.json()["status"] == "applied", r.text
    return c


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Case:
    token: str
    role: str | None  # None: refused (401)
    sees: set[str]  # subjects (and the unmapped account) that its answers may name


def _cases(iss: dict[str, Issuer]) -> dict[str, Case]:
    atlas, cms = iss["atlas"], iss["cms"]
    everyone = {*SUBJECTS, UNMAPPED_MEMBER}
    atlas_all, cms_all = {"alice", "bob"}, {"carol", "dave"}
    entitlement = "urn:geant:cern.ch:group:atlas:af-admins"
    return {
        # the honest roles
        "atlas member": Case(atlas.token("alice", ["/atlas"]), "member", {"alice"}),
        "cms member": Case(cms.token("carol", ["/cms"]), "member", {"carol"}),
        "atlas manager": Case(
            atlas.token("bob", ["/atlas", "/atlas/af-managers"]), "vo_manager", atlas_all
        ),
        "cms manager": Case(cms.token("dave", ["/cms", "/cms/af-managers"]), "vo_manager", cms_all),
        "atlas admin": Case(atlas.token("root", ["/atlas/af-admins"]), "facility_admin", everyone),
        # a group of another issuer grants nothing
        "cms token, atlas admin group": Case(
            cms.token("carol", ["/cms", "/atlas/af-admins"]), "member", {"carol"}
        ),
        "cms token, atlas admin entitlement": Case(
            cms.token("carol", [], eduperson_entitlement=[entitlement]), "member", {"carol"}
        ),
        "cms token, atlas manager group": Case(
            cms.token("carol", ["/atlas/af-managers"]), "member", {"carol"}
        ),
        "atlas token, cms manager group": Case(
            atlas.token("alice", ["/cms/af-managers"]), "member", {"alice"}
        ),
        "cms manager with atlas groups": Case(
            cms.token("dave", ["/cms/af-managers", "/atlas/af-managers", "/atlas/af-admins"]),
            "vo_manager",
            cms_all,
        ),
        # prefix-like names are other groups
        "atlas token, prefix-like groups": Case(
            atlas.token(
                "alice",
                ["/atlas/af-admins-x", "/atlas/af-admin", "/atlas/af-admins/sub", "/atlas/af"],
            ),
            "member",
            {"alice"},
        ),
        "atlas token, case-changed group": Case(
            atlas.token("alice", ["/ATLAS/af-admins", "/atlas/AF-managers"]), "member", {"alice"}
        ),
        # malformed claims: refused with a reason, never a 500
        "groups is a number": Case(atlas.token("alice", 5), None, set()),  # type: ignore[arg-type]
        "groups is a string": Case(atlas.token("alice", "/atlas/af-admins"), None, set()),  # type: ignore[arg-type]
        "groups holds a number": Case(atlas.token("alice", ["/atlas", 7]), None, set()),
        "entitlement is an object": Case(
            atlas.token("alice", [], eduperson_entitlement={"a": 1}), None, set()
        ),
        "empty sub": Case(atlas.token("", ["/atlas/af-admins"]), None, set()),
        "blank sub": Case(atlas.token("  ", ["/atlas"]), None, set()),
        "sub of 256 characters": Case(atlas.token("a" * 256, ["/atlas"]), None, set()),
        "sub is a number": Case(atlas.token(42, ["/atlas"]), None, set()),  # type: ignore[arg-type]
        "foreign issuer claiming atlas": Case(
            cms.token("root", ["/atlas/af-admins"], iss=atlas.url), None, set()
        ),
        "agent credential": Case(AGENT, None, set()),
    }


def _named(body: str) -> set[str]:
    """The subjects, local accounts and unmapped members that an answer names."""
    names = [*SUBJECTS, UNMAPPED, UNMAPPED_MEMBER]
    return {name for name in names if re.search(rf"\b{name}\b", body, re.I)}


def _read_routes(client: TestClient) -> list[str]:
    week = str(WEEK)
    urls = [
        f"/api/v1/usage?start=0&end={NOW + 3600}&by={by}"
        for by in ("member", "vo", "vo,group", "facility")
    ]
    urls += [
        f"/api/v1/reports/weekly?week={week}&format={fmt}"
        for fmt in ("json", "html", "apel-v03", "apel-v04")
    ]
    urls += [
        f"/api/v1/reports/weekly?week={week}&format=csv&level={level}"
        for level in ("member", "group", "vo", "facility")
    ]
    urls += ["/api/v1/alerts?status=all"]
    urls += [f"/api/v1/batch?start=0&end={NOW + 3600}&by={by}" for by in ("account", "member,qos")]
    span = f"start=0&end={NOW + 3600}"
    urls += [f"/api/v1/facilities?{span}", f"/api/v1/availability?{span}&per=day"]
    urls += [f"/api/v1/gpu-breadth?{span}"]
    urls += [f"/api/v1/failures?{span}&by={by}" for by in ("member", "vo")]
    urls += [f"/api/v1/failures/batch?{span}", f"/api/v1/data-formats?{span}&by=member"]
    urls += [f"/api/v1/access-methods?{span}&period={period}" for period in ("week", "month")]
    # every GET route of the API is in the list (a new one must be added here)
    documented = {
        p for p, ops in client.get("/openapi.json").json()["paths"].items()
        if p.startswith("/api/") and "get" in ops
    }  # fmt: skip
    assert documented == {u.split("?")[0] for u in urls}
    return urls


def test_principal_of_each_token_is_bound_to_its_issuer(
    client: TestClient, issuers: dict[str, Issuer]
) -> None:
    verifier = client.app.state.services.verifier
    for who, case in _cases(issuers).items():
        if case.role is None:
            continue
        p = verifier.principal(case.token)
        assert p.role == case.role, who
        assert p.vo == ("cms" if who.startswith("cms") else "atlas"), who  # the issuer's VO


def test_every_read_route_for_every_role_of_every_issuer(
    client: TestClient, issuers: dict[str, Issuer]
) -> None:
    urls = _read_routes(client)
    leaks: list[str] = []
    for who, case in _cases(issuers).items():
        for url in urls:
            r = client.get(url, headers=_bearer(case.token))
            if case.role is None:
                assert r.status_code == 401, (who, url, r.status_code, r.text[:200])
                assert r.json()["detail"].startswith("bearer token refused"), (who, r.text)
                continue
            assert r.status_code in (200, 404), (who, url, r.status_code, r.text[:300])
            named = _named(r.text)
            if not named <= case.sees:
                leaks.append(f"{who} {url}: {sorted(named - case.sees)}")
        if case.role is not None:  # the usage API names exactly what the role may see
            r = client.get(urls[0], headers=_bearer(case.token))
            assert _named(r.text) == case.sees, who
    assert not leaks


def _page_callbacks(client: TestClient) -> list[tuple[str, dict[str, Any]]]:
    """Every dashboard callback that reads the principal, with inputs of an ordinary visit."""
    spec = client.get("/_dash-dependencies").json()
    found = []
    for cb in spec:
        deps = [*cb["inputs"], *cb["state"]]
        if any(d["id"] == "principal-picker" for d in deps):
            found.append((cb["output"], cb))
    assert len(found) >= 5, [o for o, _ in found]
    return found


def _call(client: TestClient, output: str, cb: dict[str, Any], cookie: str) -> str:
    values = {"principal-picker.value": "session", "range.value": "30d"}

    def fill(deps: list[dict[str, str]]) -> list[dict[str, Any]]:
        return [{**d, "value": values.get(f"{d['id']}.{d['property']}")} for d in deps]

    parts = [
        {"id": p.rsplit(".", 1)[0], "property": p.rsplit(".", 1)[1].split("@")[0]}
        for p in output.strip(".").split("...")
    ]
    body = {
        "output": output,
        "outputs": parts if output.startswith("..") else parts[0],
        "inputs": fill(cb["inputs"]),
        "state": fill(cb["state"]),
        "changedPropIds": ["principal-picker.value"],
    }
    client.cookies.set(SESSION_COOKIE, cookie)
    try:
        r = client.post("/_dash-update-component", json=body)
    finally:
        client.cookies.clear()
    assert r.status_code in (200, 204), (output, r.status_code, r.text[:300])
    return r.text


def test_every_dashboard_page_for_every_role_of_every_issuer(
    client: TestClient, issuers: dict[str, Issuer]
) -> None:
    services = client.app.state.services
    callbacks = _page_callbacks(client)
    leaks: list[str] = []
    shown: dict[str, set[str]] = {}
    for who, case in _cases(issuers).items():
        if case.role is None:
            continue
        # the session `/auth/callback` keeps after verifying the access token
        cookie = services.sessions.dump(services.verifier.principal(case.token), NOW + 3600)
        seen: set[str] = set()
        for output, cb in callbacks:
            named = _named(_call(client, output, cb, cookie))
            seen |= named
            if not named <= case.sees:
                leaks.append(f"{who} {output}: {sorted(named - case.sees)}")
        shown[who] = seen
    assert not leaks
    # the pages do show data: the admin sees every member, a member sees themself
    assert shown["atlas admin"] >= set(SUBJECTS)
    assert shown["cms manager"] == {"carol", "dave"}
    assert "alice" in shown["atlas member"] and "carol" in shown["cms token, atlas admin group"]


def test_refusals_name_the_claim(issuers: dict[str, Issuer], client: TestClient) -> None:
    atlas = issuers["atlas"]
    for token, reason in [
        (atlas.token("alice", 5), "claim 'wlcg.groups' must be a list of strings"),  # type: ignore[arg-type]
        (atlas.token("", ["/atlas"]), "claim 'sub' must be a non-empty string"),
        (atlas.token("a" * 256, ["/atlas"]), "claim 'sub' is longer than 255 characters"),
        (
            atlas.token("alice", [], eduperson_entitlement="x"),
            "claim 'eduperson_entitlement' must be a list of strings",
        ),
    ]:
        r = client.get(f"/api/v1/usage?start=0&end={NOW}", headers=_bearer(token))
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert reason in r.json()["detail"]
        # the connection stays usable: the next request on the same client is answered
        assert client.get("/healthz").status_code == 200


def test_issuerless_admin_groups_are_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="AFMON_ADMIN_GROUPS is no longer accepted"):
        ServerSettings(admin_groups=["/af-admins"])
    with pytest.raises(ValueError, match="is not a WLCG group path"):
        ServerSettings(oidc_issuers={"https://i/": {"vo": "x", "admin_groups": ["af-admins"]}})
