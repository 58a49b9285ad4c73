"""The node agent's settings: AFMON_* environment variables (flags of `afmon-agent` override
them). Kept apart from the command line so that the probe registry can read them."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from afmon.collectors.probes.data_formats import DEFAULT_PATTERNS, FormatClassifier
from afmon.collectors.probes.services import ServiceCheck


def _default_spool_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/afmon-agent")
    return Path.home() / ".local" / "state" / "afmon-agent"


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AFMON_", extra="ignore")

    server_url: str = "http://127.0.0.1:8600"
    token: SecretStr | None = None
    facility: str = Field("demo-af", pattern=r"^[A-Za-z_:][A-Za-z0-9_:.\-]*$", max_length=128)
    node: str = Field(default_factory=socket.gethostname, min_length=1, max_length=256)
    interval_seconds: float = Field(15.0, gt=0)
    spool_dir: Path = Field(default_factory=_default_spool_dir)
    spool_max_bytes: int = Field(64 * 2**20, gt=0)
    hepscore23_per_core: float = Field(10.0, ge=0)
    # System accounts (root, postgres, sshd, ...) are no VO member's usage: the host probe
    # leaves out uids below this (Debian's FIRST_UID) and the names listed.
    min_uid: int = Field(1000, ge=0)
    exclude_users: list[str] = []
    proc_root: Path = Path("/proc")
    cgroup_root: Path = Path("/sys/fs/cgroup")
    timeout_seconds: float = Field(10.0, gt=0)
    jupyterhub_url: str | None = None
    jupyterhub_token: SecretStr | None = None
    jupyterhub_poll_seconds: float = Field(1.0, ge=0)
    dask_gateway_url: str | None = None  # dask-gateway REST API (docs/interactive.md)
    dask_gateway_token: SecretStr | None = None
    dask_gateway_auth: Literal["jupyterhub", "token", "bearer", "basic"] = "jupyterhub"
    dask_gateway_users: list[str] = []
    dask_gateway_poll_seconds: float = Field(30.0, ge=0)
    slurm_enabled: bool = False
    sacct_path: str = "sacct"
    htcondor_enabled: bool = False
    condor_history_path: str = "condor_history"
    gpu_enabled: bool = True
    gpu_process_interval_seconds: float = Field(60.0, gt=0)
    gpu_idle_threshold_ratio: float = Field(0.05, ge=0, le=1)
    gpu_idle_min_seconds: float = Field(600.0, ge=0)
    xrootd_enabled: bool = False  # XRootD monitoring listener (docs/data.md)
    xrootd_listen_host: str = "127.0.0.1"
    xrootd_summary_port: int = Field(9931, ge=1, le=65535)
    xrootd_detail_port: int = Field(9930, ge=1, le=65535)
    xrootd_servers: dict[str, Literal["local", "cache", "remote"]] = {}
    xrootd_default_role: Literal["local", "cache", "remote"] = "remote"
    xrootd_max_open_files: int = Field(100_000, gt=0)
    # (format, regular expression) pairs, first match wins: data_formats.py, docs/data.md
    xrootd_format_patterns: list[tuple[str, str]] = list(DEFAULT_PATTERNS)
    service_checks: list[ServiceCheck] = Field(default_factory=list)
    service_check_timeout_seconds: float = Field(5.0, gt=0)

    @field_validator("xrootd_format_patterns")
    @classmethod
    def _known_formats(cls, value: list[tuple[str, str]]) -> list[tuple[str, str]]:
        FormatClassifier(value)  # ValueError for an unknown format or a bad expression
        return value

    @field_validator("xrootd_servers", "dask_gateway_users", "exclude_users", mode="before")
    @classmethod
    def _json_from_flag(cls, value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value  # a flag gives text
