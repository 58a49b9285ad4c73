"""A small facility with known batch jobs and sessions, fed through the real ingest API, for
the APEL tests: jobs of several node counts and core counts, a requeued run, a job across
the February/March boundary, one after the week, one of an unmapped account, and nodes with
and without their own HEPscore23. Week 2026-W09 (23 February to 1 March) touches both months.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.reads import LOCAL_ADMIN, Principal, Query
from afmon.aggregator.report.build import build_report
from afmon.aggregator.report.week import Week
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire

FACILITY = "apel-af"
TOKEN = "apel-token"
WEEK = Week.parse("2026-W09")
ALICE = "https://atlas.example.org/|alice"
BOB = "https://cms.example.org/|bob"
DEFAULT_HS23 = 10.0
NOW = WEEK.end + 14 * 86400.0  # the app's clock: W09 and W10 have ended
NODE_HS23 = {"n1": 20.0}  # n2 reports none: the default applies
IDENTITY = f"""
[vos.atlas]
issuer = "https://atlas.example.org/"
[vos.cms]
issuer = "https://cms.example.org/"
[[members]]
vo = "atlas"
subject = "alice"
display_name = "Alice"
group = "/atlas/higgs"
groups = ["/atlas", "/atlas/higgs"]
accounts = [{{ facility = "{FACILITY}", local = "alice" }}]
[[members]]
vo = "cms"
subject = "bob"
display_name = "Bob"
accounts = [{{ facility = "{FACILITY}", local = "bob" }}]
"""


def t(day: int, hour: int, month: int = 2, minute: int = 0) -> float:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class Job:
    """One batch run and the APEL key it belongs to (node count, processors)."""

    id: str
    user: str
    start: float
    end: float
    cores: int
    cpu: float
    node: str
    nodes: str | None  # Slurm's NodeList; None for HTCondor (no such attribute)
    node_count: int
    requeued: bool = False

    @property
    def wall(self) -> float:
        return self.end - self.start

    def event(self) -> wire.Event:
        attrs: dict[str, Any] = {
            "scheduler": "slurm" if self.nodes is not None else "htcondor",
            "cores": self.cores,
            "cpu_seconds": self.cpu,
            "wall_seconds": self.wall,
            "gpus": 0,
            "submit": self.start,
            "node": self.node,
        }
        if self.nodes is not None:
            attrs |= {"nodes": self.nodes, "requeued": self.requeued}
        return wire.Event("batch_job", self.id, self.user, self.start, self.end, attrs)


JOBS = (
    Job("slurm:c:1", "alice", t(24, 9), t(24, 10), 4, 10_000, "n1", "n1", 1),
    Job("slurm:c:2", "alice", t(25, 10), t(25, 12), 4, 20_000, "n1", "n1", 1),
    Job("slurm:c:3", "alice", t(27, 17), t(27, 18), 8, 25_000, "n1", "n[1-2]", 2),
    Job("slurm:c:4@1", "alice", t(26, 7, minute=30), t(26, 8), 4, 3_000, "n2", "n2", 1, True),
    Job("slurm:c:5", "alice", t(28, 22), t(1, 2, month=3), 4, 40_000, "n1", "n1", 1),
    Job("htcondor:s#6.0", "bob", t(24, 13, minute=30), t(24, 15), 2, 9_000, "n2", None, 1),
    Job("slurm:c:7", "nobody", t(24, 9), t(24, 11), 1, 7_000, "n1", "n1", 1),  # unmapped
    Job("slurm:c:8", "alice", t(2, 1, month=3), t(3, 1, month=3), 4, 80_000, "n1", "n1", 1),
    Job("slurm:c:9", "alice", t(3, 5, minute=50), t(3, 6), 4, 1_200, "n1", "n1", 1),
)
SESSIONS = (  # alice's; the second runs over the month boundary
    wire.Event("session", "s1", "alice", t(24, 9), t(24, 11, minute=30), {"profile": "small"}),
    wire.Event("session", "s2", "alice", t(28, 23), t(1, 1, month=3), {"profile": "small"}),
)


@dataclass
class BatchWorld:
    client: TestClient
    settings: ServerSettings
    query: Query
    seq: int = field(default=0)

    def post(self, events: list[wire.Event], series: list[wire.Series] | None = None) -> None:
        self.seq += 1
        batch = wire.Batch(
            version=wire.WIRE_VERSION,
            agent_id="ctl",
            facility=FACILITY,
            node="ctl",
            seq=self.seq,
            sent_at=NOW,
            events=events,
            series=series or [],
        )
        r = self.client.post(
            "/api/v1/ingest",
            content=wire.encode(batch),
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert r.status_code == 200, r.text

    def doc(
        self, week: Week = WEEK, principal: Principal = LOCAL_ADMIN, **settings: Any
    ) -> dict[str, Any]:
        s = self.settings.model_copy(update=settings)
        return build_report(self.query, principal, week, s)


def build_world(tmp: Path, database_url: str | None = None) -> BatchWorld:
    """The world on SQLite in `tmp`, or on `database_url`."""
    identity = tmp / "identity.toml"
    identity.write_text(IDENTITY)
    settings = ServerSettings(
        database_url=database_url or f"sqlite:///{tmp}/afmon.sqlite",
        facility_tokens={FACILITY: TOKEN},
        identity_file=identity,
        default_hepscore23_per_core=DEFAULT_HS23,
        dashboard=False,
        log_level="warning",
    )
    client = TestClient(create_app(settings, clock=lambda: NOW, with_dashboard=False))
    world = BatchWorld(client, settings, client.app.state.services.query)
    hs = [
        wire.Series("node_hepscore23_per_core", "HS23", "gauge", {"node": n}, [t(1, 0)], [v])
        for n, v in NODE_HS23.items()
    ]
    world.post([], hs)  # the nodes' benchmarks first, as an agent reports them
    world.post([j.event() for j in JOBS] + list(SESSIONS))
    return world
