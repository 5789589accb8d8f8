"""The throw-away PostgreSQL test server (tests/pgserver.py) really starts, serves and goes away."""

from __future__ import annotations

import socket

from sqlalchemy import create_engine, text

from pgserver import PgServer


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def test_pgserver_serves_isolated_databases_and_leaves_nothing_behind() -> None:
    """Rule: PgServer starts a real PostgreSQL that serves independent fresh databases through
    SQLAlchemy + psycopg (including FOR UPDATE SKIP LOCKED, which the claim queue relies on), and
    stop() shuts it down so that its port no longer accepts connections and its directory is gone.
    """
    server = PgServer()
    with server:
        host, port = server.host, server.port
        assert _port_open(host, port)
        urls = [server.create_database("pgserver_a"), server.create_database("pgserver_b")]
        assert urls[0].startswith("postgresql+psycopg://") and urls[0].endswith("/pgserver_a")
        engines = [create_engine(url) for url in urls]
        try:
            for engine in engines:
                with engine.connect() as conn:
                    assert conn.execute(text("select 1")).scalar_one() == 1

            a, b = engines
            with a.begin() as conn:
                conn.execute(text("create table job (id int primary key, state text not null)"))
                conn.execute(text("insert into job values (1, 'queued'), (2, 'queued'), (3, 'queued')"))
            # The two databases are isolated from each other.
            with b.connect() as conn:
                assert conn.execute(text("select to_regclass('job')")).scalar_one() is None

            claim = text("select id from job where state = 'queued' order by id limit 2 for update skip locked")
            with a.connect() as first, a.connect() as second:
                t1, t2 = first.begin(), second.begin()
                assert first.execute(claim).scalars().all() == [1, 2]
                assert second.execute(claim).scalars().all() == [3]  # rows locked by `first` are skipped
                t2.rollback()
                t1.rollback()
        finally:
            for engine in engines:
                engine.dispose()
        data_dir = server.data_dir
        assert data_dir is not None and data_dir.is_dir()

    assert not server.running
    if not server.external:
        assert not _port_open(host, port)
        assert not data_dir.parent.exists()
