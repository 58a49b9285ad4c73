"""Federated accounting with real processes (docs/federation.md): two facility afmons, one on
SQLite and one on PostgreSQL, fed by the simulator with overlapping members, publish to one
upstream afmon. The upstream's ledger equals the facilities' ledgers row by row (so every sum
per member, group, VO and facility agrees, and the weekly report's rows too): after an
upstream outage with a facility killed meanwhile and the upstream killed again while the
facilities catch up, after late data that changes a closed hour, and after a full re-send.
A VO manager upstream sees the VO across facilities and nothing else; a member themself."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, create_engine, text

from afmon.aggregator.federation.messages import HourRows, Publication
from afmon.aggregator.query.base import Principal
from afmon.aggregator.query.reads import Query
from afmon.collectors import wire
from afmon.collectors.simulator import FacilitySimulator, Poster, backfill
from tests.conftest import ServerProcess

HOUR = 3600
Rows = dict[tuple[Any, ...], float]


def _usage(engine: Engine, facility: str, table: str = "usage") -> Rows:
    when = "hour" if table == "usage" else "day"
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                f"SELECT vo, grp, member_id, resource, {when}, amount FROM {table} "
                "WHERE facility = :f"
            ),
            {"f": facility},
        )
        return {tuple(r[:-1]): r[-1] for r in rows}


def _latency(engine: Engine, facility: str) -> Rows:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT vo, grp, member_id, kind, profile, hour, le, count, sum_seconds "
                "FROM latency WHERE facility = :f"
            ),
            {"f": facility},
        )
        return {tuple(r[:-2]): (r[-2], r[-1]) for r in rows}  # type: ignore[misc]


def _closed(rows: Rows, now: float) -> Rows:
    """The rows of closed hours: what a facility publishes."""
    return {k: v for k, v in rows.items() if k[4] + HOUR <= now}


def _wait_equal(up: Engine, sources: dict[str, Engine], what: str, timeout: float = 90.0) -> None:
    """Until the upstream holds exactly each facility's closed hours (usage and latency)."""
    deadline = time.monotonic() + timeout
    diff: list[str] = []
    while time.monotonic() < deadline:
        now = time.time()
        diff = []
        for facility, engine in sources.items():
            mine, theirs = _closed(_usage(engine, facility), now), _usage(up, facility)
            if mine != theirs:
                keys = set(mine) ^ set(theirs) or {k for k in mine if mine[k] != theirs[k]}
                diff.append(f"{facility}: usage differs at {sorted(keys)[:3]} ({len(keys)})")
            lat = {k: v for k, v in _latency(engine, facility).items() if k[5] + HOUR <= now}
            if lat != _latency(up, facility):
                diff.append(f"{facility}: latency differs")
        if not diff:
            return
        time.sleep(0.5)
    pytest.fail(f"{what}: the upstream never caught up: {diff}")


def _day_rollup_agrees(up: Engine, sources: dict[str, Engine]) -> None:
    """The upstream's daily rollup is the sum of its hours, equal to the facility's."""
    for facility, engine in sources.items():
        theirs, mine = _usage(up, facility, "usage_day"), _usage(engine, facility, "usage_day")
        assert set(theirs) == set(mine), facility
        for k, v in mine.items():
            assert math.isclose(theirs[k], v, rel_tol=1e-12, abs_tol=1e-9), (facility, k)


def _event_batch(facility: str, user: str, start: float, end: float) -> wire.Batch:
    """A session that arrives late: it lies in hours that were already published."""
    return wire.Batch(
        version=wire.WIRE_VERSION, agent_id="late-agent", facility=facility, node="late-node",
        seq=1, sent_at=time.time(),
        events=[wire.Event("session", "late-session-1", user, start, end,
                           {"profile": "4 cores"})],
    )  # fmt: skip


def test_two_facilities_publish_exactly_to_one_upstream(
    server_factory: Callable[..., ServerProcess], tmp_path: Path, pg_url: str
) -> None:
    # the last two hours of last ISO week: closed hours of a complete week (for its report)
    today = math.floor(time.time() / 86400) * 86400
    monday = today - datetime.fromtimestamp(today, UTC).weekday() * 86400
    end = monday - 1.0
    start = end - 2 * HOUR
    sims = {
        "af-a": FacilitySimulator(facility="af-a", nodes=2, members_per_vo=2, seed=5),
        "af-b": FacilitySimulator(facility="af-b", nodes=3, members_per_vo=2, seed=5),
    }  # the same seed: the same members (issuer, subject) at both facilities
    peers = {"af-a": "fed-token-a-0123456789", "af-b": "fed-token-b-0123456789"}
    upstream = server_factory(
        database_url=f"sqlite:///{tmp_path}/upstream.sqlite",
        facility="vo-hub",
        federation_peers=json.dumps(peers),
        dashboard="false",
    )
    urls = {"af-a": f"sqlite:///{tmp_path}/af-a.sqlite", "af-b": pg_url}
    servers: dict[str, ServerProcess] = {}
    for facility, sim in sims.items():
        identity = tmp_path / f"{facility}.toml"
        identity.write_text(sim.identity_toml())
        servers[facility] = server_factory(
            database_url=urls[facility],
            facility=facility,
            identity_file=identity,
            dashboard="false",
            federation_upstreams=json.dumps([{"url": upstream.url, "token": peers[facility]}]),
            federation_interval_seconds="0.5",
        )
    up = create_engine(f"sqlite:///{tmp_path}/upstream.sqlite")
    engines = {f: create_engine(u) for f, u in urls.items()}
    try:
        # the first hour, then everything published
        for facility, sim in sims.items():
            backfill(sim, Poster(servers[facility].url, servers[facility].token), start,
                     start + HOUR, report=None)  # fmt: skip
        _wait_equal(up, engines, "first hour")
        assert _usage(up, "af-a") and _usage(up, "af-b")

        # the upstream goes down; the second hour arrives, and late data changes a closed
        # hour of af-a; af-a is restarted while the upstream is away
        upstream.stop()
        for facility, sim in sims.items():
            backfill(sim, Poster(servers[facility].url, servers[facility].token),
                     start + HOUR, end, report=None)  # fmt: skip
        a = servers["af-a"]
        before = _usage(engines["af-a"], "af-a")
        Poster(a.url, a.token).post(_event_batch("af-a", "atlas001", start + 600, start + 1500))
        changed = _usage(engines["af-a"], "af-a")
        assert changed != before  # the late session moved a published hour
        late = _late_sample(engines["af-a"], start + HOUR + 1)
        Poster(a.url, a.token).post(late)
        assert _usage(engines["af-a"], "af-a") != changed  # CPU moved across the hour
        _kill(a)
        a.start()
        # the upstream comes back and is killed (SIGKILL) again while the facilities catch up
        upstream.start()
        time.sleep(0.3)
        _kill(upstream)
        upstream.start()
        _wait_equal(up, engines, "after the outage")

        # a full re-send of af-b (`afmon federation resend`) replaces, never adds
        sent_before = _count(engines["af-b"], "federation_sent")
        cli = [sys.executable, "-m", "afmon.aggregator.cli", "federation",
               "--database-url", pg_url]  # fmt: skip
        env = servers["af-b"].env
        status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True)
        assert f"publishing to {upstream.url} (every VO, member level): 0 hours due" in (
            status.stdout
        ), status.stdout + status.stderr
        again = subprocess.run(
            [*cli, "resend", "--upstream", upstream.url], env=env, capture_output=True, text=True
        )
        assert again.returncode == 0, again.stderr
        assert f"forgot {sent_before} acknowledged hours" in again.stdout
        deadline = time.monotonic() + 60
        while _count(engines["af-b"], "federation_sent") < sent_before:
            assert time.monotonic() < deadline, "the re-send never finished"
            time.sleep(0.5)
        _wait_equal(up, engines, "after the re-send")
        _day_rollup_agrees(up, engines)
        # the upstream's /metrics: each facility's freshness (its newest hour, the last one
        # simulated), which the AfmonFederationStale rule reads
        scraped = {
            (sample.name, sample.labels["facility"]): sample.value
            for family in text_string_to_metric_families(
                httpx.get(f"{upstream.url}/metrics", timeout=10).text
            )
            for sample in family.samples
            if sample.name.startswith("afmon_federation_source_")
        }
        newest = math.floor(end / HOUR) * HOUR
        for facility in ("af-a", "af-b"):
            assert (
                scraped[("afmon_federation_source_last_hour_timestamp_seconds", facility)] == newest
            )
            received = scraped[("afmon_federation_source_received_timestamp_seconds", facility)]
            assert 0 <= time.time() - received < 600

        # the weekly report upstream holds each facility's rows as the facility's own report
        week = datetime.fromtimestamp(start, UTC).strftime("%G-W%V")
        theirs = _weekly(urls["af-a"].replace("af-a", "upstream"), week, tmp_path / "up")
        for facility, url in urls.items():
            own = _weekly(url, week, tmp_path / facility)
            mine = {r["facility"]: r["usage"] for r in own["levels"]["facility"]}
            got = {r["facility"]: r["usage"] for r in theirs["levels"]["facility"]}
            assert got[facility] == mine[facility], facility
            members = {(r["facility"], r["member"]): r["usage"] for r in own["levels"]["member"]}
            upstream_members = {
                (r["facility"], r["member"]): r["usage"] for r in theirs["levels"]["member"]
                if r["facility"] == facility
            }  # fmt: skip
            assert upstream_members == members, facility
            # the APEL inputs of interactive usage (from the ledger hours) travel too
            interactive = [
                [r for r in m["interactive"] if r["facility"] == facility]
                for m in theirs["apel"]["months"]
            ]
            assert interactive == [m["interactive"] for m in own["apel"]["months"]], facility
            assert any(interactive), facility

        # the sums over the facilities, as the upstream's query layer reads them
        query = Query(up)
        admin = Principal("facility_admin")
        lo, hi = start - HOUR, end + HOUR
        member = sims["af-a"].member_ids()["atlas001"]
        totals = query.usage_totals(admin, lo, hi, by=("facility",))
        cpu = totals[totals.resource == "cpu_seconds"].set_index("facility")["amount"]
        for facility, engine in engines.items():
            own = sum(v for k, v in _usage(engine, facility).items() if k[3] == "cpu_seconds")
            assert cpu[facility] == pytest.approx(own, rel=1e-12)
        # access: the atlas VO manager sees atlas at both facilities, nothing else
        vo_view = query.usage_totals(Principal("vo_manager", vo="atlas"), lo, hi, by=("facility",))
        assert set(vo_view.facility) == {"af-a", "af-b"}
        assert set(
            query.usage_totals(Principal("vo_manager", vo="atlas"), lo, hi, by=("vo",)).vo
        ) == {"atlas"}
        mine = query.usage_totals(Principal("member", member_id=member), lo, hi, by=("member",))
        assert set(mine.member) == {member}
        both = query.usage_totals(Principal("member", member_id=member), lo, hi, by=("facility",))
        assert set(both.facility) == {"af-a", "af-b"}  # one member across facilities
    finally:
        up.dispose()
        for e in engines.values():
            e.dispose()


def _weekly(database_url: str, week: str, out: Path) -> dict[str, Any]:
    """`afmon report weekly` (JSON) of one database."""
    out.mkdir(exist_ok=True)
    r = subprocess.run(
        [sys.executable, "-m", "afmon.aggregator.cli", "report", "weekly", "--week", week,
         "--format", "json", "--out", str(out), "--database-url", database_url],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    [path] = out.glob("*.json")
    return json.loads(path.read_text())


def _late_sample(engine: Engine, boundary: float) -> wire.Batch:
    """A CPU sample that arrives late, one second before an hour `boundary` that two stored
    samples of a member's series straddle, with the later sample's value: the CPU time of
    the whole interval moves into the earlier (already published) hour."""
    with engine.connect() as conn:
        _sid, labels, _before, _after, v1 = conn.execute(
            text(
                "SELECT s.id, s.labels, a.time, b.time, b.value FROM series s "
                "JOIN sample a ON a.series_id = s.id JOIN sample b ON b.series_id = s.id "
                "WHERE s.metric = 'user_cpu_seconds' AND s.local_user = 'atlas001' "
                "AND a.time < :t - 1 AND b.time >= :t AND b.value > a.value "
                "AND NOT EXISTS (SELECT 1 FROM sample c WHERE c.series_id = s.id "
                "AND c.time > a.time AND c.time < b.time) ORDER BY s.id LIMIT 1"
            ),
            {"t": boundary},
        ).one()
    cpu = wire.Series("user_cpu_seconds", "seconds", "counter", json.loads(labels),
                      [boundary - 1.0], [v1])  # fmt: skip
    return wire.Batch(
        version=wire.WIRE_VERSION, agent_id="late-sample-agent", facility="af-a",
        node=cpu.labels["node"], seq=1, sent_at=time.time(), series=[cpu],
    )  # fmt: skip


def _kill(server: ServerProcess) -> None:
    """SIGKILL: no shutdown, whatever it was doing (a transaction, a publication) is cut."""
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait()
    server.proc = None


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()


def test_the_upstream_refuses_what_is_not_the_credentials_own(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    upstream = server_factory(
        facility="vo-hub",
        federation_peers=json.dumps({"af-a": "fed-token-a-0123456789"}),
        dashboard="false",
    )
    hour = 1_790_006_400

    def post(pub: Publication, token: str = "fed-token-a-0123456789") -> httpx.Response:
        return httpx.post(
            f"{upstream.url}/api/v1/federation/ledger",
            content=msgspec.json.encode(pub),
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )

    row = ("atlas", "/atlas", "https://atlas-auth.cern.ch/|s1", "cpu_seconds", 5.0, "s")
    good = Publication("af-a", "member", ["atlas"], [HourRows(hour, 1, [row])])
    assert post(good, "wrong").status_code == 401
    other = Publication("af-b", "member", None, [HourRows(hour, 1, [row])])
    r = post(other)
    assert r.status_code == 403 and "publishes 'af-a', not 'af-b'" in r.text
    wrong_unit = Publication("af-a", "member", None, [HourRows(hour, 1, [(*row[:5], "h")])])
    r = post(wrong_unit)
    assert r.status_code == 400 and "cpu_seconds is in 's', not 'h'" in r.text
    outside = Publication("af-a", "member", ["cms"], [HourRows(hour, 1, [row])])
    assert post(outside).status_code == 400
    r = post(good)
    assert r.status_code == 200 and r.json() == {"hours": [[hour, 1]]}
    # the same hour again (a retry, or a newer version) replaces
    assert post(good).status_code == 200
    newer = Publication("af-a", "member", ["atlas"], [HourRows(hour, 2, [(*row[:4], 7.0, "s")])])
    assert post(newer).json() == {"hours": [[hour, 2]]}
    with create_engine(f"sqlite:///{tmp_path}/server.sqlite").connect() as conn:
        rows = conn.execute(text("SELECT facility, amount FROM usage")).all()
        day = conn.execute(text("SELECT amount FROM usage_day")).all()
    assert rows == [("af-a", 7.0)] and day == [(7.0,)]


def test_per_vo_upstreams_and_group_level_publishing(tmp_path: Path) -> None:
    """ATLAS goes to one upstream summed per group (no member identity leaves), CMS to another
    per member; a change of a published hour replaces it upstream."""
    from fastapi.testclient import TestClient

    from afmon.aggregator.core.settings import ServerSettings
    from afmon.aggregator.core.upstreams import Upstream
    from afmon.aggregator.federation.publish import Publisher
    from afmon.aggregator.store.db import create_schema, make_engine
    from afmon.aggregator.web.app import create_app

    facility = make_engine(f"sqlite:///{tmp_path}/af.sqlite")
    create_schema(facility)
    hour = 1_790_006_400
    alice, bob = "https://atlas-auth.cern.ch/|alice", "https://atlas-auth.cern.ch/|bob"
    carol = "https://cms-auth.cern.ch/|carol"
    rows = [
        ("atlas", "/atlas/higgs", alice, 100.0),
        ("atlas", "/atlas/higgs", bob, 20.5),
        ("cms", "/cms/top", carol, 7.0),
    ]
    with facility.begin() as conn:
        for vo, grp, mid, amount in rows:
            conn.execute(
                text(
                    "INSERT INTO usage (facility, vo, grp, member_id, resource, hour, amount, "
                    "unit) VALUES ('af', :vo, :grp, :mid, 'cpu_seconds', :h, :a, 's')"
                ),
                {"vo": vo, "grp": grp, "mid": mid, "h": hour, "a": amount},
            )
            conn.execute(
                text(
                    "INSERT INTO member (id, issuer, subject, vo, grp, display_name, groups, "
                    "institution) VALUES (:mid, :iss, :sub, :vo, :grp, :name, '[]', 'KIT')"
                ),
                {
                    "mid": mid,
                    "iss": mid.split("|")[0],
                    "sub": mid.split("|")[1],
                    "vo": vo,
                    "grp": grp,
                    "name": mid.split("|")[1].title(),
                },  # fmt: skip
            )
        conn.execute(text("INSERT INTO ledger_change VALUES ('af', :h, 1)"), {"h": hour})

    def upstream(name: str) -> tuple[TestClient, Engine]:
        url = f"sqlite:///{tmp_path}/{name}.sqlite"
        settings = ServerSettings(
            database_url=url, federation_peers={"af": "fed-token-0123456789"},
            alert_interval_seconds=0, local_mode=True,
        )  # fmt: skip
        app = create_app(settings, with_dashboard=False, extensions=[])
        return TestClient(app), make_engine(url)

    atlas_client, atlas_db = upstream("atlas-hub")
    cms_client, cms_db = upstream("cms-hub")
    token = "fed-token-0123456789"
    atlas_hub = Upstream(url="http://atlas-hub", token=token, vos=["atlas"], level="group")
    to_atlas = Publisher(facility, atlas_hub, atlas_client)
    to_cms = Publisher(
        facility, Upstream(url="http://cms-hub", token=token, vos=["cms"]), cms_client
    )
    now = hour + 2 * HOUR
    assert to_atlas.publish(now) == 1 and to_cms.publish(now) == 1
    assert to_atlas.publish(now) == 0  # nothing due any more
    group = "afmon:group|/atlas/higgs"
    assert _usage(atlas_db, "af") == {("atlas", "/atlas/higgs", group, "cpu_seconds", hour): 120.5}
    with atlas_db.connect() as conn:
        ids = {r[0] for r in conn.execute(text("SELECT id FROM member"))}
    assert ids == {group}  # neither alice nor bob left the facility
    assert _usage(cms_db, "af") == {("cms", "/cms/top", carol, "cpu_seconds", hour): 7.0}
    with cms_db.connect() as conn:  # a member-level publication carries the institution
        assert conn.execute(text("SELECT institution FROM member")).all() == [("KIT",)]
    # a late change of the published hour: due again, replaced upstream
    with facility.begin() as conn:
        conn.execute(text("UPDATE usage SET amount = amount + 4.5 WHERE member_id = :m"),
                     {"m": bob})  # fmt: skip
        conn.execute(text("UPDATE ledger_change SET version = version + 1"))
    assert to_atlas.publish(now) == 1 and to_cms.publish(now) == 1
    assert _usage(atlas_db, "af")[("atlas", "/atlas/higgs", group, "cpu_seconds", hour)] == 125.0
    assert _usage(cms_db, "af")[("cms", "/cms/top", carol, "cpu_seconds", hour)] == 7.0
    for c in (atlas_client, cms_client):
        c.close()
    for e in (facility, atlas_db, cms_db):
        e.dispose()
