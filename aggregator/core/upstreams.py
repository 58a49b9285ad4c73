"""The settings of federated accounting (docs/federation.md): where a facility publishes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class Upstream(BaseModel):
    """One upstream afmon this one publishes its ledger hours to."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="the upstream afmon's base URL, e.g. https://vo-afmon.cern.ch")
    token: SecretStr = Field(description="this facility's credential at the upstream")
    vos: list[str] = Field(
        default_factory=list, description="the VOs published there; empty: every VO"
    )
    level: Literal["member", "group"] = Field(
        "member",
        description="member: per member (issuer, subject); group: summed per accounting group, "
        "no member identity leaves the facility",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"upstream url {url!r} must start with http:// or https://")
        return url.rstrip("/")
