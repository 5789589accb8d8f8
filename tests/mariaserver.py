"""A throw-away MariaDB server for the legacy-import tests (the database of a SPIP site).

Debian's ``mariadb-server`` package (``make system-deps`` installs it) provides ``mariadb-install-db``
and ``mariadbd``.  :class:`MariaServer` creates a data directory in a temporary directory, starts the
server on ``127.0.0.1`` on a free port with durability off and grant tables skipped (any user, no
password: it listens on loopback only and lives for one test session), and deletes everything on
:meth:`MariaServer.stop`::

    with MariaServer() as maria:
        url = maria.create_database("site")   # mysql+pymysql://root@127.0.0.1:PORT/site?charset=utf8mb4

mariadbd refuses to run as root unless told so: when the tests run as root (CI does) it is started
with ``--user=root`` explicitly; otherwise as the current user.  Cost measured here: ~2 s for
``mariadb-install-db`` and < 1 s to answer.

This module does not import pytest, so scripts can use it too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Final

import pymysql

HOST: Final = "127.0.0.1"
MISSING_BINARIES_MESSAGE: Final = (
    "MariaDB server binaries not found: install the Debian package mariadb-server (make system-deps does it)"
)


class MariaServerError(RuntimeError):
    """The test MariaDB server could not be found, started or used."""


def _binary(*names: str) -> str | None:
    for name in names:
        for candidate in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
            if candidate and os.access(candidate, os.X_OK):
                return candidate
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class MariaServer:
    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.port = 0
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MariaServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> MariaServer:
        if self._proc is not None:
            return self
        install_db = _binary("mariadb-install-db", "mysql_install_db")
        daemon = _binary("mariadbd", "mysqld")
        if install_db is None or daemon is None:
            raise MariaServerError(MISSING_BINARIES_MESSAGE)
        self._dir = Path(tempfile.mkdtemp(prefix="mailshot-mariadb-"))
        data = self._dir / "data"
        # Explicit --user: mariadbd exits at once when run as root without it.
        user = "root" if os.geteuid() == 0 else (os.environ.get("USER") or "nobody")
        log = self._dir / "server.log"
        done = subprocess.run(
            [install_db, "--no-defaults", f"--datadir={data}", f"--user={user}", "--skip-test-db"],
            capture_output=True,
            timeout=self.timeout,
        )
        if done.returncode != 0:
            raise MariaServerError(f"mariadb-install-db failed: {done.stderr.decode(errors='replace')[-2000:]}")
        for _ in range(3):  # a free port can be taken by someone else before the server binds it
            self.port = _free_port()
            self._proc = subprocess.Popen(
                [
                    daemon,
                    "--no-defaults",
                    f"--datadir={data}",
                    f"--user={user}",
                    f"--port={self.port}",
                    f"--bind-address={HOST}",
                    f"--socket={self._dir / 'mysqld.sock'}",
                    f"--pid-file={self._dir / 'mysqld.pid'}",
                    "--skip-grant-tables",
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=32M",
                    "--innodb-flush-log-at-trx-commit=0",
                    "--character-set-server=utf8mb4",
                ],
                stdout=log.open("ab"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            if self._wait_ready():
                return self
            self._kill()
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        self.stop()
        raise MariaServerError(f"mariadbd did not start:\n{tail}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                pymysql.connect(host=HOST, port=self.port, user="root", connect_timeout=2).close()
                return True
            except pymysql.err.OperationalError:
                time.sleep(0.1)
        return False

    def connect(self, database: str | None = None) -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
        return pymysql.connect(host=HOST, port=self.port, user="root", database=database, autocommit=True)

    def create_database(self, name: str) -> str:
        """A fresh empty database (dropped first if it exists); returns its SQLAlchemy URL."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        return f"mysql+pymysql://root@{HOST}:{self.port}/{name}?charset=utf8mb4"

    def _kill(self) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)
        self._proc = None

    def stop(self) -> None:
        self._kill()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
