"""the time-series outbox stages compact points instead of line protocol

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a database that `create_schema` made or brought forward already has the column
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("tsdb_outbox")}
    if "points" not in columns:
        op.add_column("tsdb_outbox", sa.Column("points", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column("tsdb_outbox", "points")
