"""Retention of the embedded time-series store; the ledger is never pruned."""

from __future__ import annotations

from sqlalchemy import Engine, text


def prune_samples(engine: Engine, older_than: float) -> int:
    """Delete raw samples before `older_than` (epoch seconds); returns how many."""
    with engine.begin() as conn:
        return conn.execute(text("DELETE FROM sample WHERE time < :t"), {"t": older_than}).rowcount
