"""The batch_job ledger rule through the real ingest (SQLite and PostgreSQL): hours, cores,
GPUs, HEPscore23 normalisation from the node's own report, queue wait histograms, efficiency
in the query layer, and bad attributes refused naming the attribute."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.ledger.batch import spread
from afmon.aggregator.query.reads import LOCAL_ADMIN, Principal, Query, QueryError
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from tests.conftest import free_port
from tests.oidc_issuer import Issuer, IssuerServer

H = 1_795_597_200  # 2026-11-25T09:00:00Z
TOKEN = "batch-token"
IDENTITY = """
[vos.atlas]
issuer = "https://atlas.example.org/"
[[members]]
vo = "atlas"
subject = "alice"
display_name = "Alice"
accounts = [{ facility = "af", local = "alice" }]
[[members]]
vo = "atlas"
subject = "carol"
display_name = "Carol"
accounts = [{ facility = "af", local = "carol" }]
"""
ALICE = "https://atlas.example.org/|alice"


def job(id_: str = "slurm:c:1", user: str = "alice", **attrs: Any) -> wire.Event:
    """09:30 to 11:15 on node n7, 4 cores, 1 GPU, 5040 CPU s, submitted at 09:00."""
    base: dict[str, Any] = dict(
        partition="gpu",
        cores=4,
        gpus=1,
        cpu_seconds=5040.0,
        wall_seconds=6300,
        submit=float(H),
        node="n7",
    )
    base.update(attrs)
    return wire.Event(
        "batch_job",
        id_,
        user,
        H + 1800.0,
        H + 8100.0,
        {k: v for k, v in base.items() if v is not None},
    )


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> TestClient:
    identity = tmp_path / "identity.toml"
    identity.write_text(IDENTITY)
    settings = ServerSettings(
        database_url=database_url,
        facility_tokens={"af": TOKEN},
        identity_file=identity,
        default_hepscore23_per_core=10.0,
    )
    return TestClient(create_app(settings, clock=lambda: H + 9000.0, with_dashboard=False))


class Poster:
    def __init__(self, client: TestClient) -> None:
        self.client, self.seq = client, 0

    def __call__(self, events: list[wire.Event] = (), series: list[wire.Series] = ()) -> Any:
        self.seq += 1
        batch = wire.Batch(
            version=1,
            agent_id="ctl",
            facility="af",
            node="ctl",
            seq=self.seq,
            sent_at=H,
            events=list(events),
            series=list(series),
        )
        return self.client.post(
            "/api/v1/ingest",
            content=wire.encode(batch),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )


def rows(client: TestClient, resource: str) -> dict[int, float]:
    with client.app.state.services.engine.connect() as conn:
        return dict(
            conn.execute(
                text(
                    "SELECT hour, SUM(amount) FROM usage WHERE resource = :r "
                    "GROUP BY hour ORDER BY hour"
                ),
                {"r": resource},
            ).all()
        )


def test_spread_adds_up_exactly_and_follows_the_hours() -> None:
    pieces = spread(H + 1800.0, H + 8100.0, 5040.0 / 3)
    assert [h for h, _ in pieces] == [H, H + 3600, H + 7200]
    assert sum(a for _, a in pieces) == 5040.0 / 3
    assert pieces[1][1] == pytest.approx(5040.0 / 3 * 3600 / 6300)
    assert spread(H + 10.0, H + 10.0, 2.5) == [(H, 2.5)]  # a job of no wall time


def test_a_job_split_over_its_hours_normalised_by_its_node(client: TestClient) -> None:
    post = Poster(client)
    n7 = wire.Series("node_hepscore23_per_core", "HS23", "gauge", {"node": "n7"}, [H], [20.0])
    assert post(series=[n7]).status_code == 200
    r = post([job(), job("slurm:c:2", node="unknown-node", cpu_seconds=0.0, gpus=None)])
    assert r.status_code == 200, r.text
    hours = {H: 1800.0, H + 3600: 3600.0, H + 7200: 900.0}
    assert rows(client, "batch_jobs") == {H: 2.0}
    assert rows(client, "batch_job_seconds") == {h: 2 * s for h, s in hours.items()}
    assert rows(client, "batch_wall_core_seconds") == {h: 8 * s for h, s in hours.items()}
    assert rows(client, "batch_gpu_seconds") == hours  # job 2 has no GPU
    assert rows(client, "batch_cpu_seconds") == pytest.approx(
        {H: 1440, H + 3600: 2880, H + 7200: 720}
    )
    # n7 reported 20 HS23 per core; the unknown node gets the default, 10
    assert sum(rows(client, "batch_cpu_hs23_seconds").values()) == pytest.approx(5040 * 20)
    assert sum(rows(client, "batch_wall_core_hs23_seconds").values()) == 6300 * 4 * (20 + 10)

    q = Query(client.app.state.services.engine)
    usage = q.batch_usage(LOCAL_ADMIN, H, H + 4 * 3600)
    assert usage["member"].tolist() == [ALICE]
    assert usage.iloc[0]["batch_jobs"] == 2
    assert usage.iloc[0]["cpu_efficiency"] == pytest.approx(5040 / (2 * 6300 * 4))
    waits = q.latency_percentiles(
        LOCAL_ADMIN, "batch_queue_wait", H, H + 3600, by=("member", "profile")
    )
    assert waits[["member", "profile", "count", "mean_seconds"]].values.tolist() == [
        [ALICE, "gpu", 2, 1800.0]
    ]

    # the same jobs again (a probe re-reading its window): nothing changes
    before = {r: rows(client, r) for r in ("batch_jobs", "batch_cpu_seconds")}
    assert (
        post([job(), job("slurm:c:2", node="unknown-node", cpu_seconds=0.0)]).json()["status"]
        == "applied"
    )
    assert {r: rows(client, r) for r in before} == before
    assert q.latency_percentiles(LOCAL_ADMIN, "batch_queue_wait", H, H + 3600)[
        "count"
    ].tolist() == [2]


def test_members_see_only_their_own_batch_usage(client: TestClient) -> None:
    post = Poster(client)
    assert post([job(), job("slurm:c:9", user="carol", cpu_seconds=100.0)]).status_code == 200
    q = Query(client.app.state.services.engine)
    carol = Principal("member", member_id="https://atlas.example.org/|carol", vo="atlas")
    mine = q.batch_usage(carol, H, H + 4 * 3600)
    assert mine["member"].tolist() == [carol.member_id]
    assert mine.iloc[0]["batch_cpu_seconds"] == pytest.approx(100.0)
    by_vo = q.batch_usage(LOCAL_ADMIN, H, H + 4 * 3600, by="vo")
    assert by_vo["batch_jobs"].tolist() == [2.0]
    empty = q.batch_usage(carol, H - 86400, H - 3600)
    assert empty.empty and "cpu_efficiency" in empty.columns and "member" in empty.columns


@pytest.mark.parametrize(
    ("attrs", "field", "message"),
    [
        ({"cores": None}, "cores", "batch job slurm:c:1 needs cores"),
        ({"cores": "four"}, "cores", "cores must be a number, not 'four'"),
        ({"cores": 0}, "cores", "cores must be at least 1"),
        ({"cpu_seconds": -1.0}, "cpu_seconds", "cpu_seconds must not be negative"),
        ({"gpus": True}, "gpus", "gpus must be a number"),
        ({"wall_seconds": 7000}, "wall_seconds", "is longer than the job's start-to-end time"),
        ({"queue_wait_seconds": "long"}, "queue_wait_seconds", "must be a number"),
    ],
)
def test_bad_attributes_refuse_their_event_only(
    client: TestClient, attrs: dict[str, Any], field: str, message: str
) -> None:
    """The job with a bad attribute is refused on its own (bad_attribute, quarantined as
    sent, no event row); the good job of the same batch is accounted."""
    post = Poster(client)
    bad = job(**attrs)
    r = post([job("slurm:c:0", cpu_seconds=1.0), bad])
    assert r.status_code == 200 and r.json()["status"] == "partial", r.text
    [refusal] = r.json()["refused"]
    assert (refusal["field"], refusal["reason"]) == (f"$.events[1].attrs.{field}", "bad_attribute")
    assert message in refusal["message"]
    assert r.json()["events"] == 1
    assert rows(client, "batch_jobs") == {H: 1.0}  # the good job only
    with client.app.state.services.engine.connect() as conn:
        ids = [i for (i,) in conn.exec_driver_sql("SELECT id FROM event")]
        kept = conn.exec_driver_sql("SELECT kind, reason, record FROM quarantine").all()
    assert ids == ["slurm:c:0"]
    assert [(k, reason) for k, reason, _ in kept] == [("event", "bad_attribute")]
    assert msgspec.json.decode(kept[0][2], type=wire.Event) == bad


def test_a_requeued_job_counts_once_and_every_run_counts_its_usage(client: TestClient) -> None:
    post = Poster(client)
    first = job("slurm:c:7@1", requeued=True, cpu_seconds=100.0, gpus=None)  # ended by a requeue
    last = job("slurm:c:7@2", cpu_seconds=200.0, gpus=None)
    assert post([first, last]).json()["status"] == "applied"
    assert sum(rows(client, "batch_jobs").values()) == 1.0  # one job, as sacct counts it
    assert sum(rows(client, "batch_cpu_seconds").values()) == 300.0  # both runs, as sacct -D
    assert sum(rows(client, "batch_job_seconds").values()) == 2 * 6300.0


# -- accounting dimensions: account, QoS, partition (table batch_usage) ---------------------

CAROL = "https://atlas.example.org/|carol"


def run(id_: str, user: str, start: float, end: float, cores: int, cpu: float,
        **attrs: Any) -> wire.Event:  # fmt: skip
    """A job run of `cores` cores from `start` to `end` on a node that never reported its
    HEPscore23 (the default, 10); the amounts are exact in binary floating point."""
    base: dict[str, Any] = dict(partition="batch", cores=cores, cpu_seconds=cpu,
                                wall_seconds=end - start, node="wn")  # fmt: skip
    base.update(attrs)
    return wire.Event("batch_job", id_, user, H + start, H + end,
                      {k: v for k, v in base.items() if v is not None})  # fmt: skip


# two members, two accounts, two QoS, runs across hour boundaries, a requeued job's two runs,
# a job without any dimension and a partition name longer than the 64 characters kept
DIMENSION_JOBS = [
    run("slurm:c:11", "alice", 1800, 8100, 4, 5040.0, gpus=1, account="phys", qos="normal"),
    run("slurm:c:12", "alice", 2700, 4500, 2, 900.0, account="chem", qos="normal"),
    run(
        "slurm:c:13@1", "alice", 600, 4200, 1, 1800.0, account="phys", qos="high", requeued=True
    ),  # ended by a requeue: its usage counts, no job  # fmt: skip
    run("slurm:c:13@2", "alice", 4200, 5400, 1, 600.0, account="phys", qos="high"),
    run(
        "slurm:c:14",
        "carol",
        3000,
        7800,
        8,
        19200.0,
        account="chem",
        qos="high",
        partition="p" * 80,
    ),  # fmt: skip
    run("slurm:c:15", "carol", 3600, 3900, 1, 150.0, partition=None),
]


def batch_rows(client: TestClient) -> dict[tuple[Any, ...], float]:
    """batch_usage summed over the dimensions: (member, resource, hour) -> amount."""
    with client.app.state.services.engine.connect() as conn:
        return {
            (m, r, h): a
            for m, r, h, a in conn.execute(
                text(
                    "SELECT member_id, resource, hour, SUM(amount) FROM batch_usage "
                    "GROUP BY member_id, resource, hour"
                )
            )
        }


def usage_rows(client: TestClient) -> dict[tuple[Any, ...], float]:
    with client.app.state.services.engine.connect() as conn:
        return {
            (m, r, h): a
            for m, r, h, a in conn.execute(
                text("SELECT member_id, resource, hour, amount FROM usage")
            )
        }


def test_usage_by_account_and_qos_is_exact_and_sums_to_the_ledger(client: TestClient) -> None:
    post = Poster(client)
    assert post(DIMENSION_JOBS[:3]).json()["status"] == "applied"
    assert post(DIMENSION_JOBS[3:]).json()["status"] == "applied"
    assert post(DIMENSION_JOBS).json()["status"] == "applied"  # resent: nothing counts twice

    q = Query(client.app.state.services.engine)
    got = q.batch_by(LOCAL_ADMIN, H, H + 4 * 3600, by=("account", "qos"))
    cols = ["account", "qos", "batch_jobs", "batch_job_seconds", "batch_wall_core_seconds",
            "batch_cpu_seconds", "batch_gpu_seconds", "batch_cpu_hs23_seconds",
            "batch_wall_core_hs23_seconds"]  # fmt: skip
    assert got[cols].values.tolist() == [
        # account, qos, jobs, wall, wall x cores, CPU, GPU, CPU x 10, wall x cores x 10
        ["", "", 1, 300, 300, 150, 0, 1500, 3000],
        ["chem", "high", 1, 4800, 38400, 19200, 0, 192000, 384000],
        ["chem", "normal", 1, 1800, 3600, 900, 0, 9000, 36000],
        ["phys", "high", 1, 4800, 4800, 2400, 0, 24000, 48000],  # two runs, one job
        ["phys", "normal", 1, 6300, 25200, 5040, 6300, 50400, 252000],
    ]
    assert got["cpu_efficiency"].tolist() == [0.5, 0.5, 0.25, 0.5, 0.2]
    partitions = q.batch_by(LOCAL_ADMIN, H, H + 4 * 3600, by="partition")
    assert partitions["partition"].tolist() == ["", "batch", "p" * 64]
    assert partitions["batch_jobs"].tolist() == [1, 3, 1]  # c:13 is one job of two runs

    # per member, resource and hour: the sum over the dimensions is the ledger's, with ==
    ledger = {k: a for k, a in usage_rows(client).items() if k[1].startswith("batch_")}
    assert {k[2] for k in ledger} == {H, H + 3600, H + 7200}  # the runs crossed the hours
    assert batch_rows(client) == ledger
    # and the totals equal those of the ledger's own reads
    totals = q.batch_usage(LOCAL_ADMIN, H, H + 4 * 3600, by="member").set_index("member")
    by_member = q.batch_by(LOCAL_ADMIN, H, H + 4 * 3600, by=("member", "account", "qos"))
    summed = by_member.drop(columns=["account", "qos", "cpu_efficiency"]).groupby("member").sum()
    assert summed.to_dict() == totals.drop(columns="cpu_efficiency").to_dict()

    # scoped like every read: carol sees her rows only, an hour's window only that hour
    carol = Principal("member", member_id=CAROL, vo="atlas")
    mine = q.batch_by(carol, H, H + 4 * 3600, by=("member", "account"))
    assert mine[["member", "account", "batch_jobs"]].values.tolist() == [
        [CAROL, "", 1], [CAROL, "chem", 1]
    ]  # fmt: skip
    hour = q.batch_by(carol, H + 3600, H + 7200, by="account").set_index("account")
    assert hour.loc["chem", "batch_wall_core_seconds"] == 8 * 3600
    assert hour.loc["", "batch_job_seconds"] == 300
    empty = q.batch_by(carol, H - 86400, H - 3600, by=("qos", "vo"))
    assert empty.empty and list(empty.columns[:2]) == ["qos", "vo"]
    assert "cpu_efficiency" in empty.columns


@pytest.mark.parametrize("by", [(), ("member",), ("vo", "group"), ("account", "node")])
def test_batch_by_needs_a_dimension(client: TestClient, by: tuple[str, ...]) -> None:
    with pytest.raises(QueryError, match="name one or more of account, qos, partition"):
        Query(client.app.state.services.engine).batch_by(LOCAL_ADMIN, H, H + 3600, by=by)


AUD = "https://afmon.test"


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, Issuer]]:
    """The server with a real local OIDC issuer for the VO, the dimension jobs posted."""
    iss = Issuer("atlas", AUD)
    with IssuerServer(free_port(), [iss]):
        identity = tmp_path / "identity.toml"
        identity.write_text(IDENTITY.replace("https://atlas.example.org/", iss.url))
        settings = ServerSettings(
            database_url=database_url,
            facility_tokens={"af": TOKEN},
            identity_file=identity,
            default_hepscore23_per_core=10.0,
            oidc_issuers={iss.url: {"vo": "atlas", "manager_groups": ["/atlas/af-managers"]}},
            oidc_audience=AUD,
            oidc_client_id="afmon",
            oidc_client_secret="client-secret",
            session_secret="a-session-secret-of-at-least-32-characters",
        )
        client = TestClient(create_app(settings, clock=lambda: H + 9000.0, with_dashboard=False))
        # and a job of no wall time: no efficiency (null in JSON, which has no NaN)
        idle = run("slurm:c:16", "carol", 5000, 5000, 1, 0.0, account="idle")
        assert Poster(client)([*DIMENSION_JOBS, idle]).json()["status"] == "applied"
        yield client, iss


def test_batch_api_shows_a_member_only_their_rows(api: tuple[TestClient, Issuer]) -> None:
    client, iss = api
    window = {"start": H, "end": H + 4 * 3600}

    def get(token: str, by: str) -> Any:
        return client.get(
            "/api/v1/batch",
            params={**window, "by": by},
            headers={"Authorization": f"Bearer {token}"},
        )

    carol = f"{iss.url}|carol"
    r = get(iss.token("carol", ["/atlas"]), "member,account,qos")
    assert r.status_code == 200, r.text
    rows = [(x["member"], x["account"], x["qos"], x["batch_jobs"]) for x in r.json()]
    assert rows == [(carol, "", "", 1), (carol, "chem", "high", 1), (carol, "idle", "", 1)]
    assert r.json()[1]["batch_wall_core_seconds"] == 38400 and r.json()[1]["cpu_efficiency"] == 0.5
    assert r.json()[2]["batch_wall_core_seconds"] == 0 and r.json()[2]["cpu_efficiency"] is None
    # by account alone: her accounts only, nothing of alice's (phys, the normal QoS)
    r = get(iss.token("carol", ["/atlas"]), "account")
    assert [x["account"] for x in r.json()] == ["", "chem", "idle"]
    assert "phys" not in r.text
    # the VO's manager sees the VO: both members' jobs
    r = get(iss.token("carol", ["/atlas", "/atlas/af-managers"]), "account")
    jobs = {x["account"]: x["batch_jobs"] for x in r.json()}
    assert jobs == {"": 1, "chem": 2, "idle": 1, "phys": 2}
    # a `by` without a dimension: 400 with the query's message; no token: 401
    r = get(iss.token("carol", ["/atlas"]), "member")
    assert r.status_code == 400 and "name one or more of account, qos" in r.json()["detail"]
    assert client.get("/api/v1/batch", params={**window, "by": "qos"}).status_code == 401
    # a window without jobs: an empty list
    window = {"start": 0, "end": 3600}
    assert get(iss.token("carol", ["/atlas"]), "qos").json() == []
