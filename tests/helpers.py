"""Test helpers: seed a database, create a sending, drive it to the end without Prefect."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

from sqlalchemy.engine import Engine

from mailshot_core.audience import lists, subscribers
from mailshot_core.config import Settings
from mailshot_core.devtools.relay import DevRelay
from mailshot_core.sending import lifecycle, pipeline, sendings
from mailshot_core.store.db import get_engine, session_scope
from mailshot_core.store.models import Mailshot

# The secret key of the tests' settings: a public base URL needs at least 32 bytes (config.MIN_SECRET_BYTES).
TEST_KEY = "test-secret-of-at-least-32-bytes-x"
HTML = (
    "<html><body><p>Hello {{ nom }} ({{ email }}, {{ lang }}, lists: {{ listes }})</p>"
    '<p><a href="{{ url_unsubscribe }}">Unsubscribe</a></p></body></html>'
)


def two_lists(folder: Path) -> Engine:
    """A new SQLite database in ``folder`` with the lists news ("Weekly news") and events."""
    engine = get_engine(f"sqlite:///{folder}/t.db")
    with session_scope(engine) as session:
        lists.create_list(session, "news", "Weekly news")
        lists.create_list(session, "events")
    return engine


def seed(engine: Engine, tmp: Path, n: int, list_name: str = "news", domain: str = "example.com") -> list[str]:
    """A list with n subscribers u0..u(n-1)@domain named 'User i'."""
    path = tmp / f"{list_name}.csv"
    emails = [f"u{i}@{domain}" for i in range(n)]
    path.write_text("email,nom,lang\n" + "".join(f"{e},User {i},fr\n" for i, e in enumerate(emails)))
    with session_scope(engine) as session:
        if list_name not in [m.identifier for m, _ in lists.list_lists(session)]:
            lists.create_list(session, list_name, list_name.title())
        subscribers.import_csv(session, path, list_name)
    return emails


def create(engine: Engine, settings: Settings, lists: tuple[str, ...] = ("news",), **kw: object) -> int:
    """A sending in progress (``send_now``), or scheduled with ``start_at``; ``send_now=False``: a draft."""
    kw.setdefault("send_now", True)
    spec = sendings.NewMailshot(
        subject=str(kw.pop("subject", "Hello {{ nom }}")),
        html=str(kw.pop("html", HTML)),
        lists=lists,
        **kw,  # type: ignore[arg-type]
    )
    with session_scope(engine) as session:
        m = sendings.create(session, settings, spec)
        assert m.id is not None
        return m.id


def drive(engine: Engine, settings: Settings, mailshot_id: int, max_batches: int = 10_000) -> Mailshot:
    """What the send-mailshot flow does, without Prefect: start, batches, waits, end."""
    lifecycle.start_sending(engine, settings, mailshot_id)
    finished = False
    for _ in range(max_batches):
        step = lifecycle.next_step(engine, settings, mailshot_id)
        if step.action == "send":
            if pipeline.send_batch(engine, settings, mailshot_id).stopped:
                break
        elif step.action == "wait":
            time.sleep(min(step.seconds, 1.0))
        else:
            finished = step.action == "done"
            break
    return lifecycle.end_sending(engine, mailshot_id, finished=finished)


def recipients(engine: Engine, mailshot_id: int) -> dict[str, tuple[str, int]]:
    """email -> (status, tries)."""
    from sqlmodel import select

    from mailshot_core.store.models import Recipient

    with session_scope(engine) as session:
        rows = session.exec(
            select(Recipient.email, Recipient.status, Recipient.tries).where(Recipient.mailshot_id == mailshot_id)
        ).all()
    return {e: (s, t) for e, s, t in rows}


def drive_in_process(url: str, host: str, port: int, mailshot_id: int, batch_size: int) -> None:
    """Entry point of a separate worker process (multiprocessing spawn): drive one sending."""
    from mailshot_core.config import load_settings
    from mailshot_core.store.db import get_engine

    settings = load_settings(
        database_url=url, smtp_host=host, smtp_port=port, retry_delay=0, batch_size=batch_size, secret_key=TEST_KEY
    )
    drive(get_engine(settings.database_url), settings, mailshot_id)


def cli_env(db_url: str, relay: DevRelay, connections: int = 4) -> dict[str, str]:
    """The environment of a `mailshot` command of the tests: this database, this relay, the test Prefect
    server (prefect_harness)."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSHOT_")}
    env.update(
        MAILSHOT_DATABASE_URL=db_url,
        MAILSHOT_SMTP_HOST=relay.host,
        MAILSHOT_SMTP_PORT=str(relay.port),
        MAILSHOT_SMTP_CONNECTIONS=str(connections),
        MAILSHOT_BATCH_SIZE="200",
        MAILSHOT_RETRY_DELAY="0",
        MAILSHOT_SECRET_KEY="crash-secret",
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
    )
    return env


def mailshot_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mailshot_core.cli", *args]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
