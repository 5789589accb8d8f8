"""Lists (mailshot_core.audience.lists): names, fields and their checks, shared by the CLI and the API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from helpers import two_lists
from mailshot_core.audience.lists import create_list, get_list, list_lists, update_list
from mailshot_core.errors import InvalidInput, NotFound
from mailshot_core.store.db import get_engine, session_scope


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = two_lists(tmp_path)
    yield eng
    eng.dispose()


@pytest.mark.parametrize("name", ["", "  ", "a b", "été", "a..b", ".a", "a.", "a/b", "a@b", "x" * 101, "ne\nws"])
def test_create_list_refuses_invalid_names(engine: Engine, name: str) -> None:
    """A list name must be a dot-atom of ASCII letters, digits, '-', '_' (it becomes the List-Id)."""
    with pytest.raises(InvalidInput, match="invalid list name"), session_scope(engine) as s:
        create_list(s, name)


def test_create_list_valid_names_and_duplicates(engine: Engine) -> None:
    """Valid names are created (title defaults to the name); a duplicate or a title with CR/LF is refused."""
    with session_scope(engine) as s:
        assert create_list(s, "news.fr").title == "news.fr"
        assert create_list(s, " a-b_c ", "Lettre d’été").identifier == "a-b_c"
    with pytest.raises(InvalidInput, match="already exists"), session_scope(engine) as s:
        create_list(s, "news")
    with pytest.raises(InvalidInput, match="single line"), session_scope(engine) as s:
        create_list(s, "other", "Title\r\nX-Evil: 1")


def test_get_list_unknown_names_the_existing_lists(engine: Engine, tmp_path: Path) -> None:
    """An unknown list is NotFound whose message lists the lists that exist (or says there are none)."""
    with (
        pytest.raises(NotFound, match=r"unknown list 'nope' \(existing lists: events, news\)"),
        session_scope(engine) as s,
    ):
        get_list(s, "nope")
    empty = get_engine(f"sqlite:///{tmp_path}/empty.db")
    try:
        with pytest.raises(NotFound, match="no list exists yet"), session_scope(empty) as s:
            get_list(s, "news")
    finally:
        empty.dispose()


def test_create_with_fields_and_defaults(engine: Engine) -> None:
    """A new list is closed, with double opt-in and no sender of its own unless told; the sender's
    address is normalised like any address."""
    with session_scope(engine) as s:
        plain = get_list(s, "events")
        assert (plain.open, plain.double_optin, plain.from_email, plain.confirm_subject) == (False, True, "", None)
        shop = create_list(
            s, "shop", "Shop", open=True, from_name="The Shop", from_email=" News@Shop.Example ", lang="fr"
        )
        assert (shop.open, shop.from_name, shop.from_email, shop.lang) == (True, "The Shop", "news@shop.example", "fr")


def test_update_changes_only_the_given_fields(engine: Engine) -> None:
    """update_list changes what it is given (None: unchanged); empty values bring back the defaults."""
    with session_scope(engine) as s:
        update_list(s, "news", description="Every Monday", from_email="a@example.org", confirm_subject="Confirm")
    with session_scope(engine) as s:
        m = update_list(s, "news", open=True, double_optin=False, description=None)
        assert (m.title, m.description, m.open, m.double_optin) == ("Weekly news", "Every Monday", True, False)
        assert (m.from_email, m.confirm_subject) == ("a@example.org", "Confirm")
    with session_scope(engine) as s:
        m = update_list(s, "news", title="", from_email="", confirm_subject="", confirm_text=" ")
        assert (m.title, m.from_email, m.confirm_subject, m.confirm_text) == ("news", "", None, None)
    assert [(m.identifier, n) for m, n in list_lists_of(engine)] == [("events", 0), ("news", 0)]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"from_email": "not-an-address"}, "invalid address"),
        ({"from_name": "A\r\nBcc: x@example.org"}, "single line"),
        ({"from_name": "n" * 256}, "at most 255"),
        ({"title": "t" * 256}, "at most 255"),
        ({"confirm_subject": "Confirm\nnow"}, "single line"),
        ({"lang": "x" * 17}, "not a language code"),
        ({"description": "d" * 10_001}, "at most 10,000"),
        ({"confirm_text": "a\x00b"}, "NUL"),
        ({"open": "yes"}, "true or false"),
        ({"colour": "red"}, "unknown list field"),
    ],
)
def test_bad_fields_change_nothing(engine: Engine, fields: dict[str, object], message: str) -> None:
    """Each bad value is refused with a message naming it, and the list is left as it was."""
    with pytest.raises(InvalidInput, match=message), session_scope(engine) as s:
        update_list(s, "news", **fields)
    with session_scope(engine) as s:
        m = get_list(s, "news")
        assert (m.title, m.from_email, m.from_name, m.open, m.description) == ("Weekly news", "", "", False, "")
    with pytest.raises(NotFound), session_scope(engine) as s:
        update_list(s, "nope", title="x")


def list_lists_of(engine: Engine) -> list[tuple[object, int]]:
    with session_scope(engine) as s:
        return list_lists(s)
