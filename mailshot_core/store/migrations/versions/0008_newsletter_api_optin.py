"""lists with their sender and public status, the opt-in trail, API keys, idempotent requests (issue 15)

``mailing_list``: description, ``open`` (visitors may subscribe), from_name/from_email (the sender of
its sendings), double opt-in, language and the confirmation message.  ``subscription.confirmed_at``:
when a double opt-in link was followed.  ``optin_event``: the consent trail.  ``api_key``: hashed
keys with a scope.  ``idempotent_request``: the first answer to a POST made with an Idempotency-Key.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN with server defaults (see 0006: no batch copy of referenced tables).
    op.add_column("mailing_list", sa.Column("description", sa.Text(), nullable=False, server_default=""))
    op.add_column("mailing_list", sa.Column("open", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("mailing_list", sa.Column("from_name", sa.String(length=255), nullable=False, server_default=""))
    op.add_column("mailing_list", sa.Column("from_email", sa.String(length=320), nullable=False, server_default=""))
    op.add_column("mailing_list", sa.Column("double_optin", sa.Boolean(), nullable=False, server_default=sa.true()))
    op.add_column("mailing_list", sa.Column("lang", sa.String(length=16), nullable=False, server_default=""))
    op.add_column("mailing_list", sa.Column("confirm_subject", sa.String(length=255), nullable=True))
    op.add_column("mailing_list", sa.Column("confirm_text", sa.Text(), nullable=True))
    op.add_column("subscription", sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "optin_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("list_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("source", sa.String(length=40), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscriber.id"]),
        sa.ForeignKeyConstraint(["list_id"], ["mailing_list.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_optin_event_subscriber_at", "optin_event", ["subscriber_id", "at"], unique=False)
    op.create_table(
        "api_key",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_index(op.f("ix_api_key_prefix"), "api_key", ["prefix"], unique=True)
    op.create_table(
        "idempotent_request",
        sa.Column("api_key_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_key.id"]),
        sa.PrimaryKeyConstraint("api_key_id", "key"),
    )
    op.create_index(op.f("ix_idempotent_request_created_at"), "idempotent_request", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_idempotent_request_created_at"), table_name="idempotent_request")
    op.drop_table("idempotent_request")
    op.drop_index(op.f("ix_api_key_prefix"), table_name="api_key")
    op.drop_table("api_key")
    op.drop_index("ix_optin_event_subscriber_at", table_name="optin_event")
    op.drop_table("optin_event")
    # SQLite >= 3.35 drops columns in place (no batch copy of tables other rows reference).
    op.drop_column("subscription", "confirmed_at")
    for column in ("confirm_text", "confirm_subject", "lang", "double_optin", "from_email", "from_name", "open"):
        op.drop_column("mailing_list", column)
    op.drop_column("mailing_list", "description")
