"""per-run records, never-sent recipients apart from failures (issue 13)

``send_run``: what each run of a sending did (sent, failed, throttled, retried, in doubt), whatever
its end, so every run leaves a record for the data team; ``send_worker.run_id`` ties a batch's
claims to its run, so the in-doubt messages of a crashed run are counted in its record.
``mailshot.nb_kill``: recipients never sent (cancelled, or unsubscribed before their turn) were
counted in ``failed``; they get their own counter, moved out of ``failed`` from the recipient rows.
Archived sendings have no rows left: their ``failed`` stays as it was.  Drafts need no change: the
status column is a string.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (see 0006: a batch copy of `mailshot` fails while rows reference it).
    op.add_column("mailshot", sa.Column("nb_kill", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("send_worker", sa.Column("run_id", sa.String(length=64), nullable=True))
    killed = "(SELECT count(*) FROM recipient WHERE recipient.mailshot_id = mailshot.id AND recipient.status = 'kill')"
    op.execute(f"UPDATE mailshot SET nb_kill = {killed}, failed = failed - {killed} WHERE status != 'archive'")
    op.create_table(
        "send_run",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("mailshot_id", sa.Integer(), nullable=False),
        sa.Column("transport", sa.String(length=40), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("throttled", sa.Integer(), nullable=False),
        sa.Column("retried", sa.Integer(), nullable=False),
        sa.Column("in_doubt", sa.Integer(), nullable=False),
        sa.Column("final_status", sa.String(length=20), nullable=True),
        sa.Column("end_reason", sa.Text(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["mailshot_id"], ["mailshot.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_send_run_mailshot_id"), "send_run", ["mailshot_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_send_run_mailshot_id"), table_name="send_run")
    op.drop_table("send_run")
    op.execute("UPDATE mailshot SET failed = failed + nb_kill")
    op.drop_column("send_worker", "run_id")
    op.drop_column("mailshot", "nb_kill")
