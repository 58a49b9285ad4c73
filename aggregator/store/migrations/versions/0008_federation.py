"""federated accounting: which ledger hours changed, what each upstream acknowledged, and
the facilities that publish here (docs/federation.md); alerts remember their rule's signal
(the unit of their value)

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a database that `create_schema` made with this version's models has the tables already
    inspector = sa.inspect(op.get_bind())
    text = sqlmodel.sql.sqltypes.AutoString()
    if not inspector.has_table("ledger_change"):
        op.create_table(
            "ledger_change",
            sa.Column("facility", text, nullable=False),
            sa.Column("hour", sa.Integer(), nullable=False),
            sa.Column("version", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("facility", "hour"),
        )
        # every hour already in the ledger is a change not yet published anywhere
        op.execute(
            "INSERT INTO ledger_change (facility, hour, version) "
            "SELECT DISTINCT facility, hour, 1 FROM usage"
        )
    if not inspector.has_table("federation_sent"):
        op.create_table(
            "federation_sent",
            sa.Column("upstream", text, nullable=False),
            sa.Column("facility", text, nullable=False),
            sa.Column("hour", sa.Integer(), nullable=False),
            sa.Column("version", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("upstream", "facility", "hour"),
        )
    if "signal" not in {c["name"] for c in inspector.get_columns("alert")}:
        op.add_column("alert", sa.Column("signal", text, nullable=True))
    if not inspector.has_table("federation_source"):
        op.create_table(
            "federation_source",
            sa.Column("facility", text, nullable=False),
            sa.Column("last_hour", sa.Integer(), nullable=True),
            sa.Column("received_at", sa.Float(), nullable=False),
            sa.Column("hours", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("facility"),
        )


def downgrade() -> None:
    op.drop_column("alert", "signal")
    op.drop_table("federation_source")
    op.drop_table("federation_sent")
    op.drop_table("ledger_change")
