"""each member may name a home institution (identity file `institution`, docs/identity.md):
active members by access method per institution (docs/data.md)

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a database that `create_schema` made or brought forward already has the column
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("member")}
    if "institution" in columns:
        return
    op.add_column(
        "member",
        sa.Column("institution", sa.String(), nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_column("member", "institution")
