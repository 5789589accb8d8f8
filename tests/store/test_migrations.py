"""Schema changes go through Alembic: the migrations produce exactly the models' schema."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

from mailshot_core.store import db


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


def test_a_database_of_the_first_release_upgrades_without_loss(db_url: str) -> None:
    """A database at revision 0001 holding a sending and its recipients upgrades to head, rows intact."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from mailshot_core.store.db import alembic_config

    url = db_url.replace("postgresql://", "postgresql+psycopg://")
    old = create_engine(url)
    cfg = alembic_config(url)
    with old.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with old.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO mailshot (subject, html, text, lists, graceful, from_name, from_email, transport, fast, status,"
                " materialised, total, current, sent, failed, nb_read, nb_clic, nb_spam, nb_bounce, nb_unsub, nb_unknown,"
                " created_at, updated_at) VALUES ('Old', '<p>x</p>', 'x', 'news', false, '', 'a@b.org', 'smtp', false,"
                " 'processing', true, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, '2025-01-01', '2025-01-01')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO recipient (mailshot_id, email, status, tries) VALUES (1, 'a@x.org', 'sent', 1),"
                " (1, 'b@x.org', 'todo', 2)"
            )
        )
    old.dispose()
    engine = db.get_engine(db_url)  # every entry point upgrades to head
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT email, status, tries, throttled FROM recipient ORDER BY email")).all()
        assert [tuple(r) for r in rows] == [("a@x.org", "sent", 1, 0), ("b@x.org", "todo", 2, 0)]
        assert conn.execute(text("SELECT subject, rate_per_hour FROM mailshot")).one() == ("Old", None)
