"""the daily rollup of the ledger (usage_day), filled from the hourly ledger

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

from afmon.aggregator.store.rollup import backfill_daily

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COVER = ["resource", "day", "vo", "grp", "member_id", "facility", "amount"]


def upgrade() -> None:
    # a database that `create_schema` made with this version's models has the table already
    if not sa.inspect(op.get_bind()).has_table("usage_day"):
        op.create_table(
            "usage_day",
            sa.Column("facility", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
            sa.Column("vo", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
            sa.Column("grp", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
            sa.Column("member_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
            sa.Column("resource", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
            sa.Column("day", sa.Integer(), nullable=False),
            sa.Column("amount", sa.Float(), nullable=False),
            sa.Column("unit", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
            sa.PrimaryKeyConstraint("facility", "vo", "grp", "member_id", "resource", "day"),
        )
        op.create_index("ix_usage_day_cover", "usage_day", COVER)
    backfill_daily(op.get_bind())


def downgrade() -> None:
    op.drop_index("ix_usage_day_cover", table_name="usage_day")
    op.drop_table("usage_day")
