"""each series remembers its first sample's time, so that a late sample can be placed
(order-independent ledger, docs/accounting.md)

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a database that `create_schema` made or brought forward already has the column
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("series")}
    if "first_time" in columns:
        return
    op.add_column("series", sa.Column("first_time", sa.Float(), nullable=True))
    # The oldest kept sample; a series with samples none of which are kept (raw samples
    # only in the time-series store, or pruned) gets 0: its first sample is unknown, so a
    # late sample is placed only between kept neighbours.
    op.execute(
        "UPDATE series SET first_time = COALESCE("
        "(SELECT MIN(time) FROM sample WHERE sample.series_id = series.id), 0) "
        "WHERE last_time IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_column("series", "first_time")
