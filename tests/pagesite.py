"""A site for the follow-up pages' tests: a database with sendings in every section, and the web app
under uvicorn (fakes/webhooks.WebServer) with an admin password.  Shared by the HTTP tests
(test_pages.py) and the browser tests (test_pages_browser.py); built once per module.

Sendings, in id order: an archived one, an ended one (with opens, clicks, a bounce), a cancelled one
(part sent), one still processing (part sent, subject with a <script>), a scheduled one, a draft.  A subscriber
is named ``<script>alert(1)</script>``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import update
from sqlmodel import col

from conftest import engine_for, make_settings
from fakes.webhooks import SnsSigner, WebServer, free_socket
from helpers import HTML, create, drive, seed
from mailshot_core.audience import subscriptions
from mailshot_core.config import Settings
from mailshot_core.devtools.relay import DevRelay, FaultPlan
from mailshot_core.sending import archive, sendings
from mailshot_core.store import db
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import Mailshot, Recipient, utcnow
from mailshot_core.transports.http import NODELAY

ADMIN_USER = "operator"
ADMIN_PASSWORD = "correct horse battery staple"
EVIL = "<script>alert(1)</script>"
EVIL_EMAIL = "mallory@example.com"
PREFECT_UI = "http://prefect.example:4200"
RUN_ID = str(uuid.UUID(int=0x5EED))
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Site:
    web: WebServer
    settings: Settings
    ids: dict[str, int]  # archived, ended, cancelled, processing, scheduled, draft

    @property
    def url(self) -> str:
        return self.web.url

    def client(self, **kw: Any) -> httpx.Client:
        """A new visitor: no cookie."""
        return httpx.Client(base_url=self.url, timeout=30, transport=httpx.HTTPTransport(socket_options=NODELAY), **kw)

    def login(self, client: httpx.Client) -> str:
        """Log ``client`` in; returns the CSRF token of its session."""
        form = client.get("/admin/login")
        r = client.post(
            "/admin/login",
            data={"csrf": csrf_of(form.text), "user": ADMIN_USER, "password": ADMIN_PASSWORD, "next": "/admin/"},
        )
        assert r.status_code == 303 and r.headers["location"] == "/admin/", r.text
        return csrf_of(client.get("/admin/").text)

    def status(self, name: str) -> str:
        with session_scope(engine_for(self.settings)) as session:
            return sendings.get(session, self.ids[name]).status


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF field in the page"
    return found[1]


def _fill(settings: Settings, tmp: Path) -> dict[str, int]:
    engine = engine_for(settings)
    seed(engine, tmp, 40)
    with session_scope(engine) as session:
        subscriptions.add_subscriber(session, EVIL_EMAIL, "news", nom=EVIL, lang="en")
    ids = {}
    ids["archived"] = create(engine, settings, subject="Spring issue")
    drive(engine, settings, ids["archived"])
    ids["ended"] = create(engine, settings, subject="Summer issue: {{ nom }}, the festival programme")
    drive(engine, settings, ids["ended"])
    ids["cancelled"] = create(engine, settings, subject="Autumn issue (sent to the wrong list)")
    drive(engine, settings, ids["cancelled"], max_batches=1)
    # Its HTML runs a script: the preview's sandbox must not let it.
    html = HTML.replace("</body>", "<script>alert('preview')</script></body>")
    ids["processing"] = create(engine, settings, subject=f"{EVIL} Winter issue", html=html)
    drive(engine, settings, ids["processing"], max_batches=2)
    ids["scheduled"] = create(engine, settings, subject="New year issue", start_at=utcnow() + timedelta(days=30))
    ids["draft"] = create(engine, settings, subject="Spring issue (draft)", send_now=False)
    with session_scope(engine) as session:
        sendings.cancel(session, ids["cancelled"])
        archive.archive(session, sendings.get(session, ids["archived"]), utcnow())
        # Feedback on the ended sending, as apply-feedback would leave it (counters from a recount).
        for status, emails in (("read", ["u1", "u2", "u3", "u4"]), ("clic", ["u5", "u6"]), ("bounce", ["u7"])):
            session.execute(
                update(Recipient)
                .where(
                    col(Recipient.mailshot_id) == ids["ended"],
                    col(Recipient.email).in_([f"{e}@example.com" for e in emails]),
                )
                .values(status=status)
            )
        ended = sendings.get(session, ids["ended"])
        for name, value in sendings.recount(session, ids["ended"]).items():
            setattr(ended, name, value)
        session.execute(update(Mailshot).where(col(Mailshot.id) == ids["processing"]).values(flow_run_id=RUN_ID))
    return ids


@contextmanager
def page_site(tmp: Path, database_url: str | None = None) -> Iterator[Site]:
    sock = free_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        with DevRelay(faults=FaultPlan()) as relay:
            settings = make_settings(
                database_url or f"sqlite:///{tmp}/mailshot.db",
                relay,
                base_url=url,
                batch_size=10,
                admin_user=ADMIN_USER,
                admin_password=ADMIN_PASSWORD,
                prefect_ui_url=PREFECT_UI,
            )
            ids = _fill(settings, tmp)
        with WebServer(settings, sock, SnsSigner()) as web:
            yield Site(web, settings, ids)
    finally:
        db.dispose_engines()
