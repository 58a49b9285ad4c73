"""Which probes an agent runs, from its settings.

Each probe is enabled by its own settings; a probe that cannot run here (no GPU, no
batch system) still reports its state rather than stopping the agent.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from collectors.probes.base import Probe
from collectors.probes.host import HostProbe

if TYPE_CHECKING:
    from collectors.agent import AgentSettings


def build_probes(settings: AgentSettings, state_dir: Path | None) -> list[Probe]:
    """The probes of one agent; `state_dir` keeps their state across restarts (None: none)."""
    probes: list[Probe] = [
        HostProbe(
            node=settings.node,
            hepscore23_per_core=settings.hepscore23_per_core,
            proc_root=settings.proc_root,
            cgroup_root=settings.cgroup_root,
            state_path=None if state_dir is None else state_dir / "host-probe.json",
        )
    ]
    return probes
