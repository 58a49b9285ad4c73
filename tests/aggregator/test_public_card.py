"""The public facility card (docs/public-card.md) of two simulated facilities: valid against
its published schema, figures equal to the ledger's, no member identity, account or node
name in it, no VO or group below the member threshold; off by default (404)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from afmon.collectors.simulator import FacilitySimulator, Poster, backfill

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "public-card-schema.json").read_text())
# a Wednesday; the card's week is the one before (Monday 2026-09-21 to Monday 2026-09-28)
NOW = datetime(2026, 9, 30, 12, tzinfo=UTC).timestamp()
DATA_END = datetime(2026, 9, 25, 18, tzinfo=UTC).timestamp()
K = 3


def _identity(sims: dict[str, FacilitySimulator]) -> str:
    """One identity map: the same members with an account at both facilities."""
    first = sims["af-a"].identity_toml()
    return re.sub(
        r'accounts = \[\{ facility = "af-a", local = "([^"]+)" \}\]',
        r'accounts = [{ facility = "af-a", local = "\1" }, { facility = "af-b", local = "\1" }]',
        first,
    )


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("public-card")
    sims = {
        f: FacilitySimulator(
            facility=f, nodes=n, members_per_vo=m, seed=9, rich=True, sessions_per_member_day=48
        )  # fmt: skip
        for f, n, m in (("af-a", 2, 4), ("af-b", 3, 4))
    }
    (tmp / "identity.toml").write_text(_identity(sims))
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp}/afmon.sqlite", identity_file=tmp / "identity.toml",
        facility_tokens={"af-a": "a" * 32, "af-b": "b" * 32}, alert_interval_seconds=0,
        local_mode=True, public_card=True, public_card_min_members=K,
    )  # fmt: skip
    client = TestClient(create_app(settings, with_dashboard=False, clock=lambda: NOW))
    for facility, sim in sims.items():
        poster = Poster("http://testserver", facility[-1] * 32, client)
        backfill(sim, poster, DATA_END - 3 * 3600, DATA_END, report=None)
    # af-a's hub checked every 10 min for an hour, down once (docs/availability.md)
    ticks = [DATA_END - 3600 + 600 * i for i in range(7)]
    hub = wire.Series("service_up", "1", "gauge", {"service": "jupyterhub", "node": "n1"},
                      ticks, [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0])  # fmt: skip
    Poster("http://testserver", "a" * 32, client).post(wire.Batch(
        version=wire.WIRE_VERSION, agent_id="checker", facility="af-a", node="n1", seq=1,
        sent_at=DATA_END, series=[hub],
    ))  # fmt: skip
    yield client, {"sims": sims, "engine": client.app.state.services.engine}
    client.close()


def test_the_card_is_valid_exact_and_anonymous(fed: tuple[TestClient, dict[str, Any]]) -> None:
    client, ctx = fed
    r = client.get("/public.json")
    assert r.status_code == 200, r.text
    card = r.json()
    jsonschema.validate(card, SCHEMA)
    assert card["min_members"] == K
    assert [f["facility"] for f in card["facilities"]] == ["af-a", "af-b"]
    with ctx["engine"].connect() as conn:
        cpu = dict(
            conn.execute(
                text(
                    "SELECT facility, SUM(amount) / 3600 FROM usage WHERE resource = "
                    "'cpu_seconds' AND hour >= :s AND hour < :e GROUP BY facility"
                ),
                {
                    "s": card["facilities"][0]["week"]["start"],
                    "e": card["facilities"][0]["week"]["end"],
                },  # fmt: skip
            ).all()
        )
        nodes = dict(
            conn.execute(text("SELECT facility, COUNT(*) FROM node GROUP BY facility")).all()
        )
    for f in card["facilities"]:
        week = f["week"]
        assert week["period"] == "2026-W39" and f["month"]["period"] == "2026-08"
        assert week["cpu_hours"] == pytest.approx(cpu[f["facility"]], rel=1e-6)
        assert f["capacity"]["nodes"] == nodes[f["facility"]]
        assert week["active_members"] > 0
        assert week["interactive"]["time_to_session"]["waits"] > 0
        shares = [v for v in week["data_read_by_source"].values() if v is not None]
        assert sum(shares) == pytest.approx(1.0, abs=3e-6)  # each rounded to 6 decimals
        # the folds: every named VO and group has at least K active members, and together
        # with `other` they never hold more CPU than the facility
        for fold in (week["vos"], week["groups"]):
            assert all(v["members"] >= K for v in fold)
            assert sum(v["cpu_hours"] for v in fold) <= week["cpu_hours"] * (1 + 1e-9)
        assert f["month"]["cpu_hours"] == 0  # August: nothing simulated
        if f["facility"] == "af-a":  # 6 checks up, 1 down, each speaking for 10 min
            assert week["availability"] == {
                "jupyterhub": {"availability": round(6 / 7, 6), "unplanned_availability":
                               round(6 / 7, 6)},
            }  # fmt: skip
        else:
            assert week["availability"] == {}
    # no member identity, local account, display name or node name anywhere
    blob = json.dumps(card)
    for sim in ctx["sims"].values():
        for m in sim.members:
            for secret in (m.local, m.subject, m.display_name):
                if secret:
                    assert secret not in blob, secret
        for node in sim.nodes:
            assert node not in blob
    assert "auth.cern.ch" not in blob  # no issuer, so no member id
    page = client.get("/public")
    assert page.status_code == 200 and "af-b" in page.text and "<script" not in page.text


def test_a_small_vo_is_folded_and_a_small_fold_left_out() -> None:
    from afmon.aggregator.query.public_card import _folded

    amounts = {"atlas": 10.0, "cms": 2.0, "lhcb": 1.0}
    assert _folded(amounts, {"atlas": 5, "cms": 2, "lhcb": 1}, 3) == [
        {"name": "atlas", "members": 5, "cpu_hours": 10.0},
        {"name": "other", "members": 3, "cpu_hours": 3.0},
    ]
    assert _folded(amounts, {"atlas": 5, "cms": 1, "lhcb": 1}, 3) == [
        {"name": "atlas", "members": 5, "cpu_hours": 10.0},
    ]  # two members in the fold: left out


def test_the_card_is_off_unless_enabled(tmp_path: Path) -> None:
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path}/afmon.sqlite", facility_tokens={"af": "t" * 32},
        alert_interval_seconds=0,
    )  # fmt: skip
    with TestClient(create_app(settings, with_dashboard=False)) as client:
        for path in ("/public", "/public.json"):
            r = client.get(path)
            assert r.status_code == 404 and "AFMON_PUBLIC_CARD" in r.text
