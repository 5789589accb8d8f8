"""Schema changes go through Alembic: the migrations produce exactly the models' schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

from mailshot_core import db


def test_migrations_match_the_models(db_url: str) -> None:
    """After `upgrade head` (run by every entry point), autogenerate finds no difference with models.py."""
    engine = db.get_engine(db_url)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diffs == []
    assert {
        "mailshot",
        "recipient",
        "subscriber",
        "subscription",
        "mailing_list",
        "feedback_event",
        "tracked_link",
        "send_worker",
        "alembic_version",
    } <= set(inspect(engine).get_table_names())


def test_upgrade_is_idempotent_and_keeps_data(sqlite_url: str) -> None:
    """Running the upgrade again (a second entry point starting) changes nothing and loses nothing."""
    from sqlalchemy import text

    engine = db.get_engine(sqlite_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO mailing_list (identifier, title, created_at) VALUES ('a', 'A', '2026-01-01')"))
    db.dispose_engines()
    engine = db.get_engine(sqlite_url)
    db.upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT identifier FROM mailing_list")).scalars().all() == ["a"]
