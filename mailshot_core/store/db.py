"""Engine and session helpers; schema upgraded by Alembic at every entry point.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit survives the kill of
the process (the WAL is in the OS's hands), which is what the no-duplicate
guarantee needs; only a power cut can lose the last commits.  Writers wait on
each other through ``busy_timeout`` and ``BEGIN IMMEDIATE`` so that two workers
never both read-then-write the same rows (the claim relies on it).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# How long a SQLite connection waits for another's write lock before "database is locked".
BUSY_TIMEOUT_MS = 60_000

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's events issue BEGIN (see _on_begin), not pysqlite's implicit one.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock at BEGIN: a read-then-write transaction cannot be
        # overtaken by another process between its read and its write.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class WriteLockBusy(Exception):
    """SQLite's write lock is held by another connection (``raw_write_transaction(wait=False)``)."""


@contextmanager
def raw_write_transaction(engine: Engine, dbapi_conn: Any, *, wait: bool = True) -> Iterator[Any]:
    """A write transaction straight on a DBAPI connection, yielding a cursor (hot path only).

    The send ledger commits a group of recipient transitions every few milliseconds; SQLAlchemy's own
    work per transaction (events, begin/commit bookkeeping) cost more than the database's.  Same
    semantics as the engine's transactions: SQLite takes the write lock at BEGIN.

    ``wait=False`` (SQLite): raise :class:`WriteLockBusy` at once, before anything is written, when
    another connection holds the write lock, instead of sleeping in SQLite's busy handler; an asyncio
    caller can then serve its sockets and try again (ledger.py).
    """
    cursor = dbapi_conn.cursor()
    try:
        if is_sqlite(engine) and not wait:
            _begin_or_busy(cursor)
        elif is_sqlite(engine):
            cursor.execute("BEGIN IMMEDIATE")
        yield cursor
        dbapi_conn.commit()
    except BaseException:
        dbapi_conn.rollback()
        raise
    finally:
        cursor.close()


def _begin_or_busy(cursor: Any) -> None:
    cursor.execute("PRAGMA busy_timeout=0")
    try:
        cursor.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise WriteLockBusy(str(exc)) from exc
        raise
    finally:
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the latest migration (no-op when already there)."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def get_engine(url: str, *, migrate: bool = True) -> Engine:
    """One engine per URL and process, migrated on first use."""
    with _lock:
        engine = _engines.get(url)
        if engine is not None:
            return engine
        parsed = make_url(url)
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if parsed.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
            database = parsed.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        elif parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
            # Plain "postgresql://" means psycopg 3 here (the driver we install), not psycopg2.
            parsed = parsed.set(drivername="postgresql+psycopg")
        engine = create_engine(parsed, **kwargs)
        if is_sqlite(engine):
            _sqlite_setup(engine)
        if migrate:
            upgrade(engine)
        _engines[url] = engine
        return engine


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
