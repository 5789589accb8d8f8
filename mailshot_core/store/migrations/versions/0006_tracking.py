"""open/click tracking done by Mailshot itself (issue 6)

``mailshot.track``: whether this sending's HTML carries our open pixel and click redirects (decided
at creation from MAILSHOT_TRACKING, so changing the setting never changes a sending half-way);
``nb_read_machine`` / ``nb_clic_machine``: recipients whose only opens or clicks so far look like a
machine's (Apple Mail Privacy Protection, link scanners), counted apart from people's.

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
    # Plain ADD COLUMN, not a batch: SQLite's batch mode copies the table, and dropping the old
    # ``mailshot`` fails while recipient rows reference it.  server_default: sendings of earlier
    # releases carried no tracking, and have no machine hits.
    op.add_column("mailshot", sa.Column("track", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("mailshot", sa.Column("nb_read_machine", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("mailshot", sa.Column("nb_clic_machine", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    for column in ("nb_clic_machine", "nb_read_machine", "track"):
        op.drop_column("mailshot", column)  # SQLite >= 3.35 drops a column in place
