"""The one query layer: every reader (dashboard, API, reports, alerts) asks here.

Each call takes a `Principal` and sees only what that principal may see: a
member only their own usage, a VO manager their VO, a facility admin their
facility (or every facility when the admin is not bound to one). Readers get
rollups from the ledger; raw samples are never read to answer a question.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
from sqlalchemy import Engine, text

from aggregator.db import read_connection
from aggregator.ledger import HOUR
from aggregator.schema import RESOURCES

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


def _scope(
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


class Query:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _frame(self, sql: str, params: dict[str, Any]) -> pd.DataFrame:
        with read_connection(self._engine) as conn:
            result = conn.execute(text(sql), params)
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))

    @staticmethod
    def _check(resource: str | None, by: tuple[str, ...] = ()) -> None:
        if resource is not None and resource not in RESOURCES:
            raise QueryError(f"unknown resource {resource!r}; known: {', '.join(RESOURCES)}")
        for b in by:
            if b not in GROUP_COLUMNS:
                raise QueryError(f"cannot group by {b!r}; use one of {', '.join(GROUP_COLUMNS)}")

    def usage_over_time(
        self,
        p: Principal,
        resource: str,
        start: float,
        end: float,
        by: str = "vo",
        step: str = "hour",
    ) -> pd.DataFrame:
        """Columns: time (UTC), `by`, amount, unit; one row per step and key."""
        self._check(resource, (by,))
        if step not in STEPS:
            raise QueryError(f"step must be one of {', '.join(STEPS)}")
        width = STEPS[step]
        col = GROUP_COLUMNS[by]
        cond, params = _scope(p)
        df = self._frame(
            f"SELECT (hour / {width}) * {width} AS bucket, {col} AS key, SUM(amount) AS amount "
            f"FROM usage WHERE resource = :resource AND hour >= :start AND hour < :end AND {cond} "
            "GROUP BY bucket, key ORDER BY bucket, key",
            {"resource": resource, "start": int(start), "end": int(end), **params},
        )
        df.insert(0, "time", pd.to_datetime(df.pop("bucket").astype("int64"), unit="s", utc=True))
        df = df.rename(columns={"key": by})
        df["unit"] = RESOURCES[resource].unit
        return df

    def usage_totals(
        self,
        p: Principal,
        start: float,
        end: float,
        by: tuple[str, ...] = ("facility", "vo", "group", "member"),
        resources: tuple[str, ...] | None = None,
    ) -> pd.DataFrame:
        """Columns: `by`..., resource, amount, unit."""
        self._check(None, by)
        for r in resources or ():
            self._check(r)
        cols = [GROUP_COLUMNS[b] for b in by]
        cond, params = _scope(p)
        res_cond = ""
        if resources:
            names = {f"r{i}": r for i, r in enumerate(resources)}
            res_cond = f" AND resource IN ({', '.join(':' + k for k in names)})"
            params.update(names)
        select_cols = "".join(f"{c}, " for c in cols)
        df = self._frame(
            f"SELECT {select_cols}resource, SUM(amount) AS amount, MIN(unit) AS unit FROM usage "
            f"WHERE hour >= :start AND hour < :end AND {cond}{res_cond} "
            f"GROUP BY {select_cols}resource ORDER BY {select_cols}resource",
            {"start": int(start), "end": int(end), **params},
        )
        return df.rename(columns={GROUP_COLUMNS[b]: b for b in by})

    def members(self, p: Principal) -> pd.DataFrame:
        """Members visible to `p`: member_id, display_name, vo, group."""
        # members are not bound to a facility: a facility sees those with accounts there
        cond, params = _scope(p, member="m.id", vo="m.vo", facility="a.facility")
        return self._frame(
            'SELECT DISTINCT m.id AS member_id, m.display_name, m.vo, m.grp AS "group" '
            "FROM member m LEFT JOIN account a ON a.member_id = m.id "
            f"WHERE {cond} ORDER BY m.vo, m.display_name",
            params,
        )

    def active_members(self, p: Principal, start: float, end: float) -> int:
        cond, params = _scope(p)
        with read_connection(self._engine) as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT COUNT(DISTINCT member_id) FROM usage "
                        f"WHERE hour >= :start AND hour < :end AND amount > 0 AND {cond}"
                    ),
                    {"start": int(start), "end": int(end), **params},
                ).scalar_one()
            )

    def facilities(self, p: Principal) -> list[str]:
        cond, params = _scope(p)
        df = self._frame(
            f"SELECT DISTINCT facility FROM usage WHERE {cond} ORDER BY facility", params
        )
        return df["facility"].tolist()

    def nodes(self, p: Principal) -> pd.DataFrame:
        """Node capacity and agent liveness; facility admins only (empty for others)."""
        cols = [
            "facility",
            "node",
            "cpu_cores",
            "memory_bytes",
            "hepscore23_per_core",
            "cpu_busy_ratio",
            "updated",
        ]
        if p.role != "facility_admin":
            return pd.DataFrame(columns=cols)
        cond, params = ("facility = :f", {"f": p.facility}) if p.facility else ("1 = 1", {})
        return self._frame(
            f"SELECT {', '.join(cols)} FROM node WHERE {cond} ORDER BY facility, node", params
        )

    def agents(self, p: Principal) -> pd.DataFrame:
        cols = ["agent_id", "facility", "node", "last_seen", "last_seq", "batches", "samples"]
        if p.role != "facility_admin":
            return pd.DataFrame(columns=cols)
        cond, params = ("facility = :f", {"f": p.facility}) if p.facility else ("1 = 1", {})
        return self._frame(
            f"SELECT {', '.join(cols)} FROM agent WHERE {cond} ORDER BY node", params
        )

    def sessions(self, p: Principal, start: float, end: float) -> pd.DataFrame:
        """Interactive sessions that overlap [start, end): member, times, attributes."""
        cond, params = _scope(p, member="e.member_id", vo="m.vo", facility="e.facility")
        return self._frame(
            "SELECT e.facility, e.id, e.member_id, m.display_name, e.local_user, e.node, "
            'e.start, e."end" FROM event e JOIN member m ON m.id = e.member_id '
            "WHERE e.kind = 'session' AND e.start < :end "
            f'AND (e."end" IS NULL OR e."end" >= :start) AND {cond} ORDER BY e.start',
            {"start": start, "end": end, **params},
        )
