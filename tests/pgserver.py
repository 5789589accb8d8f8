"""A throw-away PostgreSQL server for the integration tests.

The tests run against a real PostgreSQL taken from Debian's packages (``apt-get install -y postgresql``;
``make test`` installs it when missing).  :class:`PgServer` creates a fresh cluster in a temporary
directory, starts it on ``127.0.0.1`` on a free port with durability switched off (it is a test server),
and removes everything again on :meth:`PgServer.stop`::

    with PgServer() as pg:
        url = pg.create_database("ledger")      # postgresql+psycopg://mailshot@127.0.0.1:PORT/ledger
        engine = sqlalchemy.create_engine(url)

PostgreSQL refuses to run as root.  When the tests run as root (CI does), ``initdb`` and ``pg_ctl`` are
run as the ``postgres`` system user created by the Debian package, through ``runuser`` (or ``setpriv``),
and the temporary directory is handed over to that user.

Environment:

``MAILSHOT_TEST_PG_URL``
    When set (e.g. ``postgresql+psycopg://me:secret@db.example:5432/postgres``), nothing is started or
    stopped: the server at that URL is used instead.  Its user must be allowed to create and drop
    databases; :meth:`PgServer.create_database` drops any database of the same name first.  The database
    named in the URL (``postgres`` when none) is used to run ``CREATE DATABASE``.

This module deliberately does not import pytest, so that fixtures, scripts and benchmarks can all use it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Final

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import URL, make_url

__all__ = ["ENV_URL", "MISSING_BINARIES_MESSAGE", "PgServer", "PgServerError", "find_pg_bin"]

ENV_URL: Final = "MAILSHOT_TEST_PG_URL"
"""Environment variable naming an existing server to use instead of starting one."""

MISSING_BINARIES_MESSAGE: Final = (
    "PostgreSQL server binaries not found: install the Debian package postgresql (make test does it)"
)

SUPERUSER: Final = "mailshot"
HOST: Final = "127.0.0.1"
DEFAULT_TIMEOUT: Final = 60.0
_DEBIAN_PG_ROOT: Final = Path("/usr/lib/postgresql")
_REQUIRED: Final = ("initdb", "pg_ctl", "postgres")
_SYSTEM_USER: Final = "postgres"
_START_ATTEMPTS: Final = 3
_SERVER_SETTINGS: Final = {
    "listen_addresses": f"'{HOST}'",
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "max_connections": "200",
}


class PgServerError(RuntimeError):
    """The test PostgreSQL server could not be found, started or used."""


def _has_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in _REQUIRED)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name))


def find_pg_bin() -> Path | None:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None.

    Debian installs them in ``/usr/lib/postgresql/<version>/bin`` (not on PATH); the highest version
    wins.  Otherwise the directory of ``pg_ctl`` found on PATH is used if it also holds the others.
    """
    if _DEBIAN_PG_ROOT.is_dir():
        candidates = [d / "bin" for d in _DEBIAN_PG_ROOT.iterdir() if re.fullmatch(r"\d+(\.\d+)?", d.name)]
        for bin_dir in sorted(candidates, key=lambda b: _version_key(b.parent), reverse=True):
            if _has_binaries(bin_dir):
                return bin_dir
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is not None:
        bin_dir = Path(pg_ctl).resolve().parent
        if _has_binaries(bin_dir):
            return bin_dir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _clean_env() -> dict[str, str]:
    """The environment without PG* variables (PGDATA, PGPORT, ...) that would redirect the tools."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _is_our_postmaster(pid: int, data_dir: Path) -> bool:
    """True when ``pid`` is a live postgres process serving ``data_dir`` (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _pid_alive(pid) and not Path("/proc/self").exists()  # no procfs: trust the pid file
    return os.fsencode(str(data_dir)) in cmdline


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an exited process nobody has reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


class PgServer:
    """A throw-away PostgreSQL cluster (or the server named by ``MAILSHOT_TEST_PG_URL``).

    ``start()`` creates and starts it, ``stop()`` stops it and deletes its files; both are idempotent and
    the instance is a context manager.  ``url(dbname)`` and ``create_database(name)`` give SQLAlchemy URLs
    (``postgresql+psycopg://...``).
    """

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        env_url = os.environ.get(ENV_URL, "").strip()
        self._external: URL | None = self._normalise_url(env_url) if env_url else None
        self._bin_dir: Path | None = None
        self._base_dir: Path | None = None
        self._port: int | None = None
        self._started = False
        self._run_as: list[str] = []

    # ------------------------------------------------------------------ public API

    @property
    def external(self) -> bool:
        """True when an existing server from ``MAILSHOT_TEST_PG_URL`` is used."""
        return self._external is not None

    @property
    def running(self) -> bool:
        return self._started

    @property
    def port(self) -> int:
        if self._external is not None:
            return self._external.port or 5432
        if self._port is None:
            raise PgServerError("the PostgreSQL test server is not started")
        return self._port

    @property
    def host(self) -> str:
        if self._external is not None:
            return self._external.host or "localhost"
        return HOST

    @property
    def data_dir(self) -> Path | None:
        """The cluster's data directory (None when not started or external)."""
        return None if self._base_dir is None else self._base_dir / "data"

    def start(self) -> PgServer:
        """Create and start the cluster (or check the external server); return self."""
        if self._started:
            return self
        if self._external is not None:
            self._check_external()
            self._started = True
            return self
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise PgServerError(MISSING_BINARIES_MESSAGE)
        self._bin_dir = bin_dir
        atexit.register(self.stop)
        self._started = True
        try:
            self._start_cluster(time.monotonic() + self.timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server immediately and delete its directory (no-op when external or stopped)."""
        atexit.unregister(self.stop)
        if not self._started:
            return
        self._started = False
        base_dir, self._base_dir = self._base_dir, None
        self._port = None
        if base_dir is None:
            return
        try:
            self._stop_postmaster(base_dir / "data")
        finally:
            shutil.rmtree(base_dir, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL of database ``dbname`` on this server."""
        if self._external is not None:
            return self._external.set(database=dbname).render_as_string(hide_password=False)
        url = URL.create("postgresql+psycopg", username=SUPERUSER, host=HOST, port=self.port, database=dbname)
        return url.render_as_string(hide_password=False)

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh, empty database (dropping any of that name) and return its SQLAlchemy URL.

        Without a name, a unique one is generated.
        """
        if not self._started:
            raise PgServerError("start() the PostgreSQL test server before creating databases")
        dbname = name if name is not None else f"test_{uuid.uuid4().hex[:12]}"
        ident = sql.Identifier(dbname)
        with self._admin_connection() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
        return self.url(dbname)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, disconnecting its sessions."""
        with self._admin_connection() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = "external" if self.external else f"port={self._port}"
        return f"<PgServer {where} running={self._started}>"

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _normalise_url(raw: str) -> URL:
        try:
            url = make_url(raw)
        except Exception as exc:
            raise PgServerError(f"{ENV_URL} is not a valid database URL: {exc}") from exc
        if url.get_backend_name() != "postgresql":
            raise PgServerError(f"{ENV_URL} must point to PostgreSQL, got {url.drivername!r}")
        return url.set(drivername="postgresql+psycopg")

    def _conninfo(self, dbname: str) -> dict[str, str | int]:
        if self._external is not None:
            ext = self._external
            params: dict[str, str | int] = {"dbname": dbname, "host": self.host, "port": self.port}
            if ext.username:
                params["user"] = ext.username
            if ext.password:
                params["password"] = str(ext.password)
            for key, value in ext.query.items():
                params[key] = value if isinstance(value, str) else value[-1]
            return params
        return {"dbname": dbname, "host": HOST, "port": self.port, "user": SUPERUSER}

    def _admin_connection(self) -> psycopg.Connection[tuple[object, ...]]:
        admin_db = (self._external.database if self._external is not None else None) or "postgres"
        try:
            conninfo = make_conninfo("", connect_timeout=10, **self._conninfo(admin_db))
            return psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise PgServerError(f"cannot connect to the PostgreSQL test server at {self.url()}: {exc}") from exc

    def _check_external(self) -> None:
        with self._admin_connection() as conn:
            conn.execute("SELECT 1")

    def _cmd(self, *args: str) -> list[str]:
        assert self._bin_dir is not None
        return [*self._run_as, str(self._bin_dir / args[0]), *args[1:]]

    def _run(self, args: list[str], deadline: float, what: str) -> subprocess.CompletedProcess[str]:
        """Run a tool in its own process group; on timeout kill the whole group (runuser's child too)."""
        remaining = max(deadline - time.monotonic(), 1.0)
        assert self._base_dir is not None
        with subprocess.Popen(
            args,
            cwd=self._base_dir,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as proc:
            try:
                stdout, stderr = proc.communicate(timeout=remaining)
            except BaseException as exc:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                if isinstance(exc, subprocess.TimeoutExpired):
                    raise PgServerError(
                        f"{what} timed out after {self.timeout:g} s: {' '.join(args)}{self._log_tail()}"
                    ) from exc
                raise
        return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)

    def _privilege_drop(self) -> list[str]:
        try:
            user = pwd.getpwnam(_SYSTEM_USER)
        except KeyError:
            raise PgServerError(
                "PostgreSQL refuses to run as root and there is no 'postgres' system user: "
                "install the Debian package postgresql (make test does it)"
            ) from None
        assert self._base_dir is not None
        os.chown(self._base_dir, user.pw_uid, user.pw_gid)
        if shutil.which("runuser"):
            return ["runuser", "-u", _SYSTEM_USER, "--"]
        if shutil.which("setpriv"):
            return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
        raise PgServerError("running as root but neither runuser nor setpriv is available to drop privileges")

    def _start_cluster(self, deadline: float) -> None:
        self._base_dir = Path(tempfile.mkdtemp(prefix="mailshot-pg-"))
        self._base_dir.chmod(0o700)
        if os.geteuid() == 0:
            self._run_as = self._privilege_drop()
        data_dir = self._base_dir / "data"

        initdb = [
            f"--pgdata={data_dir}",
            f"--username={SUPERUSER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        ]
        result = self._run(self._cmd("initdb", *initdb, "--locale=C.UTF-8"), deadline, "initdb")
        if result.returncode != 0 and "locale" in (result.stdout + result.stderr).lower():
            shutil.rmtree(data_dir, ignore_errors=True)
            result = self._run(self._cmd("initdb", *initdb, "--locale=C"), deadline, "initdb")
        if result.returncode != 0:
            raise PgServerError(f"initdb failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")

        settings = {**_SERVER_SETTINGS, "unix_socket_directories": f"'{self._base_dir}'"}
        with (data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# mailshot test server\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

        log_file = self._base_dir / "server.log"
        for attempt in range(1, _START_ATTEMPTS + 1):
            port = _free_port()
            wait = max(int(deadline - time.monotonic()), 1)
            args = self._cmd(
                "pg_ctl", "start", "-w", "-t", str(wait), "-D", str(data_dir), "-l", str(log_file), "-o", f"-p {port}"
            )
            result = self._run(args, deadline + 5, "pg_ctl start")
            if result.returncode == 0:
                self._port = port
                return
            log = self._log_tail()
            port_taken = "could not bind" in log or "already in use" in log
            self._stop_postmaster(data_dir)
            if not port_taken or attempt == _START_ATTEMPTS or time.monotonic() >= deadline:
                raise PgServerError(
                    f"pg_ctl start failed (exit {result.returncode}):\n{result.stdout}{result.stderr}{log}"
                )

    def _log_tail(self, lines: int = 30) -> str:
        if self._base_dir is None:
            return ""
        try:
            text = (self._base_dir / "server.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n--- server.log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    def _stop_postmaster(self, data_dir: Path) -> None:
        """Stop the postmaster of ``data_dir`` if one runs: pg_ctl first, signals as a fallback."""
        pid_file = data_dir / "postmaster.pid"
        if not pid_file.exists() or self._bin_dir is None:
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                self._cmd("pg_ctl", "stop", "-m", "immediate", "-w", "-t", "20", "-D", str(data_dir)),
                cwd=data_dir.parent,
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
                check=False,
            )
        try:
            pid = int(pid_file.read_text(encoding="utf-8").splitlines()[0])
        except (OSError, ValueError, IndexError):
            return  # pg_ctl removed the pid file: the server is gone
        if not _is_our_postmaster(pid, data_dir):
            return
        for sig in (signal.SIGQUIT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
            give_up = time.monotonic() + 5
            while _pid_alive(pid) and time.monotonic() < give_up:
                time.sleep(0.05)
            if not _pid_alive(pid):
                return
