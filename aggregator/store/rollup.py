"""The daily rollup of the ledger (`usage_day`): filled from `usage` where it is missing."""

from __future__ import annotations

from sqlalchemy import Connection, text

DAY = 86400

BACKFILL = (
    "INSERT INTO usage_day (facility, vo, grp, member_id, resource, day, amount, unit) "
    f"SELECT facility, vo, grp, member_id, resource, (hour / {DAY}) * {DAY}, SUM(amount), "
    f"MIN(unit) FROM usage GROUP BY facility, vo, grp, member_id, resource, (hour / {DAY}) * {DAY}"
)


def backfill_daily(conn: Connection) -> bool:
    """Fill an empty `usage_day` from `usage` (a database from before the rollup existed).
    Returns whether it did."""
    if conn.execute(text("SELECT 1 FROM usage_day LIMIT 1")).first() is not None:
        return False
    if conn.execute(text("SELECT 1 FROM usage LIMIT 1")).first() is None:
        return False
    conn.execute(text(BACKFILL))
    return True
