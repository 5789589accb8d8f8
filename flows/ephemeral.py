"""One Prefect server for a `mailshot send` run without ``PREFECT_API_URL``, shared with its workers.

Without an API URL, Prefect's client starts an ephemeral server (``SubprocessASGIServer``: uvicorn
serving ``prefect.server.api.server:create_app`` in a subprocess) for each process that needs one, and
fast mode's worker processes, started by spawn, each started their own: one `mailshot send --fast` on
2 cores ran three servers beside its two workers (issue 16).  Here the command starts that same server
once, first, and exports its URL, which Prefect's process pool passes to every worker.

The server is launched with the command and environment of ``SubprocessASGIServer._run_uvicorn_command``
(Prefect 3.9) but without importing ``prefect.server.api.server`` here: that import alone costs this
process 2.7-3.9 s of CPU (measured on the 2-core VM), on the path to the first message, while the
server's own process boots beside it (~4.4 s to its first healthy answer, bench/RESULTS.md).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

import prefect
import prefect.context
from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings
from prefect.settings.context import get_current_settings

# What SubprocessASGIServer sets for its server: no UI, and the ephemeral server's own settings.
_EPHEMERAL = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SharedServer:
    """``with SharedServer() as server: ...; server.ready(); run the flow``.

    Entering starts the server process (the caller goes on importing meanwhile); :meth:`ready` waits
    for its health check and points this process and its children at it; leaving stops it.  With
    ``PREFECT_API_URL`` set, nothing is started and the configured server is used.
    """

    def __init__(self) -> None:
        self.api_url: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._stack = ExitStack()

    def __enter__(self) -> SharedServer:
        if PREFECT_API_URL.value():
            return self
        port = _free_port()
        env = {**os.environ, **_EPHEMERAL, **get_current_settings().to_environment_variables(exclude_unset=True)}
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(Path(prefect.__file__).parent.parent),
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],
            env=env,
            preexec_fn=_end_with_parent,
        )
        self.api_url = f"http://127.0.0.1:{port}/api"
        # Stopped at exit, after Prefect's own exit handlers (registered later, run first) have sent
        # the run's last logs and events to it.
        atexit.register(self._stop)
        return self

    def ready(self) -> None:
        """Wait until the server answers, then make it this process's and its workers' API."""
        if self._process is None or self._ready:
            return
        deadline = time.monotonic() + PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        while not _healthy(f"{self.api_url}/health"):
            if self._process.poll() is not None:
                raise RuntimeError(f"the Prefect server for this run exited with code {self._process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server for this run did not answer at {self.api_url}")
            time.sleep(0.05)
        assert self.api_url is not None
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = self.api_url  # the spawned workers read their settings from it
        self._stack.callback(_restore_env, "PREFECT_API_URL", previous)
        self._stack.enter_context(temporary_settings({PREFECT_API_URL: self.api_url}))
        # Threads that do not copy this context (Prefect's log, event and process-pool helpers) read the
        # process-global settings: without this they started a second ephemeral server mid-run.  The
        # same step as prefect.testing.utilities.prefect_test_harness (Prefect issue 15818).
        self._stack.enter_context(
            prefect.context._temporary_global_settings_context(prefect.context.get_settings_context())
        )
        self._ready = True

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stack.close()

    def _stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)  # as SubprocessASGIServer.stop
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _end_with_parent() -> None:
    """In the server's process before it starts (Linux): SIGTERM when the command dies, even by kill -9
    (exit handlers do not run then, and the server was left running alone)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
