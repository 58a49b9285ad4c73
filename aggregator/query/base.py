"""What every reader of the query layer shares: who asks (`Principal`), the SQL condition
of what they may see (`scope_sql`), and the base of the query classes (query/reads.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
from sqlalchemy import Engine, text

from afmon.aggregator.ledger.base import HOUR
from afmon.aggregator.store.db import read_connection
from afmon.aggregator.store.schema import RESOURCES

Role = Literal["member", "vo_manager", "facility_admin"]
GROUP_COLUMNS = {"facility": "facility", "vo": "vo", "group": "grp", "member": "member_id"}
STEPS = {"hour": HOUR, "day": 24 * HOUR}


class QueryError(ValueError):
    pass


@dataclass(frozen=True)
class Principal:
    """Who is asking. `facility=None` on an admin means every facility."""

    role: Role
    member_id: str | None = None
    vo: str | None = None
    facility: str | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.role == "member" and not self.member_id:
            raise QueryError("a member principal needs a member_id")
        if self.role == "vo_manager" and not self.vo:
            raise QueryError("a VO manager principal needs a vo")


LOCAL_ADMIN = Principal("facility_admin", name="local admin (demo mode)")


def visible(p: Principal, facility: str, vo: str, member: str) -> bool:
    """Whether `p` may see a row of (facility, vo, member): `scope_sql` in Python, for rows
    resolved to members after they are read (raw samples)."""
    if p.facility is not None and facility != p.facility:
        return False
    if p.role == "member":
        return member == p.member_id
    return p.role != "vo_manager" or vo == p.vo


def scope_sql(
    p: Principal, member: str = "member_id", vo: str = "vo", facility: str = "facility"
) -> tuple[str, dict[str, Any]]:
    """SQL condition and parameters restricting rows to what `p` may see; the
    arguments name the columns that hold the member, the VO and the facility."""
    conds: list[str] = []
    params: dict[str, Any] = {}
    if p.role == "member":
        conds.append(f"{member} = :p_member")
        params["p_member"] = p.member_id
    elif p.role == "vo_manager":
        conds.append(f"{vo} = :p_vo")
        params["p_vo"] = p.vo
    if p.facility is not None:
        conds.append(f"{facility} = :p_facility")
        params["p_facility"] = p.facility
    return (" AND ".join(conds) or "1 = 1"), params


class QueryBase:
    """The engine, rows into DataFrames, argument checks."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _frame(self, sql: str, params: dict[str, Any]) -> pd.DataFrame:
        with read_connection(self._engine) as conn:
            result = conn.execute(text(sql), params)
            # plain tuples: pandas probes each SQLAlchemy Row for attributes, ~6x slower
            return pd.DataFrame(list(map(tuple, result)), columns=list(result.keys()))

    @staticmethod
    def _check(resource: str | None, by: tuple[str, ...] = ()) -> None:
        if resource is not None and resource not in RESOURCES:
            raise QueryError(f"unknown resource {resource!r}; known: {', '.join(RESOURCES)}")
        for b in by:
            if b not in GROUP_COLUMNS:
                raise QueryError(f"cannot group by {b!r}; use one of {', '.join(GROUP_COLUMNS)}")
