"""planned downtimes an admin declares, told apart from unplanned down time in service
availability (docs/availability.md)

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a database that `create_schema` made with this version's models has the table already
    if sa.inspect(op.get_bind()).has_table("planned_downtime"):
        return
    text = sqlmodel.sql.sqltypes.AutoString()
    op.create_table(
        "planned_downtime",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("facility", text, nullable=False),
        sa.Column("service", text, nullable=False),
        sa.Column("start", sa.Float(), nullable=False),
        sa.Column("end", sa.Float(), nullable=False),
        sa.Column("reason", text, nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_planned_downtime_facility", "planned_downtime", ["facility"])


def downgrade() -> None:
    op.drop_index("ix_planned_downtime_facility", table_name="planned_downtime")
    op.drop_table("planned_downtime")
