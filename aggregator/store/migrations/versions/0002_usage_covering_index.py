"""a covering index for the ledger's range queries (dashboard, reports)

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = ["resource", "hour", "vo", "grp", "member_id", "facility", "amount"]


def upgrade() -> None:
    # a database that `create_schema` made with this version's models has the index already
    existing = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("usage")}
    if "ix_usage_resource_hour_cover" not in existing:
        op.create_index("ix_usage_resource_hour_cover", "usage", COLUMNS)


def downgrade() -> None:
    op.drop_index("ix_usage_resource_hour_cover", table_name="usage")
