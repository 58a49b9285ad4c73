"""The simulator's rich mode shows failure rates, access methods and formats (the demo), and
what the API answers equals a tally of the very events and series the simulator posted."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from fastapi.testclient import TestClient

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.identity.accounts import unmapped_member
from afmon.aggregator.query import access, failures, formats
from afmon.aggregator.query.base import LOCAL_ADMIN
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from afmon.collectors.simulator import FacilitySimulator, Poster

END = 1_790_006_400.0  # a Saturday 00:00 UTC
START = END - 2 * 86400


def test_simulated_failures_access_and_formats_equal_what_was_sent(tmp_path: Path) -> None:
    sim = FacilitySimulator(nodes=3, members_per_vo=4, vos=("atlas", "cms"), seed=5,
                            interval=60.0, sessions_per_member_day=6, rich=True)  # fmt: skip
    identity = tmp_path / "identity.toml"
    identity.write_text(sim.identity_toml())
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path}/s.sqlite",
        identity_file=identity,
        facility_tokens={sim.facility: "t"},
    )
    client = TestClient(create_app(settings, with_dashboard=False, clock=lambda: END))
    poster = Poster("http://testserver", "t", client)
    sent: list[wire.Batch] = []
    for batch in sim.batches(START, END):
        poster.post(batch)
        sent.append(batch)
    ids = sim.member_ids()
    unmapped = unmapped_member(sim.facility).id

    # the tally of what was sent: starts and outcomes per (member, activity)
    events = {(e.kind, e.id): e for b in sent for e in b.events if e.end is not None}
    tally: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    terminal: set[str] = set()
    for e in events.values():
        member = ids.get(e.user, unmapped)
        got = failures.outcome(e.kind, dict(e.attrs)) if e.kind in failures.ACTIVITIES else None
        if got is not None:
            tally[(member, failures.ACTIVITIES[e.kind])][got] += 1
        if e.kind == "session" and e.attrs.get("kind") == "terminal":
            terminal.add(member)
    engine = client.app.state.services.engine
    df = failures.failure_rates(engine, LOCAL_ADMIN, START - 3600, END + 3600, by="member")
    api = {(r.member, r.activity): (r.starts, r.failed, r.timed_out, r.cancelled)
           for r in df.itertuples()}  # fmt: skip
    want = {k: (sum(c.values()), c["failed"] + c["timed_out"], c["timed_out"], c["cancelled"])
            for k, c in tally.items()}  # fmt: skip
    assert api == want
    # the demo has something to show: failed jobs, failed server starts, erred computations
    totals = df.groupby("activity")["failed"].sum().to_dict()
    assert totals["batch"] > 0 and totals["session_start"] > 0 and totals["dask_computation"] > 0

    # terminal sessions among the access methods
    methods = access.active_by_method(engine, LOCAL_ADMIN, START, END, period="month")
    terminals = dict(zip(methods.method, methods.members, strict=True))["terminal"]
    assert terminals == len(terminal) > 0

    # formats: every format series' last value, as each counter started at zero
    last: dict[tuple[str, str], float] = {}
    for b in sent:
        for s in b.series:
            if s.metric == "user_data_read_bytes":
                key = json.dumps(s.labels, sort_keys=True)
                last[(key, s.labels["format"])] = s.values[-1]
    read: Counter[tuple[str, str]] = Counter()
    for (key, fmt), value in last.items():
        read[(ids.get(json.loads(key)["user"], unmapped), fmt)] += value
    got = formats.read_by_format(engine, LOCAL_ADMIN, START - 3600, END + 3600, by="member")
    assert {(r.member, r.format): r.read_bytes for r in got.itertuples()} == {
        k: v for k, v in read.items() if v
    }
    assert {"physlite", "nanoaod"} <= set(got.format)
