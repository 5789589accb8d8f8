"""One Prefect server for a `mailshot send` run without ``PREFECT_API_URL``, shared with its workers.

Without an API URL, Prefect's client starts an ephemeral server (``SubprocessASGIServer``: uvicorn in
a subprocess) for the process that needs it, and fast mode's worker processes, started by spawn, each
started one of their own: one `mailshot send --fast` on 2 cores ran three servers beside its two
workers (issue 16).  Here the command starts that same server itself, early, while it imports the
flow, and exports its URL, which Prefect's process pool passes to every worker: one server per run.
"""

from __future__ import annotations

import os
import threading
from contextlib import ExitStack
from types import TracebackType

from prefect.settings import PREFECT_API_URL, temporary_settings


class SharedServer:
    """``with SharedServer() as server: ...; server.ready(); run the flow``.

    Entering starts the server in a thread (the caller goes on importing and checking meanwhile);
    :meth:`ready` waits for its health check and points this process and its children at it.  With
    ``PREFECT_API_URL`` set, nothing is started and the configured server is used.
    """

    def __init__(self) -> None:
        self.api_url: str | None = None
        self._server: object | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stack = ExitStack()

    def __enter__(self) -> SharedServer:
        if PREFECT_API_URL.value():
            return self
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()  # Prefect's own: the one its client would start for this process

        def start() -> None:
            try:
                server.start()
            except BaseException as exc:  # raised in the caller's thread by ready()
                self._error = exc

        self._server = server
        self._thread = threading.Thread(target=start, name="mailshot-prefect-server", daemon=True)
        self._thread.start()
        return self

    def ready(self) -> None:
        if self._thread is None or self.api_url is not None:
            return
        self._thread.join()
        if self._error is not None:
            raise self._error
        from prefect.server.api.server import SubprocessASGIServer

        assert isinstance(self._server, SubprocessASGIServer)
        self.api_url = self._server.api_url
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = self.api_url  # the spawned workers read their settings from it
        self._stack.callback(_restore_env, "PREFECT_API_URL", previous)
        self._stack.enter_context(temporary_settings({PREFECT_API_URL: self.api_url}))

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stack.close()
        if self._thread is not None:
            self._thread.join()
        from prefect.server.api.server import SubprocessASGIServer

        if isinstance(self._server, SubprocessASGIServer):
            self._server.stop()


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
