"""The batch_job ledger rule through the real ingest (SQLite and PostgreSQL): hours, cores,
GPUs, HEPscore23 normalisation from the node's own report, queue wait histograms, efficiency
in the query layer, and bad attributes refused naming the attribute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.ledger.batch import spread
from afmon.aggregator.query.reads import LOCAL_ADMIN, Principal, Query
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire

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
def test_bad_attributes_are_refused_naming_them(
    client: TestClient, attrs: dict[str, Any], field: str, message: str
) -> None:
    post = Poster(client)
    r = post([job("slurm:c:0", cpu_seconds=1.0), job(**attrs)])
    assert r.status_code == 422
    assert r.json()["detail"]["field"] == f"$.events[1].attrs.{field}"
    assert message in r.json()["detail"]["message"]
    assert rows(client, "batch_jobs") == {}  # nothing of the batch was written
    assert post([job("slurm:c:0", cpu_seconds=1.0)]).status_code == 200
    assert rows(client, "batch_jobs") == {H: 1.0}


def test_a_requeued_job_counts_once_and_every_run_counts_its_usage(client: TestClient) -> None:
    post = Poster(client)
    first = job("slurm:c:7@1", requeued=True, cpu_seconds=100.0, gpus=None)  # ended by a requeue
    last = job("slurm:c:7@2", cpu_seconds=200.0, gpus=None)
    assert post([first, last]).json()["status"] == "applied"
    assert sum(rows(client, "batch_jobs").values()) == 1.0  # one job, as sacct counts it
    assert sum(rows(client, "batch_cpu_seconds").values()) == 300.0  # both runs, as sacct -D
    assert sum(rows(client, "batch_job_seconds").values()) == 2 * 6300.0
