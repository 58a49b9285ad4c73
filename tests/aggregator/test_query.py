"""The query layer's roles: each principal sees exactly its own slice of the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.reads import LOCAL_ADMIN, OTHERS, Principal, Query, QueryError
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from afmon.collectors.simulator import FacilitySimulator, Poster, backfill

END = 1_790_006_400.0


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Query, FacilitySimulator]:
    tmp = tmp_path_factory.mktemp("query")
    sims = [
        FacilitySimulator(
            facility="af-a", nodes=2, members_per_vo=2, seed=3, sessions_per_member_day=8
        ),
        FacilitySimulator(
            facility="af-b",
            nodes=1,
            members_per_vo=2,
            seed=4,
            sessions_per_member_day=8,
            vos=("atlas",),
        ),
    ]
    identity = tmp / "identity.toml"
    identity.write_text(sims[0].identity_toml())
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp}/q.sqlite",
        identity_file=identity,
        facility_tokens={"af-a": "ta", "af-b": "tb"},
    )
    client = TestClient(create_app(settings, with_dashboard=False, clock=lambda: END))
    for sim, token in zip(sims, ("ta", "tb"), strict=True):
        backfill(sim, Poster("http://testserver", token, client), END - 6 * 3600, END, report=None)
    return client.app.state.services.query, sims[0]


def test_member_sees_only_self(fed: tuple[Query, FacilitySimulator]) -> None:
    query, sim = fed
    me = sim.member_ids()["atlas001"]
    df = query.usage_totals(Principal("member", member_id=me), 0, END, by=("member",))
    assert set(df["member"]) == {me}
    assert df.set_index("resource").loc["cpu_seconds", "amount"] == sum(
        v
        for (local, r), v in sim.truth.by_account.items()
        if local == "atlas001" and r == "cpu_seconds"
    )
    members = query.members(Principal("member", member_id=me))
    assert members["member_id"].tolist() == [me]
    assert query.nodes(Principal("member", member_id=me)).empty


def test_vo_manager_sees_only_the_vo(fed: tuple[Query, FacilitySimulator]) -> None:
    query, sim = fed
    df = query.usage_totals(Principal("vo_manager", vo="cms"), 0, END, by=("facility", "member"))
    ids = sim.member_ids()
    cms = {ids[local] for local, _ in sim.truth.by_account if local.startswith("cms")}
    assert cms and set(df["member"]) == cms
    # af-b's accounts are unmapped: that usage is not the atlas manager's to see
    atlas = query.usage_totals(Principal("vo_manager", vo="atlas"), 0, END, by=("facility",))
    assert set(atlas["facility"]) == {"af-a"}


def test_facility_admin_is_bound_to_the_facility(fed: tuple[Query, FacilitySimulator]) -> None:
    query, _ = fed
    admin_b = Principal("facility_admin", facility="af-b")
    assert query.facilities(admin_b) == ["af-b"]
    assert set(query.nodes(admin_b)["facility"]) == {"af-b"}
    assert query.facilities(LOCAL_ADMIN) == ["af-a", "af-b"]
    # af-b's accounts are not in the identity map: all its usage is its unmapped member's
    df = query.usage_totals(admin_b, 0, END, by=("vo", "member"))
    assert set(df["member"]) == {"afmon:unmapped|af-b"} and set(df["vo"]) == {"unmapped"}


def test_usage_over_time_is_hourly_and_sums_to_the_totals(
    fed: tuple[Query, FacilitySimulator],
) -> None:
    query, _ = fed
    df = query.usage_over_time(LOCAL_ADMIN, "cpu_seconds", END - 6 * 3600, END, by="vo")
    assert df["time"].dt.tz is not None and set(df["unit"]) == {"s"}
    assert df["time"].min().timestamp() >= END - 6 * 3600
    totals = query.usage_totals(
        LOCAL_ADMIN, END - 6 * 3600, END, by=("vo",), resources=("cpu_seconds",)
    )
    assert df.groupby("vo")["amount"].sum().to_dict() == totals.set_index("vo")["amount"].to_dict()
    daily = query.usage_over_time(LOCAL_ADMIN, "cpu_seconds", 0, END, by="vo", step="day")
    assert daily["amount"].sum() == df["amount"].sum()


def test_folding_keeps_the_named_members_and_sums_the_rest_per_step(
    fed: tuple[Query, FacilitySimulator],
) -> None:
    query, _ = fed
    args = (LOCAL_ADMIN, "cpu_seconds", END - 6 * 3600, END)
    every = query.usage_over_time(*args, by="member")
    kept = tuple(sorted(set(every["member"]))[:2])
    folded = query.usage_over_time(*args, by="member", keep=kept)
    assert set(folded["member"]) == {*kept, OTHERS}
    mine = folded[folded["member"] != OTHERS].reset_index(drop=True)
    assert mine.equals(every[every["member"].isin(kept)].reset_index(drop=True))
    per_step = every.groupby("time")["amount"].sum()
    assert folded.groupby("time")["amount"].sum().to_dict() == pytest.approx(per_step.to_dict())
    # keeping nobody folds everything into one key, per step
    nobody = query.usage_over_time(*args, by="member", keep=())
    assert set(nobody["member"]) == {OTHERS}
    assert nobody.set_index("time")["amount"].to_dict() == pytest.approx(per_step.to_dict())


def test_newest_sessions_and_their_count(fed: tuple[Query, FacilitySimulator]) -> None:
    query, _ = fed
    every = query.sessions(LOCAL_ADMIN, END - 6 * 3600, END)
    assert len(every) > 3
    assert query.session_count(LOCAL_ADMIN, END - 6 * 3600, END) == len(every)
    newest = query.sessions(LOCAL_ADMIN, END - 6 * 3600, END, newest=3)
    assert newest["start"].tolist() == sorted(every["start"], reverse=True)[:3]


def test_active_members_are_those_with_usage_in_whole_and_partial_days(
    fed: tuple[Query, FacilitySimulator],
) -> None:
    query, _ = fed
    # the second window reads the data's day from the daily rollup
    for start, end in ((END - 6 * 3600, END), (0.0, END + 2 * 86400), (END - 3600, END)):
        totals = query.usage_totals(LOCAL_ADMIN, start, end, by=("member",))
        with_usage = totals.groupby("member")["amount"].sum()
        assert query.active_members(LOCAL_ADMIN, start, end) == int((with_usage > 0).sum()) > 0
    assert query.active_members(LOCAL_ADMIN, END + 86400, END + 2 * 86400) == 0


def test_bad_arguments_are_named(fed: tuple[Query, FacilitySimulator]) -> None:
    query, _ = fed
    with pytest.raises(QueryError, match="unknown resource 'gpu_hours'"):
        query.usage_over_time(LOCAL_ADMIN, "gpu_hours", 0, END)
    with pytest.raises(QueryError, match="cannot group by 'user'"):
        query.usage_totals(LOCAL_ADMIN, 0, END, by=("user",))
    with pytest.raises(QueryError, match="needs a member_id"):
        Principal("member")


def test_read_api_refuses_without_local_mode(tmp_path: Path) -> None:
    app = create_app(
        ServerSettings(database_url=f"sqlite:///{tmp_path}/x.sqlite"), with_dashboard=False
    )
    r = TestClient(app).get("/api/v1/usage", params={"start": 0, "end": 1})
    assert r.status_code == 401 and "send a bearer token" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"


def test_ranges_mix_whole_days_from_the_rollup_with_partial_days(database_url: str) -> None:
    """A 50 h session from 03:00 on day 0: totals over a ragged range (partial day 0, whole
    day 1, partial day 2) and day steps both add up exactly, on SQLite and PostgreSQL."""
    day0 = 1_789_948_800.0  # a UTC midnight
    settings = ServerSettings(database_url=database_url, facility_tokens={"af": "t"})
    client = TestClient(create_app(settings, with_dashboard=False, clock=lambda: day0 + 4 * 86400))
    session = wire.Event(
        kind="session", id="s", user="alice", start=day0 + 3 * 3600, end=day0 + 2 * 86400 + 5 * 3600
    )
    batch = wire.Batch(
        version=1, agent_id="a", facility="af", node="n", seq=1, sent_at=day0, events=[session]
    )
    assert (
        client.post(
            "/api/v1/ingest", content=wire.encode(batch), headers={"Authorization": "Bearer t"}
        ).json()["status"]
        == "applied"
    )
    query: Query = client.app.state.services.query
    ragged = query.usage_totals(
        LOCAL_ADMIN,
        day0 + 2 * 3600,
        day0 + 2 * 86400 + 6 * 3600,
        by=(),
        resources=("session_seconds",),
    )
    assert ragged["amount"].tolist() == [50 * 3600.0]
    clipped = query.usage_totals(
        LOCAL_ADMIN,
        day0 + 4 * 3600,
        day0 + 2 * 86400 + 4 * 3600,
        by=(),
        resources=("session_seconds",),
    )
    assert clipped["amount"].tolist() == [48 * 3600.0]  # one hour less at each end
    daily = query.usage_over_time(
        LOCAL_ADMIN, "session_seconds", day0, day0 + 3 * 86400, by="member", step="day"
    )
    assert daily["amount"].tolist() == [21 * 3600.0, 24 * 3600.0, 5 * 3600.0]
    folded = query.usage_over_time(
        LOCAL_ADMIN, "session_seconds", day0, day0 + 3 * 86400, by="member", step="day", keep=()
    )
    assert folded["member"].tolist() == [OTHERS] * 3
    assert folded["amount"].tolist() == daily["amount"].tolist()
    assert query.active_members(LOCAL_ADMIN, day0 + 2 * 3600, day0 + 2 * 86400 + 6 * 3600) == 1
    assert query.active_members(LOCAL_ADMIN, day0 + 3 * 86400, day0 + 4 * 86400) == 0
