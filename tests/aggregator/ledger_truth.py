"""The ledger as a user reads it (`/api/v1/usage` per member) and the simulator's ground
truth keyed the same way, for tests that compare the two through a real server."""

from __future__ import annotations

import httpx

from afmon.collectors.simulator import FacilitySimulator
from tests.conftest import ServerProcess

UNMAPPED = "afmon:unmapped|{facility}"


def member_totals(server: ServerProcess, start: float = 0, end: float = 4e9) -> dict:
    """(member, resource) -> amount, rows with a zero amount left out."""
    r = httpx.get(
        f"{server.url}/api/v1/usage",
        params={"start": start, "end": end, "by": "member"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return {(row["member"], row["resource"]): row["amount"] for row in r.json() if row["amount"]}


def expected_totals(sim: FacilitySimulator) -> dict[tuple[str, str], float]:
    """The simulator's truth per (member, resource); unmapped accounts on the unmapped
    member of its facility."""
    ids = sim.member_ids()
    out: dict[tuple[str, str], float] = {}
    for (local, resource), amount in sim.truth.by_account.items():
        key = (ids.get(local, UNMAPPED.format(facility=sim.facility)), resource)
        out[key] = out.get(key, 0.0) + amount
    return {k: v for k, v in out.items() if v}
