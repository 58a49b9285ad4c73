"""The simulated facility's model, shared by the base simulator and its rich mode: members,
sessions, the ground truth of what was sent, and what the rich mode needs of a simulator."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SimMember:
    local: str
    vo: str
    group: str
    subject: str
    display_name: str
    mapped: bool = True


@dataclass
class SimSession:
    id: str
    member: SimMember
    node: str
    start: float
    end: float
    cores: int
    memory_gib: int


@dataclass
class GroundTruth:
    """What the simulator sent, per local account and ledger resource."""

    by_account: dict[tuple[str, str], float] = field(default_factory=lambda: defaultdict(float))

    def add(self, local: str, resource: str, amount: float) -> None:
        self.by_account[(local, resource)] += amount


class SimulatedFacility(Protocol):
    """What the rich mode (simulator_extras.RichFacility) reads of the simulator it extends."""

    facility: str
    nodes: list[str]
    interval: float
    hepscore: float
    truth: GroundTruth
