"""A simulated fortnight with known ground truth, fed through the real ingest API.

Two simulator runs of the same facility and members: one covers ISO week 2026-W08 from its
first second to its last, the other 2026-W09 (from 12 minutes in: a gap longer than the
gauge limit, so nothing of the first run leaks into the second week). Each week's ledger
therefore equals its run's truth exactly. The app's clock follows the simulated time, so
batches arrive (`received_at`) when the simulated agents sent them. A third, quiet node
sends one batch in W08 and one two days into W09: the completeness section must find it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.reads import Query
from afmon.aggregator.report.week import DAY, Week
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from afmon.collectors.simulator import FacilitySimulator, Poster, backfill

FACILITY = "test-af"
TOKEN = "report-test-token"
WEEK = Week.parse("2026-W09")  # Mon 2026-02-23 to Mon 2026-03-02: crosses into March
PREV = Week.parse("2026-W08")
SECOND_RUN_START = WEEK.start + 720
QUIET_NODE = "quiet-node"
QUIET_TIMES = (PREV.start + 3600.0, WEEK.start + 2 * DAY)
SILENCE_SECONDS = 7200.0
UNMAPPED_ID = f"afmon:unmapped|{FACILITY}"


@dataclass
class SimClock:
    """The app's clock: follows the simulator that is posting, or a fixed time."""

    now: float = 0.0
    sim: FacilitySimulator | None = None

    def __call__(self) -> float:
        if self.sim is not None and self.sim._tick is not None:  # noqa: SLF001
            return self.sim._tick  # noqa: SLF001
        return self.now


@dataclass
class World:
    client: TestClient
    settings: ServerSettings
    query: Query
    database_url: str
    member_ids: dict[str, str]  # local account -> member id
    truth: dict[str, dict[tuple[str, str], float]] = field(default_factory=dict)  # week ->

    def expected(self, week: str) -> dict[tuple[str, str], float]:
        """(member id, resource) -> amount, as the simulator sent it in `week`."""
        out: dict[tuple[str, str], float] = {}
        for (local, r), v in self.truth[week].items():
            key = (self.member_ids.get(local, UNMAPPED_ID), r)
            out[key] = out.get(key, 0.0) + v
        return out


# known waits in W09 (seconds): server starts (time-to-session) and a first Dask worker
SPAWN_WAITS = {"atlas001": (3.0, 4.0, 8.0), "cms001": (30.0,)}
FIRST_WORKER_WAITS = {"atlas001": (45.0,)}


def _latency_events(t0: float) -> list[wire.Event]:
    events = []
    for local, waits in SPAWN_WAITS.items():
        for i, w in enumerate(waits):
            start = t0 + i * 600
            events.append(wire.Event("spawn", f"spawn-{local}-{i}", local, start, start + w))
    for local, waits in FIRST_WORKER_WAITS.items():
        for i, w in enumerate(waits):
            start = t0 + i * 600
            events.append(
                wire.Event(
                    "dask_scale",
                    f"scale-{local}-{i}",
                    local,
                    start,
                    start + w,
                    {"reason": "first_worker", "target": 1},
                )
            )
    return events


def _quiet_batch(seq: int, t: float, events: list[wire.Event] | None = None) -> wire.Batch:
    series = [wire.Series("node_cpu_cores", "cores", "gauge", {"node": QUIET_NODE}, [t], [8.0])]
    return wire.Batch(
        version=wire.WIRE_VERSION,
        agent_id="quiet-agent",
        facility=FACILITY,
        node=QUIET_NODE,
        seq=seq,
        sent_at=t,
        series=series,
        events=events or [],
    )


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("report")
    runs = [
        FacilitySimulator(
            facility=FACILITY,
            nodes=2,
            members_per_vo=2,
            seed=21,
            interval=60.0,
            sessions_per_member_day=4,
        ),
        FacilitySimulator(
            facility=FACILITY,
            nodes=2,
            members_per_vo=2,
            seed=21,
            interval=60.0,
            sessions_per_member_day=7,
        ),
    ]
    assert runs[0].member_ids() == runs[1].member_ids()  # the same members in both runs
    identity = tmp / "identity.toml"
    identity.write_text(runs[0].identity_toml())
    url = f"sqlite:///{tmp}/afmon.sqlite"
    settings = ServerSettings(
        database_url=url,
        facility_tokens={FACILITY: TOKEN},
        identity_file=identity,
        local_mode=True,
        dashboard=False,
        log_level="warning",
        report_silence_seconds=SILENCE_SECONDS,
        ingest_rate_per_agent=1e6,
    )
    clock = SimClock()
    client = TestClient(create_app(settings, clock=clock, with_dashboard=False))
    poster = Poster("http://testserver", TOKEN, client)
    world = World(client, settings, client.app.state.services.query, url, runs[0].member_ids())

    clock.now = QUIET_TIMES[0]
    poster.post(_quiet_batch(1, QUIET_TIMES[0]))
    for run, week, start in ((runs[0], PREV, PREV.start), (runs[1], WEEK, SECOND_RUN_START)):
        clock.sim = run
        backfill(run, poster, start, week.end, report=None)
        clock.sim = None
        world.truth[str(week)] = dict(run.truth.by_account)
        if week == PREV:
            clock.now = QUIET_TIMES[1]
            poster.post(_quiet_batch(2, QUIET_TIMES[1], _latency_events(WEEK.start + DAY)))
    clock.now = WEEK.end + 14 * DAY  # later: W09 and W10 have ended
    try:
        yield world
    finally:
        client.close()
