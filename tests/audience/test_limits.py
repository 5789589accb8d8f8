"""Length limits checked on input, on SQLite and PostgreSQL: a value longer than its column is a clear
error (a bad row of an import, by line), never a failed transaction or a 100,000-character header."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from conftest import engine_for, make_settings
from helpers import create
from mailshot_core.audience import lists, subscribers, subscriptions
from mailshot_core.config import MAX_NAME_LENGTH, Settings
from mailshot_core.errors import InvalidInput
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import MailingList, Mailshot, Subscriber, max_length


@pytest.fixture
def site(db_url: str) -> tuple[Engine, Settings]:
    settings = make_settings(db_url)
    engine = engine_for(settings)
    with session_scope(engine) as session:
        lists.create_list(session, "news", "News")
        subscriptions.add_subscriber(session, "ann@example.org", "news", "Ann")
    return engine, settings


def _count(engine: Engine, model: type) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def test_a_long_name_in_an_import_is_a_bad_row_by_line(site: tuple[Engine, Settings], tmp_path: Path) -> None:
    """A 399-character name (or a 17-character lang) is reported with its line like any bad row; the other
    rows are imported (PostgreSQL used to refuse the whole import with StringDataRightTruncation)."""
    engine, _ = site
    path = tmp_path / "long.csv"
    path.write_text(
        "email,nom,lang\n"
        "carl@example.org,Carl,fr\n"
        f"dave@example.org,{'D' * 399},fr\n"
        "eve@example.org,Eve,abcdefghijklmnopq\n"
        f"fay@example.org,{'F' * 255},en\n"
    )
    with session_scope(engine) as session:
        report = subscribers.import_csv(session, path, "news")
    assert [line for line, _ in report.errors] == [3, 4]
    assert "name is 399 characters long; at most 255" in report.errors[0][1]
    assert "lang 'abcdefghijklmnopq'" in report.errors[1][1]
    assert report.new_subscribers == 2
    with session_scope(engine) as session:
        names = dict(session.execute(select(Subscriber.email, Subscriber.nom)).all())
    assert names["fay@example.org"] == "F" * 255 and "dave@example.org" not in names


@pytest.mark.parametrize(
    ("nom", "lang", "why"),
    [("N" * 100_000, "", "name is 100000 characters long; at most 255"), ("Bob", "x" * 17, "not a language code")],
)
def test_add_refuses_a_name_or_lang_longer_than_its_column(
    site: tuple[Engine, Settings], nom: str, lang: str, why: str
) -> None:
    """`subscribers add` with a 100,000-character name (or an overlong lang) is refused; nothing is written."""
    engine, _ = site
    with pytest.raises(InvalidInput, match=why), session_scope(engine) as session:
        subscriptions.add_subscriber(session, "bob@example.org", "news", nom, lang)
    assert _count(engine, Subscriber) == 1


def test_list_title_and_sending_header_values_are_capped(site: tuple[Engine, Settings]) -> None:
    """`lists create --title`, `create --from-name` and the subject: past their column (255) or one
    header line (998), a clear error and nothing stored."""
    engine, settings = site
    assert max_length(MailingList, "title") == max_length(Mailshot, "from_name") == MAX_NAME_LENGTH == 255
    with (
        pytest.raises(InvalidInput, match="list title is 256 characters long; at most 255"),
        session_scope(engine) as session,
    ):
        lists.create_list(session, "other", "T" * 256)
    with pytest.raises(InvalidInput, match="sender name is 256 characters long; at most 255"):
        create(engine, settings, from_name="S" * 256)
    with pytest.raises(InvalidInput, match="subject is 999 characters long; at most 998"):
        create(engine, settings, subject="s" * 999)
    assert _count(engine, MailingList) == 1 and _count(engine, Mailshot) == 0
    assert create(engine, settings, from_name="S" * 255, subject="s" * 998) > 0
