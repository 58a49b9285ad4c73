"""The quarantine on the facility page: records refused at ingest, posted as real wire batches
through the server's ingest API, then the page's callback called over HTTP as each principal.
A facility admin sees the pending records counted by facility and reason and the newest ones
(only their facility's when bound to one); members and VO managers see nothing of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from dash import Dash
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from afmon.aggregator.auth.login import SESSION_COOKIE, Sessions
from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.reads import Principal, Query
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from afmon.dashboard.app import create_dash
from afmon.dashboard.figures import fmt_utc
from afmon.dashboard.pages.facility import QUARANTINE_NEWEST
from tests.dash_callbacks import post_callback

NOW = 1_790_000_000.0  # 2026-09-21T14:13:20Z
TOKENS = {"af": "agent-token-af", "other": "agent-token-other"}
SECRET = "a-session-secret-of-at-least-32-characters"
OUTPUT = "fac-quarantine.children"
IDENTITY = """
[vos.atlas]
issuer = "https://iss-a/"
[vos.cms]
issuer = "https://iss-c/"
[[members]]
vo = "atlas"
subject = "alice"
display_name = "Alice Archer"
accounts = [{ facility = "af", local = "alice" }]
[[members]]
vo = "cms"
subject = "bob"
display_name = "Bob Brown"
accounts = [{ facility = "af", local = "bob" }]
"""
RESERVED = "label 'vo' of series user_cpu_seconds is reserved"


def cpu(user: str, node: str, value: float = 10.0, **labels: str) -> wire.Series:
    return wire.Series(
        metric="user_cpu_seconds",
        unit="seconds",
        kind="counter",
        labels={"user": user, "node": node, **labels},
        times=[NOW - 10],
        values=[value],
        created=NOW - 30,
    )


def post(client: TestClient, facility: str, node: str, series: list[wire.Series]) -> Any:
    batch = wire.Batch(
        version=wire.WIRE_VERSION,
        agent_id=f"agent-{facility}",
        facility=facility,
        node=node,
        seq=1,
        sent_at=NOW,
        series=series,
    )
    r = client.post(
        "/api/v1/ingest",
        content=wire.encode(batch),
        headers={"Authorization": f"Bearer {TOKENS[facility]}"},
    )
    assert r.status_code == 200 and r.json()["status"] == "partial", r.text
    return r.json()


def server(tmp_path: Path) -> TestClient:
    (tmp_path / "identity.toml").write_text(IDENTITY)
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path}/afmon.sqlite",
        identity_file=tmp_path / "identity.toml",
        facility_tokens=TOKENS,
    )
    return TestClient(create_app(settings, clock=lambda: NOW, with_dashboard=False))


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    """af: alice's record applied, bob's refused (a reserved `vo` label); other: one value
    beyond the limit refused."""
    client = server(tmp_path)
    answer = post(client, "af", "n1", [cpu("alice", "n1"), cpu("bob", "n1", vo="cms")])
    assert [r["reason"] for r in answer["refused"]] == ["reserved_label"]
    answer = post(client, "other", "n9", [cpu("zoe", "n9", value=1e308)])
    assert [r["reason"] for r in answer["refused"]] == ["value_too_large"]
    return client.app.state.services.engine


def local_dash(engine: Engine) -> Dash:
    return create_dash(Query(engine), ServerSettings(local_mode=True), clock=lambda: NOW)


def as_picked(engine: Engine, key: str) -> list[Any]:
    """The card's children for a principal of the local-mode picker."""
    out = post_callback(local_dash(engine), [OUTPUT], {"principal-picker.value": key})
    return out["fac-quarantine"]["children"]


def as_signed_in(engine: Engine, p: Principal) -> list[Any]:
    """The card's children for a signed-in principal (its session cookie, as after
    `/auth/callback`)."""
    sessions = Sessions(SECRET)
    settings = ServerSettings(
        oidc_issuers={"https://iss-a/": {"vo": "atlas", "admin_groups": ["/atlas/admins"]}},
        oidc_client_id="afmon",
        session_secret=SECRET,
    )
    app = create_dash(Query(engine), settings, clock=lambda: NOW, sessions=sessions)
    key = next(k for k in app.callback_map if k.startswith("fac-quarantine."))
    body = {
        "output": key,
        "outputs": {"id": "fac-quarantine", "property": "children"},
        "inputs": [{"id": "principal-picker", "property": "value", "value": "session"}],
        "changedPropIds": ["principal-picker.value"],
    }
    client = app.server.test_client()
    client.set_cookie(SESSION_COOKIE, sessions.dump(p, NOW + 3600))
    r = client.post("/_dash-update-component", json=body)
    assert r.status_code == 200, r.data[:500]
    return r.get_json()["response"]["fac-quarantine"]["children"]


def find(tree: Any, id_: str) -> dict[str, Any] | None:
    """The component with this id anywhere in a callback's JSON answer."""
    if isinstance(tree, dict):
        if tree.get("props", {}).get("id") == id_:
            return tree
        tree = list(tree.values())
    if isinstance(tree, list):
        for child in tree:
            if (hit := find(child, id_)) is not None:
                return hit
    return None


def rows(tree: Any, id_: str) -> list[list[Any]]:
    """The body rows of a rendered `TableData` table, as cell values."""
    table = find(tree, id_)
    assert table is not None and table["type"] == "Table", (id_, table)
    body = table["props"]["children"][1]["props"]["children"]
    return [[td["props"]["children"] for td in tr["props"]["children"]] for tr in body]


def test_the_admin_sees_counts_by_facility_and_reason_and_the_records(engine: Engine) -> None:
    card = as_picked(engine, "admin")
    assert card[0]["props"]["children"] == "Refused records (quarantine)"
    assert rows(card, "fac-quarantine-counts") == [
        ["af", "reserved_label", "1", fmt_utc(NOW)],
        ["other", "value_too_large", "1", fmt_utc(NOW)],
    ]
    records = sorted(rows(card, "fac-quarantine-records"), key=lambda r: r[1])
    assert [r[:7] for r in records] == [
        [fmt_utc(NOW), "af", "agent-af", "n1", "series", "reserved_label", "$.series[1].labels.vo"],
        [fmt_utc(NOW), "other", "agent-other", "n9", "series", "value_too_large",
         "$.series[0].values"],
    ]  # fmt: skip
    assert records[0][7].startswith(RESERVED) and "AFMON_MAX_SAMPLE_VALUE" in records[1][7]
    hint = json.dumps(find(card, "fac-quarantine-hint"))
    assert "afmon quarantine replay --reason REASON" in hint
    assert "afmon quarantine drop --reason REASON" in hint


@pytest.mark.parametrize("key", ["member:https://iss-a/|alice", "member:https://iss-c/|bob",
                                 "vo:atlas", "vo:cms"])  # fmt: skip
def test_members_and_vo_managers_see_nothing_of_it(engine: Engine, key: str) -> None:
    assert as_picked(engine, key) == []


def test_the_query_layer_gives_the_quarantine_to_facility_admins_only(engine: Engine) -> None:
    q = Query(engine)
    for p in (Principal("member", member_id="https://iss-c/|bob", vo="cms"),
              Principal("vo_manager", vo="cms"),
              Principal("facility_admin", facility="elsewhere")):  # fmt: skip
        counts, records = q.quarantine(p)
        assert counts.empty and records.empty, p
    counts, records = q.quarantine(Principal("facility_admin"), newest=1)
    assert counts["records"].tolist() == [1, 1] and len(records) == 1


def test_nobody_picked_sees_nothing_of_it(engine: Engine) -> None:
    assert as_picked(engine, None) == []  # type: ignore[arg-type]


def test_a_facility_admin_sees_their_facility_only(engine: Engine) -> None:
    card = as_signed_in(engine, Principal("facility_admin", facility="af", name="af admin"))
    assert rows(card, "fac-quarantine-counts") == [["af", "reserved_label", "1", fmt_utc(NOW)]]
    assert [r[1] for r in rows(card, "fac-quarantine-records")] == ["af"]
    assert "afmon quarantine replay --facility af --reason REASON" in json.dumps(card)
    other = as_signed_in(engine, Principal("facility_admin", facility="other", name="x"))
    assert [r[:2] for r in rows(other, "fac-quarantine-counts")] == [["other", "value_too_large"]]
    assert "reserved" not in json.dumps(other)
    # a signed-in member or VO manager: nothing, whoever the records name
    for p in (Principal("member", member_id="https://iss-c/|bob", vo="cms", name="Bob"),
              Principal("vo_manager", vo="cms", name="cms manager")):  # fmt: skip
        assert as_signed_in(engine, p) == []


def test_replayed_records_are_no_longer_pending(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE quarantine SET replayed_at = :t WHERE facility = 'other'"), {"t": NOW}
        )
    card = as_picked(engine, "admin")
    assert [r[:2] for r in rows(card, "fac-quarantine-counts")] == [["af", "reserved_label"]]
    assert [r[1] for r in rows(card, "fac-quarantine-records")] == ["af"]
    with engine.begin() as conn:
        conn.execute(text("UPDATE quarantine SET replayed_at = :t"), {"t": NOW})
    card = as_picked(engine, "admin")
    assert "No refused records: every record sent was accepted." in json.dumps(card)
    assert find(card, "fac-quarantine-records") is None  # no empty second table
    assert find(card, "fac-quarantine-hint") is None


def test_the_newest_records_are_listed_and_the_rest_counted(tmp_path: Path) -> None:
    client = server(tmp_path)
    many = QUARANTINE_NEWEST + 5
    bad = [cpu(f"user{i:02d}", "n1", vo="atlas") for i in range(many)]
    assert len(post(client, "af", "n1", bad)["refused"]) == many
    card = as_picked(client.app.state.services.engine, "admin")
    assert rows(card, "fac-quarantine-counts") == [
        ["af", "reserved_label", str(many), fmt_utc(NOW)]
    ]
    records = rows(card, "fac-quarantine-records")
    assert len(records) == QUARANTINE_NEWEST
    # newest first: the last records of the batch (the highest ids) lead
    assert records[0][-2] == f"$.series[{many - 1}].labels.vo"
    text_ = json.dumps(card)
    assert f"The newest {QUARANTINE_NEWEST} of {many} records" in text_
    assert "afmon quarantine list" in text_
