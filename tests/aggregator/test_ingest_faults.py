"""Bad records among good ones, through a real `afmon serve` on SQLite and PostgreSQL.

A simulated facility's batches are sent as its agents would; one of them also carries a
record of each class of bad input. Then:
- the ledger equals the ground truth of the valid records exactly (nothing of a bad record,
  nothing of a good one lost);
- each bad record is in the quarantine with its reason;
- after the causes are fixed (limits raised, bounds widened) `afmon quarantine replay`
  applies the fixable ones exactly once: the ledger is the full truth; the others (only
  their producer can fix them) stay, and `afmon quarantine drop` removes them.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
import pytest

from afmon.collectors import wire
from afmon.collectors.simulator import NODE_CORES, FacilitySimulator, Poster
from tests.aggregator.ledger_truth import UNMAPPED, expected_totals, member_totals
from tests.conftest import ServerProcess

HOURS = 2
# recent whole hours: the node limit counts the nodes active within a day (limits.py)
START = (time.time() // 3600 - HOURS - 1) * 3600
DEFAULT_HS23 = 10.0  # AFMON_DEFAULT_HEPSCORE23_PER_CORE: for a node that reported none
SIM_HS23 = 12.5  # what the simulator's nodes report


def series(user: str, node: str, times: list[float], values: list[float], **kw: object):
    return wire.Series(metric="user_cpu_seconds", unit="seconds", kind="counter",
                       labels={"user": user, "node": node}, times=times, values=values,
                       **kw)  # type: ignore[arg-type]  # fmt: skip


def with_bad_records(batch: wire.Batch) -> tuple[bytes, dict[tuple[str, str], float]]:
    """The batch's body with one record of each class added, and what the fixable ones
    are worth in the ledger once replayed (on the facility's unmapped member)."""
    t = max(s.times[-1] for s in batch.series)
    node = batch.node
    extra = [
        # a node past AFMON_LIMIT_NODES_PER_FACILITY (2): over_limit_nodes
        series("zed", "wn-extra", [t - 20, t - 10], [0.0, 50.0], created=t - 30),
        # 20 x the node's cores for 10 s: beyond_capacity
        series("yan", node, [t - 20, t - 10], [0.0, NODE_CORES * 10 * 20], created=t - 20),
        # a label the server owns: reserved_label (never replayable)
        wire.Series(
            metric="user_cpu_seconds",
            unit="seconds",
            kind="counter",
            labels={"user": "vic", "node": node, "vo": "cms"},
            times=[t - 10],
            values=[1.0],
        ),  # fmt: skip
    ]
    too_long = wire.Event(kind="session", id="xu-1", user="xu", start=t - 100 * 86400, end=t)
    doc = msgspec.to_builtins(batch)
    doc["series"] = [*doc["series"], *msgspec.to_builtins(extra)]
    doc["events"] = [*doc["events"], msgspec.to_builtins(too_long)]
    # a record that cannot be read: malformed (never replayable)
    doc["series"].append({**msgspec.to_builtins(extra[0]), "values": [0.0, "fifty"]})
    fixed = {
        "cpu_seconds": 50.0 + NODE_CORES * 10 * 20,
        "cpu_hs23_seconds": 50.0 * DEFAULT_HS23 + NODE_CORES * 10 * 20 * SIM_HS23,
        "sessions": 1.0,
        "session_seconds": 100 * 86400.0,
    }
    member = UNMAPPED.format(facility=batch.facility)
    return gzip.compress(json.dumps(doc).encode()), {(member, r): a for r, a in fixed.items()}


def plus(a: dict[tuple[str, str], float], b: dict[tuple[str, str], float]) -> dict:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in a.keys() | b.keys()}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "afmon.aggregator.cli", "quarantine", *args],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_bad_records_among_good_ones_are_quarantined_and_replayed_exactly(
    database_url: str, tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    sim = FacilitySimulator(facility="test-af", nodes=2, members_per_vo=2, seed=31)
    identity = tmp_path / "identity.toml"
    identity.write_text(sim.identity_toml())
    server = server_factory(
        database_url=database_url,
        identity_file=identity,
        dashboard="false",
        limit_nodes_per_facility="2",
    )
    batches = list(sim.batches(START, START + HOURS * 3600, ticks_per_batch=30))
    carrier = len(batches) // 2
    poster = Poster(server.url, server.token)
    for i, batch in enumerate(batches):
        if i != carrier:
            assert poster.post(batch)["status"] == "applied"
            continue
        body, fixable = with_bad_records(batch)
        r = httpx.post(
            f"{server.url}/api/v1/ingest",
            content=body,
            headers={"Authorization": f"Bearer {server.token}", "Content-Encoding": "gzip"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["status"] == "partial"
        assert answer["samples"] == batch.sample_count  # every good sample of the batch
        reasons = sorted(x["reason"] for x in answer["refused"])
        assert reasons == sorted(["over_limit_nodes", "beyond_capacity", "reserved_label",
                                  "too_long", "malformed"])  # fmt: skip

    truth = expected_totals(sim)
    assert member_totals(server) == pytest.approx(truth, rel=1e-12)

    env = dict(server.env)
    listed = cli(env, "list")
    assert listed.returncode == 0, listed.stderr
    for reason in ("over_limit_nodes", "beyond_capacity", "reserved_label", "too_long"):
        assert re.search(rf"test-af\s+{reason}\s+1\b", listed.stdout), listed.stdout
    assert re.search(r"test-af\s+malformed\s+1\b", listed.stdout), listed.stdout

    # nothing fixed yet: a replay changes nothing
    same = cli(env, "replay")
    assert same.returncode == 1 and "replayed 0 records" in same.stdout, same.stdout
    assert member_totals(server) == pytest.approx(truth, rel=1e-12)

    fixed_env = {**env, "AFMON_LIMIT_NODES_PER_FACILITY": "10", "AFMON_CAPACITY_SLACK": "100",
                 "AFMON_MAX_EVENT_DURATION_DAYS": "200"}  # fmt: skip
    done = cli(fixed_env, "replay")
    assert done.returncode == 1, done.stdout + done.stderr  # two cannot be fixed this way
    assert "replayed 3 records" in done.stdout, done.stdout
    assert member_totals(server) == pytest.approx(plus(truth, fixable), rel=1e-12)
    again = cli(fixed_env, "replay")
    assert "replayed 0 records" in again.stdout, again.stdout
    assert member_totals(server) == pytest.approx(plus(truth, fixable), rel=1e-12)

    for reason in ("reserved_label", "malformed"):
        dropped = cli(env, "drop", "--reason", reason)
        assert dropped.returncode == 0, dropped.stdout + dropped.stderr
    assert cli(env, "replay").returncode == 0
