"""Which probes an agent runs, from its settings.

Each probe is enabled by its own settings; a probe that cannot run here (no GPU, no
batch system) still reports its state rather than stopping the agent.
"""

from __future__ import annotations

from pathlib import Path

from afmon.collectors.probes.base import Probe
from afmon.collectors.probes.host import HostProbe
from afmon.collectors.settings import AgentSettings


def build_probes(settings: AgentSettings, state_dir: Path | None) -> list[Probe]:
    """The probes of one agent; `state_dir` keeps their state across restarts (None: none)."""
    probes: list[Probe] = [
        HostProbe(
            node=settings.node,
            hepscore23_per_core=settings.hepscore23_per_core,
            proc_root=settings.proc_root,
            cgroup_root=settings.cgroup_root,
            min_uid=settings.min_uid,
            exclude_users=settings.exclude_users,
            state_path=None if state_dir is None else state_dir / "host-probe.json",
        )
    ]
    if settings.gpu_enabled:
        from afmon.collectors.probes.gpu import GpuProbe

        probes.append(GpuProbe(
            node=settings.node, proc_root=settings.proc_root,
            process_interval=settings.gpu_process_interval_seconds,
            idle_threshold_ratio=settings.gpu_idle_threshold_ratio,
            idle_min_seconds=settings.gpu_idle_min_seconds,
        ))
    if settings.slurm_enabled:
        from afmon.collectors.probes.slurm import SlurmProbe

        probes.append(SlurmProbe(sacct=[settings.sacct_path],
                                 state_path=state_dir and state_dir / "slurm-probe.json"))
    if settings.htcondor_enabled:
        from afmon.collectors.probes.htcondor import HTCondorProbe

        probes.append(HTCondorProbe(condor_history=[settings.condor_history_path],
                                    state_path=state_dir and state_dir / "htcondor-probe.json"))
    if settings.jupyterhub_url:
        from afmon.collectors.probes.jupyterhub import JupyterHubProbe

        token = settings.jupyterhub_token
        probes.append(JupyterHubProbe(settings.jupyterhub_url,
                                      token.get_secret_value() if token else None,
                                      poll_seconds=settings.jupyterhub_poll_seconds,
                                      state_path=state_dir and state_dir / "jupyterhub-probe.json"))
    if settings.dask_gateway_url:
        from afmon.collectors.probes.dask_gateway import DaskGatewayProbe

        cred = settings.dask_gateway_token
        probes.append(DaskGatewayProbe(settings.dask_gateway_url,
                                       cred.get_secret_value() if cred else None,
                                       auth=settings.dask_gateway_auth,
                                       users=settings.dask_gateway_users,
                                       poll_seconds=settings.dask_gateway_poll_seconds))
    if settings.xrootd_enabled:
        from afmon.collectors.probes.data_formats import FormatClassifier
        from afmon.collectors.probes.xrootd import Monitor, XRootDProbe

        monitor = Monitor(settings.xrootd_servers, default_role=settings.xrootd_default_role,
                          max_files=settings.xrootd_max_open_files,
                          formats=FormatClassifier(settings.xrootd_format_patterns))
        probes.append(XRootDProbe(settings.node, monitor, listen_host=settings.xrootd_listen_host,
                                  summary_port=settings.xrootd_summary_port,
                                  detail_port=settings.xrootd_detail_port,
                                  state_path=state_dir and state_dir / "xrootd-probe.json"))
    if settings.service_checks:
        from afmon.collectors.probes.services import ServiceProbe

        probes.append(ServiceProbe(settings.node, settings.service_checks,
                                   timeout=settings.service_check_timeout_seconds))
    return probes
