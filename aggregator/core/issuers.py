"""Configuration of a trusted token issuer (kept apart so settings need no JWT library).

Authority is a pair (issuer, group): a group grants a role only when the issuer configured
with it asserts it, so a token from one VO's issuer never grants anything over another VO's
members or over the facility (docs/security.md).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator


class IssuerConfig(BaseModel):
    """One trusted token issuer: one VO, and the groups of this issuer that grant roles."""

    model_config = ConfigDict(extra="forbid")
    vo: str
    jwks_url: str | None = None  # default: from the issuer's /.well-known/openid-configuration
    manager_groups: list[str] = []  # holders of any of these groups manage the VO
    admin_groups: list[str] = []  # holders of any of these groups administer the facility
    admin_facility: str | None = None  # which facility; default AFMON_ADMIN_FACILITY (or all)

    @field_validator("manager_groups", "admin_groups")
    @classmethod
    def _groups_are_paths(cls, groups: list[str]) -> list[str]:
        for group in groups:
            if not group.startswith("/") or group.rstrip("/") != group or "//" in group:
                raise ValueError(
                    f"group {group!r} is not a WLCG group path such as '/atlas/af-admins'"
                )
        return groups
