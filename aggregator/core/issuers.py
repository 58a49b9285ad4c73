"""Configuration of a trusted token issuer (kept apart so settings need no JWT library)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class IssuerConfig(BaseModel):
    """One trusted token issuer: one VO."""

    model_config = ConfigDict(extra="forbid")
    vo: str
    jwks_url: str | None = None  # default: from the issuer's /.well-known/openid-configuration
    manager_groups: list[str] = []  # holders of any of these groups manage the VO
