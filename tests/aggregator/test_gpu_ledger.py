"""GPU accounting end to end: the GPU probe on the fake NVML, its batches posted to a real
`afmon serve` process, the ledger read back through the query layer (the read API).

The scenario (tests/collectors/fake_nvml.py `Scenario`): two members on one GPU, one member
on two GPUs, a MIG GPU, an idle-but-held GPU and a process that exits between two polls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pandas as pd
import pytest

from afmon.aggregator.ledger.base import HOUR, hour_of
from afmon.aggregator.store.schema import RESOURCES
from afmon.collectors import wire
from tests.collectors.fake_nvml import CYCLES, STEP, Scenario
from tests.conftest import ServerProcess

IDENTITY = """
[vos.atlas]
issuer = "https://atlas-auth.example.org/"
[vos.cms]
issuer = "https://cms-auth.example.org/"
"""
MEMBERS = {"alice": "atlas", "bob": "atlas", "carol": "cms", "dave": "cms", "frank": "atlas"}
GPU_RESOURCES = ("gpu_allocated_seconds", "gpu_active_seconds", "gpu_energy_joules")


def member_id(user: str) -> str:
    return f"https://{MEMBERS[user]}-auth.example.org/|{user}-sub"


def identity_toml(facility: str) -> str:
    return IDENTITY + "".join(
        f'\n[[members]]\nvo = "{vo}"\nsubject = "{u}-sub"\ndisplay_name = "{u.title()}"\n'
        f'accounts = [{{ facility = "{facility}", local = "{u}" }}]\n'
        for u, vo in MEMBERS.items()
    )


def post_batch(client: httpx.Client, url: str, token: str, batch: wire.Batch) -> None:
    """POST one batch as the agent does, waiting out the server's rate limit (429)."""
    headers = {"Content-Type": wire.CONTENT_TYPE, "Authorization": f"Bearer {token}"}
    for _ in range(100):
        r = client.post(f"{url}/api/v1/ingest", content=wire.encode(batch), headers=headers)
        if r.status_code != 429:
            break
        time.sleep(0.2)
    assert r.status_code == 200, r.text


def post_scenario(server: ServerProcess, tmp_path: Path, t0: float) -> Scenario:
    """Run the probe through the scripted cycles and post each cycle's batch."""
    scenario = Scenario(tmp_path / "proc")
    probe = scenario.probe()
    assert probe.state == "ready"
    with httpx.Client(timeout=30) as client:
        for k in range(CYCLES):
            scenario.advance(k)
            t = t0 + k * STEP
            out = probe.collect(t)
            batch = wire.Batch(
                version=wire.WIRE_VERSION, agent_id="gpu-agent", facility=server.facility,
                node="gpu-node-1", seq=k, sent_at=t, series=out.series, events=out.events,
            )  # fmt: skip
            post_batch(client, server.url, server.token, batch)
    assert scenario.nvml.init_calls == 1  # NVML initialised once
    return scenario


@pytest.fixture
def fed(
    tmp_path: Path, server_factory: Callable[..., ServerProcess]
) -> tuple[ServerProcess, Scenario, float]:
    identity = tmp_path / "identity.toml"
    identity.write_text(identity_toml("test-af"))
    server = server_factory(identity_file=identity, dashboard="false")
    t0 = hour_of(time.time()) - 2 * HOUR - 100  # the samples cross an hour boundary
    return server, post_scenario(server, tmp_path, t0), t0


def usage(server: ServerProcess, by: str, t0: float) -> pd.DataFrame:
    r = httpx.get(
        f"{server.url}/api/v1/usage", params={"start": t0 - HOUR, "end": t0 + HOUR, "by": by},
        timeout=30,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    return pd.DataFrame(r.json())


def test_allocated_active_energy_per_member_are_exact(
    fed: tuple[ServerProcess, Scenario, float],
) -> None:
    server, scenario, t0 = fed
    df = usage(server, "member", t0)
    gpu = df[df["resource"].str.startswith("gpu_")]
    got = {(r.member, r.resource): r.amount for r in gpu.itertuples() if r.amount}
    expected = {
        (member_id(user), resource): amount
        for user, amounts in scenario.EXPECTED.items()
        for resource, amount in amounts.items()
        if amount
    }
    assert got == expected  # exact, no tolerance
    for r in gpu.itertuples():
        assert r.unit == RESOURCES[r.resource].unit


def test_member_sums_equal_device_totals_and_vo_totals(
    fed: tuple[ServerProcess, Scenario, float],
) -> None:
    server, scenario, t0 = fed
    members = usage(server, "member", t0).groupby("resource")["amount"].sum()
    assert members["gpu_allocated_seconds"] == scenario.DEVICE_ALLOCATED
    assert members["gpu_active_seconds"] == scenario.DEVICE_ACTIVE
    # every GPU is held throughout; dave holds half of the MIG GPU
    held_share = (1, 1, 1, 0.5, 1)
    assert members["gpu_energy_joules"] == sum(
        j * (CYCLES - 1) * share for j, share in zip(scenario.ENERGY_J, held_share, strict=True)
    )
    per_model = sum(
        members[f"gpu_{m}_allocated_seconds"] for m in wire.GPU_MODELS
        if f"gpu_{m}_allocated_seconds" in members
    )  # fmt: skip
    assert per_model == members["gpu_allocated_seconds"]
    vo = usage(server, "vo", t0).groupby("resource")["amount"].sum()
    fac = usage(server, "facility", t0).set_index("resource")["amount"]
    for resource in GPU_RESOURCES:
        assert vo[resource] == members[resource] == fac[resource]


def test_idle_but_held_interval_is_an_event(fed: tuple[ServerProcess, Scenario, float]) -> None:
    server, _scenario, t0 = fed
    df = usage(server, "member", t0)
    idle = df[df["resource"] == "gpu_idle_seconds"]
    assert idle[["member", "amount"]].values.tolist() == [[member_id("frank"), 240.0]]
