"""records refused at ingest are quarantined, replayable (quarantine)

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a database that `create_schema` made with this version's models has the table already
    if sa.inspect(op.get_bind()).has_table("quarantine"):
        return
    text = sqlmodel.sql.sqltypes.AutoString()
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("facility", text, nullable=False),
        sa.Column("agent_id", text, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("node", text, nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("kind", text, nullable=False),
        sa.Column("reason", text, nullable=False),
        sa.Column("field", text, nullable=False),
        sa.Column("message", text, nullable=False),
        sa.Column("record", text, nullable=False),
        sa.Column("replayed_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_quarantine_facility_reason", "quarantine", ["facility", "reason"])


def downgrade() -> None:
    op.drop_index("ix_quarantine_facility_reason", table_name="quarantine")
    op.drop_table("quarantine")
