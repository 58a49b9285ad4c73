"""Configuration of a trusted token issuer (kept apart so settings need no JWT library).

Authority is a pair (issuer, group): a group grants a role only when the issuer configured
with it asserts it, so a token from one VO's issuer never grants anything over another VO's
members or over the facility (docs/security.md). Each VO's IAM registers its own OIDC client,
so an issuer may carry its own `client_id`/`client_secret` for the dashboard's sign-in.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, field_validator


def check_group_paths(groups: list[str]) -> list[str]:
    """WLCG group paths only: a bare name could match a group of any shape by accident."""
    for group in groups:
        if not group.startswith("/") or group.rstrip("/") != group or "//" in group:
            raise ValueError(f"group {group!r} is not a WLCG group path such as '/atlas/af-admins'")
    return groups


class IssuerConfig(BaseModel):
    """One trusted token issuer: one VO, the groups of this issuer that grant roles, and
    (optionally) the dashboard's own client at this issuer."""

    model_config = ConfigDict(extra="forbid")
    vo: str
    jwks_url: str | None = None  # default: from the issuer's /.well-known/openid-configuration
    manager_groups: list[str] = []  # holders of any of these groups manage the VO
    admin_groups: list[str] = []  # holders of any of these groups administer the facility
    admin_facility: str | None = None  # which facility; default AFMON_ADMIN_FACILITY (or all)
    client_id: str | None = None  # sign-in client at this issuer; default AFMON_OIDC_CLIENT_ID
    client_secret: SecretStr | None = None  # its secret; default AFMON_OIDC_CLIENT_SECRET

    @field_validator("manager_groups", "admin_groups")
    @classmethod
    def _groups_are_paths(cls, groups: list[str]) -> list[str]:
        return check_group_paths(groups)


def identity_map_issuers(path: Path) -> dict[str, IssuerConfig]:
    """The issuers the identity map's `[vos.<vo>]` tables name, as trusted issuers with the
    roles and client those tables give (issuer URL -> config), so an issuer is written once.

    Only `[vos]` is read here; a file or table the identity loader would refuse (unreadable,
    not TOML, no `issuer`) is left to it to report at start-up. Bad roles are refused here,
    and so are two VOs naming one issuer (one issuer, one VO)."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    vos = raw.get("vos")
    found: dict[str, IssuerConfig] = {}
    for vo, table in (vos if isinstance(vos, dict) else {}).items():
        if not isinstance(table, dict) or not isinstance(table.get("issuer"), str):
            continue
        fields = {k: v for k, v in table.items() if k != "issuer"}
        try:
            config = IssuerConfig.model_validate({**fields, "vo": vo})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in ("vos", vo, *first["loc"]))
            msg = str(first["msg"]).removeprefix("Value error, ")
            raise ValueError(f"{path}: {where}: {msg}") from None
        issuer = table["issuer"]
        if issuer in found:
            raise ValueError(
                f"{path}: [vos.{vo}] and [vos.{found[issuer].vo}] name the same issuer "
                f"{issuer!r}; one issuer serves one VO"
            )
        found[issuer] = config
    return found
