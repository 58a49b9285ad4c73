"""Firing alerts in the dashboard (the Alerts page, through Dash's HTTP interface) and their
scoping in the query layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.reads import LOCAL_ADMIN, Principal, Query
from afmon.aggregator.store.db import create_schema, make_engine
from afmon.alerts.evaluate import Alert
from afmon.alerts.service import AlertService
from afmon.dashboard.app import create_dash
from tests.dash_callbacks import post_callback as _call

NOW = 1_790_000_000.0


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path}/afmon.sqlite")
    create_schema(engine)
    service = AlertService(engine, [])
    service._save({  # noqa: SLF001  (the service's own writer, without evaluating rules)
        a.key: a
        for a in (
            Alert("AfmonAgentSilent", (("facility", "af"), ("node", "n1")), "firing",
                  "critical", 1200.0, NOW - 1200, NOW - 600, summary="Agent on n1 silent"),
            Alert("AfmonUnmappedUsage", (("facility", "af"),), "resolved", "info", 0.05,
                  NOW - 7200, NOW - 3600, NOW - 60, summary="Unmapped usage above 10 % at af"),
            Alert("AfmonSomethingPerVo", (("facility", "af"), ("vo", "cms")), "pending",
                  "info", 1.0, NOW - 60, summary="pending"),
        )
    })  # fmt: skip
    return engine


def test_alerts_page_lists_firing_then_resolved(engine: Engine) -> None:
    app = create_dash(Query(engine), ServerSettings(local_mode=True), clock=lambda: NOW)
    page = json.dumps(_call(app, ["page.children"], {"url.pathname": "/alerts"}))
    assert "alerts-page" in page and "Firing alerts" in page
    out = _call(
        app,
        ["alerts-firing.children", "alerts-resolved.children"],
        {"principal-picker.value": "admin", "range.value": "24h"},
    )
    firing = json.dumps(out["alerts-firing"]["children"])
    resolved = json.dumps(out["alerts-resolved"]["children"])
    assert "AfmonAgentSilent" in firing and "facility=af, node=n1" in firing
    assert "Agent on n1 silent" in firing and "AfmonUnmappedUsage" not in firing
    assert "AfmonUnmappedUsage" in resolved and "2026-09-21 14:12:20 UTC" in resolved


def test_alert_scoping(engine: Engine) -> None:
    q = Query(engine)
    assert q.alerts(LOCAL_ADMIN).rule.tolist() == ["AfmonAgentSilent"]
    assert q.alerts(LOCAL_ADMIN, ("pending", "firing", "resolved")).rule.tolist() == [
        "AfmonSomethingPerVo",  # newest first (ties by name)
        "AfmonUnmappedUsage",
        "AfmonAgentSilent",
    ]
    other_af = Principal("facility_admin", facility="elsewhere")
    assert q.alerts(other_af, ("firing", "resolved")).empty
    cms = Principal("vo_manager", vo="cms")
    assert q.alerts(cms, ("pending",)).rule.tolist() == ["AfmonSomethingPerVo"]
    assert q.alerts(cms).empty  # facility-wide alerts are for facility admins
    member = Principal("member", member_id="iss|alice", vo="cms")
    assert q.alerts(member, ("pending", "firing", "resolved")).empty
