"""archive outcomes and legacy import map (issue 7)

delivery_outcome keeps, per address and archived sending, the status the MAX_FAIL rule needs once
the recipient rows are purged; legacy_import remembers which SPIP row became which sending so that
a second import changes nothing.

Revision ID: 0005
Revises: 0003 (issue 4 adds 0004; re-chained at merge)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "delivery_outcome",
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("mailshot_id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["mailshot_id"], ["mailshot.id"]),
        sa.PrimaryKeyConstraint("email", "mailshot_id"),
    )
    op.create_index("ix_delivery_outcome_email_at", "delivery_outcome", ["email", "at"], unique=False)
    op.create_index("ix_delivery_outcome_mailshot_id", "delivery_outcome", ["mailshot_id"], unique=False)
    op.create_table(
        "legacy_import",
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("legacy_table", sa.String(length=64), nullable=False),
        sa.Column("legacy_id", sa.String(length=64), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "legacy_table", "legacy_id"),
    )


def downgrade() -> None:
    op.drop_table("legacy_import")
    op.drop_index("ix_delivery_outcome_mailshot_id", table_name="delivery_outcome")
    op.drop_index("ix_delivery_outcome_email_at", table_name="delivery_outcome")
    op.drop_table("delivery_outcome")
