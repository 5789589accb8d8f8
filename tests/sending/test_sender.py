"""A sending's sender (SPIP's bulkstart): the one given, else the first of its lists that has one,
else MAILSHOT_FROM_*; the messages at the relay carry it."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from sqlmodel import select

from conftest import engine_for, make_settings
from helpers import create, drive, seed
from mailshot_core.devtools.relay import DevRelay
from mailshot_core.sending import sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import MailingList


def _sender(url: str, identifier: str, name: str, address: str) -> None:
    with session_scope(engine_for(make_settings(url))) as session:
        mlist = session.exec(select(MailingList).where(MailingList.identifier == identifier)).one()
        mlist.from_name, mlist.from_email = name, address


def test_the_first_list_with_a_sender_gives_it(sqlite_url: str, tmp_path: Path, relay: DevRelay) -> None:
    settings = make_settings(sqlite_url, relay)
    engine = engine_for(settings)
    seed(engine, tmp_path, 2, "plain")
    seed(engine, tmp_path, 2, "club", domain="example.net")
    seed(engine, tmp_path, 1, "shop", domain="example.edu")
    _sender(sqlite_url, "club", "The Club", "club@example.org")
    _sender(sqlite_url, "shop", "The Shop", "shop@example.org")

    with session_scope(engine) as session:
        ids = {
            "listed": create(engine, settings, ("plain", "club", "shop")),
            "given": create(engine, settings, ("club",), from_name="Editor", from_email="editor@example.org"),
            "default": create(engine, settings, ("plain",)),
        }
        senders = {k: (sendings.get(session, v).from_name, sendings.get(session, v).from_email) for k, v in ids.items()}
    assert senders == {
        "listed": ("The Club", "club@example.org"),
        "given": ("Editor", "editor@example.org"),
        "default": (settings.from_name, settings.from_email),
    }
    drive(engine, settings, ids["listed"])
    froms = {str(email.message_from_bytes(m.data, policy=email.policy.default)["From"]) for m in relay.messages}
    assert froms == {"The Club <club@example.org>"}
