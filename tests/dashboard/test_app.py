"""`create_dash` through its real HTTP interface (Flask test client): routing, local mode,
sign-in-less servers, principals, and two apps in one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dash import Dash
from sqlalchemy import Engine, text

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.identity.accounts import load_identity_file
from afmon.aggregator.query.reads import Query
from afmon.aggregator.store.db import create_schema, make_engine
from afmon.dashboard.app import create_dash
from tests.dash_callbacks import post_callback as _call

T0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC
NOW = T0 + 10 * 3600 + 60.0
IDENTITY = """
[vos.atlas]
issuer = "iss-a"
[vos.cms]
issuer = "iss-c"
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


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path}/afmon.sqlite")
    create_schema(engine)
    (tmp_path / "identity.toml").write_text(IDENTITY)
    load_identity_file(engine, tmp_path / "identity.toml")
    rows = [("atlas", "/atlas", "iss-a|alice", 7200.0), ("cms", "/cms", "iss-c|bob", 5400.0)]
    with engine.begin() as conn:
        for vo, grp, member, amount in rows:
            conn.execute(
                text("INSERT INTO usage VALUES ('af', :vo, :grp, :m, 'cpu_seconds', :h, :a, 's')"),
                {"vo": vo, "grp": grp, "m": member, "h": T0 + 9 * 3600, "a": amount},
            )
    return engine


def _app(engine: Engine, local_mode: bool) -> Dash:
    return create_dash(Query(engine), ServerSettings(local_mode=local_mode), clock=lambda: NOW)


def test_not_local_mode_shows_sign_in_and_has_no_data_path(engine: Engine) -> None:
    app = _app(engine, local_mode=False)
    client = app.server.test_client()
    assert client.get("/").status_code == 200
    layout = json.dumps(client.get("/_dash-layout").get_json())
    assert "Sign-in is not configured on this server." in layout
    assert "principal-picker" not in layout
    assert "Alice" not in layout
    for path in ("/", "/member"):
        page = json.dumps(_call(app, ["page.children"], {"url.pathname": path}))
        assert "signin-notice" in page and "Sign-in is not configured" in page
        assert "facility-page" not in page and "member-page" not in page
    # only the shell's callbacks exist: nothing could answer with data
    assert all("fac-" not in k and "mem-" not in k for k in app.callback_map)


def test_local_mode_banner_lists_principals(engine: Engine) -> None:
    app = _app(engine, local_mode=True)
    layout = json.dumps(app.server.test_client().get("/_dash-layout").get_json())
    assert "Local demo mode: no login; pick who you are" in layout
    for label in (
        "Facility admin",
        "VO manager of atlas",
        "VO manager of cms",
        "Member: Alice Archer (atlas)",
        "Member: Bob Brown (cms)",
    ):
        assert label in layout


def test_router(engine: Engine) -> None:
    app = _app(engine, local_mode=True)
    facility = _call(app, ["page.children"], {"url.pathname": "/"})
    assert facility["page"]["children"]["props"]["id"] == "facility-page"
    assert facility["nav-facility"]["className"] == "active"
    member = _call(app, ["page.children"], {"url.pathname": "/member/"})
    assert member["page"]["children"]["props"]["id"] == "member-page"
    assert member["nav-member"]["className"] == "active"
    missing = json.dumps(_call(app, ["page.children"], {"url.pathname": "/nope"}))
    assert "No page at /nope" in missing
    window = _call(app, ["window-text.children"], {"range.value": "24h"})
    assert window["window-text"]["children"] == (
        "2025-12-31 11:00:00 UTC to 2026-01-01 11:00:00 UTC, hourly steps"
    )


def test_a_member_sees_only_themself(engine: Engine) -> None:
    app = _app(engine, local_mode=True)
    inputs = {"principal-picker.value": "member:iss-c|bob", "range.value": "24h"}
    overview = json.dumps(_call(app, ["fac-tiles.children"], inputs))
    assert "1.50 core-hours" in overview
    assert "atlas" not in overview and "2.00 core-hours" not in overview
    assert "Node details are visible to facility admins only." in overview
    mine = json.dumps(_call(app, ["mem-tiles.children"], inputs))
    assert "Bob Brown" in mine and "Alice" not in mine
    admin = json.dumps(
        _call(app, ["fac-tiles.children"], {**inputs, "principal-picker.value": "admin"})
    )
    assert "2.00 core-hours" in admin and "1.50 core-hours" in admin
    nobody = json.dumps(
        _call(
            app,
            ["fac-tiles.children"],
            {**inputs, "principal-picker.value": "member:iss-c|mallory"},
        )
    )
    assert "Pick who you are" in nobody and "core-hours" not in nobody


def test_two_apps_in_one_process(engine: Engine) -> None:
    first, second = _app(engine, local_mode=True), _app(engine, local_mode=False)
    assert first.callback_map.keys() > second.callback_map.keys()
    for app in (first, second):
        assert app.server.test_client().get("/").status_code == 200
        assert app.server.test_client().get("/_dash-dependencies").status_code == 200


def test_member_page_lists_the_newest_sessions_and_counts_the_rest(engine: Engine) -> None:
    from afmon.dashboard.pages.member import MAX_SESSIONS

    n = MAX_SESSIONS + 3
    with engine.begin() as conn:
        for i in range(n):
            conn.execute(
                text(
                    "INSERT INTO event (facility, kind, id, node, local_user, member_id, start, "
                    "\"end\", attrs) VALUES ('af', 'session', :id, 'n1', 'bob', 'iss-c|bob', "
                    ":start, :end, '{}')"
                ),
                {"id": f"s-{i:03d}", "start": T0 + 60 * i, "end": T0 + 60 * i + 30},
            )
    out = _call(
        _app(engine, local_mode=True),
        ["mem-sessions.children"],
        {"principal-picker.value": "admin", "range.value": "24h"},
    )
    summary, table = out["mem-sessions"]["children"]
    assert summary["props"]["children"].startswith(f"{n} sessions in this range: ")
    grid, link = table["props"]["children"]  # the table and its "Download CSV" link
    assert link["props"]["download"] == "mem-sessions-table.csv"
    rows = grid["props"]["children"][1]["props"]["children"]
    cells = [[td["props"]["children"] for td in r["props"]["children"]] for r in rows]
    assert len(cells) == MAX_SESSIONS + 1
    assert "2026-01-01 01:42:00 UTC" in cells[0]  # the newest (i = 102) first
    assert cells[-1][0] == "... and 3 older sessions in this range (narrow the range to see them)"
