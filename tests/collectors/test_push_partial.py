"""A real agent's push loop against a real `afmon serve`: a batch with one bad record is
applied less that record (quarantined on the server, logged by the agent), the spool never
blocks, and everything behind it is delivered."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import httpx
import pytest

from afmon.collectors.probes.base import ProbeOutput, sample
from afmon.collectors.push import PushLoop
from afmon.collectors.spool import Spool


class SkewedOnce:
    """A gauge per collection, plus, in the second collection only, a sample an hour ahead
    (a clock jump on the node)."""

    name = "skewed"
    state = "ready"

    def __init__(self) -> None:
        self.n = 0

    def collect(self, now: float) -> ProbeOutput:
        self.n += 1
        out = [sample("test_tick", {"node": "wn1"}, now, self.n, unit="1", kind="gauge")]
        if self.n == 2:
            out.append(sample("test_jump", {"node": "wn1"}, now + 3600, 1, unit="1", kind="gauge"))
        return ProbeOutput(out)


def test_a_bad_record_never_blocks_the_spool(
    server_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = server_factory(dashboard="false")
    spool = Spool(tmp_path / "spool")
    with httpx.Client(timeout=30) as client:
        loop = PushLoop(probes=[SkewedOnce()], spool=spool, client=client, server_url=server.url,
                        token=server.token, facility=server.facility, node="wn1")  # fmt: skip
        with caplog.at_level(logging.WARNING, logger="afmon.collectors.push"):
            results = [loop.run_once() for _ in range(4)]
    assert [r.sent for r in results] == [1, 1, 1, 1]
    assert spool.pending() == [] and not list(spool.rejected_dir.iterdir())
    assert any("refused $.series[1].times (future)" in m for m in caplog.messages)
    db = sqlite3.connect(tmp_path / "server.sqlite")
    ticks = db.execute(
        "SELECT COUNT(*) FROM sample JOIN series ON series.id = sample.series_id "
        "WHERE series.metric = 'test_tick'"
    ).fetchone()
    assert ticks == (4,)  # every batch's good record, the one behind the bad record too
    assert db.execute("SELECT reason, field FROM quarantine").fetchall() == [
        ("future", "$.series[1].times")
    ]
