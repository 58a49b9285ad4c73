"""Settings of the aggregator process: one class, `AFMON_` environment prefix."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE = "sqlite:///afmon.sqlite"


class ServerSettings(BaseSettings):
    """Everything `afmon serve` needs. Built once at start and passed into factories."""

    model_config = SettingsConfigDict(env_prefix="AFMON_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the server listens on.")
    port: int = Field(8600, description="Port the server listens on.")
    database_url: str = Field(
        DEFAULT_DATABASE,
        description="SQLAlchemy URL of the ledger and the embedded time-series store "
        "(sqlite:///PATH or postgresql+psycopg://USER@HOST/DB).",
    )
    facility_tokens: dict[str, str] = Field(
        default_factory=dict,
        description='Agent bearer token per facility, as JSON: {"my-af": "s3cret"}. '
        "A token may only write its own facility's data.",
    )
    identity_file: Path | None = Field(
        None, description="TOML file mapping local accounts to VO members (see docs/identity.md)."
    )
    retention_days: float = Field(
        30.0, description="Raw samples older than this are deleted; the ledger keeps everything."
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, description="Largest ingest body accepted, compressed or not (else 413)."
    )
    max_future_skew_seconds: float = Field(
        300.0, description="Samples further than this in the future are refused (agent clock skew)."
    )
    gauge_max_gap_seconds: float = Field(
        600.0,
        description="A gauge (such as memory) is integrated between two samples only when they "
        "are at most this far apart; a longer gap is treated as no data.",
    )
    default_hepscore23_per_core: float = Field(
        10.0, description="HEPscore23 per core used for nodes that have not reported their own."
    )
    local_mode: bool = Field(
        False,
        description="Demo only: readers are not authenticated and pick their principal "
        "(member, VO manager, facility admin) in the dashboard.",
    )
    dashboard: bool = Field(
        True, description="Serve the Dash app at /; false for API-only workers."
    )
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")

    @field_validator("retention_days", "max_future_skew_seconds", "gauge_max_gap_seconds")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value
