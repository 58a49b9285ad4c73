"""batch usage by the scheduler's accounting dimensions (account, QoS, partition)
(batch_usage, docs/batch.md)

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

KEY = ["facility", "vo", "grp", "member_id", "account", "qos", "partition", "resource", "hour"]
COVER = [
    "hour", "vo", "member_id", "facility", "grp", "account", "qos", "partition", "resource",
    "amount",
]  # fmt: skip


def upgrade() -> None:
    # a database that `create_schema` made with this version's models has the table already.
    # Jobs accounted before this revision are not broken down: the table starts empty.
    if sa.inspect(op.get_bind()).has_table("batch_usage"):
        return
    text = sqlmodel.sql.sqltypes.AutoString()
    op.create_table(
        "batch_usage",
        *(sa.Column(name, text, nullable=False) for name in KEY[:-1]),
        sa.Column("hour", sa.Integer(), nullable=False),
        sa.Column("amount", sa.Float(), nullable=False),
        sa.Column("unit", text, nullable=False),
        sa.PrimaryKeyConstraint(*KEY),
    )
    op.create_index("ix_batch_usage_hour_cover", "batch_usage", COVER)


def downgrade() -> None:
    op.drop_index("ix_batch_usage_hour_cover", table_name="batch_usage")
    op.drop_table("batch_usage")
