"""Exactness of the ledger on both backends, fed through a real server process over HTTP.

The simulator knows exactly what it sent; the ledger must equal it, and
members must sum to groups, groups to VOs, VOs to the facility.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pandas as pd
import pytest

from afmon.aggregator.store.schema import RESOURCES
from afmon.collectors.simulator import FacilitySimulator, Poster, backfill
from tests.conftest import ServerProcess

END = 1_790_006_400.0  # a whole UTC hour
HOURS = 10


@pytest.fixture
def fed_server(
    database_url: str, tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> tuple[ServerProcess, FacilitySimulator]:
    sim = FacilitySimulator(
        facility="test-af", nodes=3, members_per_vo=3, seed=11, sessions_per_member_day=6
    )
    identity = tmp_path / "identity.toml"
    identity.write_text(sim.identity_toml())
    server = server_factory(database_url=database_url, identity_file=identity, dashboard="false")
    with httpx.Client(timeout=60) as client:
        backfill(
            sim, Poster(server.url, server.token, client), END - HOURS * 3600, END, report=None
        )
    return server, sim


def totals(
    server: ServerProcess, by: str, start: float = 0, end: float = END + 86400
) -> pd.DataFrame:
    r = httpx.get(
        f"{server.url}/api/v1/usage", params={"start": start, "end": end, "by": by}, timeout=30
    )
    assert r.status_code == 200, r.text
    return pd.DataFrame(r.json())


def test_ledger_equals_ground_truth_per_member(
    fed_server: tuple[ServerProcess, FacilitySimulator],
) -> None:
    server, sim = fed_server
    got = {(r.member, r.resource): r.amount for r in totals(server, "member").itertuples()}
    ids = sim.member_ids()
    expected: dict[tuple[str, str], float] = {}
    for (local, resource), amount in sim.truth.by_account.items():
        key = (ids.get(local, "afmon:unmapped|test-af"), resource)
        expected[key] = expected.get(key, 0.0) + amount
    expected = {k: v for k, v in expected.items() if v}
    assert len(expected) > 30  # a non-trivial workload: several members, every resource
    assert {r for _, r in expected} == {
        "cpu_seconds",
        "cpu_hs23_seconds",
        "memory_byte_seconds",
        "io_read_bytes",
        "io_write_bytes",
        "session_seconds",
        "sessions",
    }
    assert got == expected  # exact: no tolerance
    units = totals(server, "member").groupby("resource")["unit"].unique()
    for resource, unit in units.items():
        assert list(unit) == [RESOURCES[resource].unit]


def test_members_sum_to_groups_to_vos_to_facility(
    fed_server: tuple[ServerProcess, FacilitySimulator],
) -> None:
    server, _ = fed_server
    member = totals(server, "vo,group,member")
    group = totals(server, "vo,group")
    vo = totals(server, "vo")
    facility = totals(server, "facility")
    summed_groups = member.groupby(["vo", "group", "resource"])["amount"].sum()
    assert (
        summed_groups.to_dict() == group.set_index(["vo", "group", "resource"])["amount"].to_dict()
    )
    summed_vos = group.groupby(["vo", "resource"])["amount"].sum()
    assert summed_vos.to_dict() == vo.set_index(["vo", "resource"])["amount"].to_dict()
    summed_facility = vo.groupby("resource")["amount"].sum()
    assert summed_facility.to_dict() == facility.set_index("resource")["amount"].to_dict()
    assert set(vo["vo"]) == {"atlas", "cms", "lhcb", "unmapped"}


def test_the_daily_rollup_equals_the_hours(
    fed_server: tuple[ServerProcess, FacilitySimulator],
) -> None:
    """Whole days are read from the daily rollup, partial ones from the hours: a range that
    holds all the data in partial days and one made of whole days give the same totals."""
    server, _ = fed_server
    hours_only = totals(server, "member", start=END - HOURS * 3600 - 1800, end=END + 1800)
    days_only = totals(server, "member", start=0, end=END + 86400)
    pd.testing.assert_frame_equal(hours_only, days_only)


def test_replaying_everything_changes_nothing(
    fed_server: tuple[ServerProcess, FacilitySimulator],
) -> None:
    """A restarted simulator (new agent ids and seqs) resends the same hours: nothing doubles."""
    server, sim = fed_server
    before = totals(server, "member")
    again = FacilitySimulator(
        facility="test-af", nodes=3, members_per_vo=3, seed=11, sessions_per_member_day=6
    )
    with httpx.Client(timeout=60) as client:
        backfill(
            again, Poster(server.url, server.token, client), END - HOURS * 3600, END, report=None
        )
    pd.testing.assert_frame_equal(totals(server, "member"), before)


def test_rich_facility_every_resource_equals_the_truth(
    database_url: str, tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    """The rich simulator (spawn waits, Dask, batch, GPUs, data by source) through a real
    server: every ledger resource equals what was sent. Batch amounts are spread over the
    hours a job ran in proportion to time, so those compare to 1e-9 relative."""
    sim = FacilitySimulator(
        facility="test-af", nodes=3, members_per_vo=3, seed=5, sessions_per_member_day=6, rich=True
    )
    identity = tmp_path / "identity.toml"
    identity.write_text(sim.identity_toml())
    server = server_factory(database_url=database_url, identity_file=identity, dashboard="false")
    with httpx.Client(timeout=60) as client:
        backfill(
            sim, Poster(server.url, server.token, client), END - HOURS * 3600, END, report=None
        )
    got = {(r.member, r.resource): r.amount for r in totals(server, "member").itertuples()}
    ids = sim.member_ids()
    expected: dict[tuple[str, str], float] = {}
    for (local, resource), amount in sim.truth.by_account.items():
        key = (ids.get(local, "afmon:unmapped|test-af"), resource)
        expected[key] = expected.get(key, 0.0) + amount
    expected = {k: v for k, v in expected.items() if v}
    resources = {r for _, r in expected}
    assert {
        "gpu_allocated_seconds",
        "gpu_active_seconds",
        "gpu_a100_allocated_seconds",
        "gpu_energy_joules",
        "data_read_cache_bytes",
        "dask_worker_seconds",
        "dask_clusters",
        "batch_jobs",
        "batch_cpu_seconds",
    } <= resources
    assert set(got) == set(expected)
    for key, amount in expected.items():
        if key[1].startswith("batch_"):
            assert got[key] == pytest.approx(amount, rel=1e-9), key
        else:
            assert got[key] == amount, key
