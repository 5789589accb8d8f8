"""The Newsletter API's site for its tests: a database, the dev relay, the web app under uvicorn
(fakes/webhooks.WebServer, as ``mailshot web`` runs it), a list and one API key per scope.  Each test
module serves one per database (``module_db_url``: SQLite, then PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy.engine import Engine

from conftest import engine_for, make_settings
from fakes.webhooks import WebServer, free_socket
from mailshot_core.audience import lists
from mailshot_core.config import Settings
from mailshot_core.devtools.relay import DevRelay, FaultPlan
from mailshot_core.store.db import session_scope
from mailshot_core.transports.http import NODELAY
from mailshot_core.web.api.keys import SCOPES, create_key

API = "/api/v1"


@dataclass
class ApiSite:
    web: WebServer
    settings: Settings
    engine: Engine
    relay: DevRelay
    keys: dict[str, str]  # scope -> key
    started: list[tuple[int, datetime | None]] = field(default_factory=list)  # runs the app asked for (id, start time)

    @property
    def url(self) -> str:
        return self.web.url + API

    def client(self, scope: str | None = "admin", **headers: str) -> httpx.Client:
        """An API client with the key of ``scope`` (None: no key)."""
        if scope is not None:
            headers["Authorization"] = f"Bearer {self.keys[scope]}"
        return httpx.Client(
            base_url=self.url, headers=headers, timeout=30, transport=httpx.HTTPTransport(socket_options=NODELAY)
        )


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response's RFC 9457 problem, checked: its status, media type and fields."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["type"] == "about:blank"
    return body


@contextmanager
def serve(url: str, **overrides: object) -> Iterator[ApiSite]:
    with DevRelay(faults=FaultPlan()) as relay:
        settings = make_settings(url, relay, **overrides)
        engine = engine_for(settings)
        with session_scope(engine) as session:
            lists.create_list(session, "news", "Weekly news", double_optin=False)
            keys = {scope: create_key(session, f"key-{scope}", scope)[1] for scope in SCOPES}
        started: list[tuple[int, datetime | None]] = []

        def start_run(mailshot_id: int, *, start_at: datetime | None = None) -> None:
            started.append((mailshot_id, start_at))

        with WebServer(settings, free_socket(), start_run=start_run) as web:
            yield ApiSite(web, settings, engine, relay, keys, started)
