"""What every command shares: the Typer apps, the consoles, settings, the database.

Every error a user can cause ends as one line ``error: <what and where>`` on stderr and exit code 1
(entry.py), with nothing changed in the database (each command runs in one transaction).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from mailshot_core.config import Settings, get_settings
from mailshot_core.errors import InvalidInput, MailshotError
from mailshot_core.store.db import get_engine, session_scope

app = typer.Typer(
    name="mailshot",
    help="Send newsletters in bulk, one personalised message per subscriber, with a per-recipient record.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
lists_app = typer.Typer(help="Mailing lists.", no_args_is_help=True)
subs_app = typer.Typer(help="Subscribers and subscriptions.", no_args_is_help=True)
app.add_typer(lists_app, name="lists")
app.add_typer(subs_app, name="subscribers")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def current_settings() -> Settings:
    return get_settings()


def open_engine() -> Engine:
    settings = current_settings()
    try:
        return get_engine(settings.database_url)
    except OperationalError as exc:
        raise MailshotError(f"cannot open the database {settings.database_url}: {exc.orig}") from None


@contextmanager
def db_session() -> Iterator[Session]:
    with session_scope(open_engine()) as session:
        yield session


def read_file(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"{what} file {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} file {path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InvalidInput(f"{what} file {path}: {exc.strerror}") from None
