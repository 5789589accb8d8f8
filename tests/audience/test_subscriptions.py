"""Subscriptions with consent (audience/subscriptions.py) and the confirmation link
(sending/confirmations.py), on SQLite and PostgreSQL, with the dev relay receiving the message."""

from __future__ import annotations

import email
import email.policy
import re
import time
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlmodel import select

from conftest import engine_for, make_settings
from helpers import create, drive, recipients
from mailshot_core.audience import lists, subscribers, subscriptions
from mailshot_core.devtools.relay import DevRelay
from mailshot_core.errors import InvalidInput
from mailshot_core.sending import confirmations
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import MailingList, Subscriber, Subscription

LINK = re.compile(r"https://news\.example\.org/confirm/(\S+)")


def _open_list(url: str, identifier: str = "news", **fields: object) -> None:
    with session_scope(engine_for(make_settings(url))) as session:
        lists.create_list(session, identifier, identifier.title(), **{"open": True, **fields})


def _body(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_visitor_confirms_by_the_emailed_link_then_receives_the_next_sending(db_url: str, relay: DevRelay) -> None:
    settings = make_settings(db_url, relay)
    engine = engine_for(settings)
    _open_list(db_url, from_name="Weekly team", from_email="weekly@example.org", lang="fr")
    with session_scope(engine) as session:
        outcome = subscriptions.subscribe(
            session, "Visitor@Example.com", ["news"], nom="Vi", public=True, source="page", client="192.0.2.1"
        )
        assert outcome.pending == ["news"] and outcome.subscriber.status == "pending"
    confirmations.send_confirmation(engine, settings, "visitor@example.com", ["news"])
    [received] = relay.messages
    msg = _body(received.data)
    assert msg["From"].addresses[0].addr_spec == "weekly@example.org"  # the list's own sender
    assert msg["Auto-Submitted"] == "auto-generated" and msg["List-Unsubscribe"] is None
    text = msg.get_content()
    assert "Bonjour Vi" in text  # the list's language (the visitor gave none)
    match = LINK.search(text)
    assert match

    sending = create(engine, settings)  # a sending before confirmation: not for a pending address
    drive(engine, settings, sending)
    assert "visitor@example.com" not in recipients(engine, sending)

    assert confirmations.follow(engine, settings, match[1], client="192.0.2.1") == ["news"]
    assert confirmations.follow(engine, settings, match[1]) == []  # a second click changes nothing
    with session_scope(engine) as session:
        sub = subscribers.get_subscriber(session, "visitor@example.com")
        assert sub.status == "valid"
        assert [(e.action, e.list, e.source) for e in subscriptions.trail(session, sub.id or 0)] == [
            ("requested", "news", "page"),
            ("confirmed", "news", "link"),
        ]
    after = create(engine, settings)
    drive(engine, settings, after)
    assert recipients(engine, after)["visitor@example.com"][0] == "sent"


def test_altered_or_expired_links_confirm_nothing(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url)
    engine = engine_for(settings)
    _open_list(sqlite_url)
    with session_scope(engine) as session:
        sub = subscriptions.subscribe(session, "a@example.com", ["news"], public=True, source="page").subscriber
        sub_id = sub.id or 0
    good = confirmations.link_for(settings, sub_id).rsplit("/", 1)[1]
    ids, mac = good.rsplit(".", 1)
    altered = [f"{sub_id + 1}.{ids.split('.')[1]}.{mac}", good[:-1] + ("A" if good[-1] != "A" else "B"), good + "x"]
    for token in altered:
        assert confirmations.follow(engine, settings, token) is None
    old = int(time.time()) - (settings.confirm_link_days * 86400 + 60)
    expired = confirmations.link_for(settings, sub_id, issued=old).rsplit("/", 1)[1]
    assert confirmations.follow(engine, settings, expired) is None
    # A link issued before the request does not confirm it either (it was for an earlier one).
    earlier = confirmations.link_for(settings, sub_id, issued=int(time.time()) - 3600).rsplit("/", 1)[1]
    assert confirmations.follow(engine, settings, earlier) == []
    with session_scope(engine) as session:
        assert session.exec(select(Subscription.status)).all() == ["pending"]


def test_graceful_never_resubscribes_someone_who_left(sqlite_url: str, tmp_path: Path) -> None:
    settings = make_settings(sqlite_url)
    engine = engine_for(settings)
    _open_list(sqlite_url)
    with session_scope(engine) as session:
        subscriptions.subscribe(session, "gone@example.com", ["news"], force=True, source="api")
        subscribers.unsubscribe(session, "gone@example.com", reason="left", source="link")
    with session_scope(engine) as session:
        before = session.exec(select(Subscription.status, Subscription.updated_at)).all()
        outcome = subscriptions.subscribe(session, "gone@example.com", ["news"], graceful=True, source="import")
        assert outcome.kept_unsubscribed == ["news"] and not outcome.subscribed and not outcome.pending
    with session_scope(engine) as session:
        assert session.exec(select(Subscription.status, Subscription.updated_at)).all() == before
        assert subscribers.get_subscriber(session, "gone@example.com").status == "unsubscribed"
    # Without graceful, an explicit request asks for consent again (pending), it does not force.
    with session_scope(engine) as session:
        outcome = subscriptions.subscribe(session, "gone@example.com", ["news"], source="api")
        assert outcome.pending == ["news"]


def test_rules_of_the_contract(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url)
    engine = engine_for(settings)
    _open_list(sqlite_url)
    _open_list(sqlite_url, "members")
    _open_list(sqlite_url, "single", double_optin=False)
    with session_scope(engine) as session:
        session.exec(select(MailingList).where(MailingList.identifier == "members")).one().open = False
    with session_scope(engine) as session:
        with pytest.raises(InvalidInput, match="not open"):
            subscriptions.subscribe(session, "v@example.com", ["members"], public=True, source="page")
        with pytest.raises(InvalidInput, match="cannot be forced"):
            subscriptions.subscribe(session, "v@example.com", ["news"], public=True, force=True, source="page")
        # A list without double opt-in subscribes at once; forced subscribes at once; cumulative.
        out = subscriptions.subscribe(session, "v@example.com", ["single", "news"], public=True, source="page")
        assert (out.subscribed, out.pending) == (["single"], ["news"])
        assert out.subscriber.status == "valid"
        out = subscriptions.subscribe(session, "v@example.com", ["members", "single"], force=True, source="api")
        assert (out.subscribed, out.already) == (["members"], ["single"])
        # A visitor does not rename an existing subscriber; the operator does.
        subscriptions.subscribe(session, "v@example.com", ["news"], nom="Mallory", public=True, source="page")
        assert session.exec(select(Subscriber.nom)).one() == ""
        subscriptions.subscribe(session, "v@example.com", ["news"], nom="Victor", force=True, source="api")
        assert session.exec(select(Subscriber.nom)).one() == "Victor"


def test_preferences_join_and_leave(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url)
    engine = engine_for(settings)
    _open_list(sqlite_url)
    _open_list(sqlite_url, "events")
    with session_scope(engine) as session:
        sub = subscriptions.subscribe(session, "p@example.com", ["news"], force=True, source="api").subscriber
        sub_id = sub.id or 0
        assert [(c.identifier, c.status) for c in subscriptions.choices(session, sub_id)] == [
            ("events", None),
            ("news", "valid"),
        ]
        joined, left = subscriptions.set_preferences(session, sub_id, {"events"}, source="preferences")
        assert (joined, left) == (["events"], ["news"])
        assert subscribers.current_lists(session, sub_id) == {"events"}
        with pytest.raises(InvalidInput, match="cannot be chosen"):
            subscriptions.set_preferences(session, sub_id, {"nope"}, source="preferences")
        actions = [(e.action, e.list) for e in subscriptions.trail(session, sub_id)]
        assert actions == [("subscribed", "news"), ("subscribed", "events"), ("unsubscribed", "news")]


def test_a_list_template_is_checked_and_used(sqlite_url: str, relay: DevRelay) -> None:
    settings = make_settings(sqlite_url, relay)
    engine = engine_for(settings)
    with session_scope(engine) as session:
        lists.create_list(session, "other")
        with pytest.raises(InvalidInput, match="url_confirm"):
            lists.update_list(session, "other", confirm_text="no link here")
        with pytest.raises(InvalidInput, match="unknown variable"):
            lists.update_list(session, "other", confirm_subject="Hi {{ password }}")
    _open_list(sqlite_url, confirm_subject="Join {{ lists }}?", confirm_text="Click {{ url_confirm }} ({{ email }})")
    outcome, sent = confirmations.request_subscription(engine, settings, "T@example.com", ["news"], source="api")
    assert outcome.pending == ["news"] and sent is not None
    again, resent = confirmations.request_subscription(engine, settings, "t@example.com", ["news"], source="api")
    assert again.pending == ["news"] and resent is not None  # asked again: a new link
    assert len(relay.messages) == 2
    msg = _body(relay.messages[0].data)
    assert msg["Subject"] == "Join News?"
    assert re.fullmatch(r"Click https://news\.example\.org/confirm/\S+ \(t@example\.com\)\r?\n", msg.get_content())


def test_unconfirmed_requests_are_forgotten_once_their_link_expired(db_url: str) -> None:
    settings = make_settings(db_url)
    engine = engine_for(settings)
    _open_list(db_url)
    _open_list(db_url, "events")
    with session_scope(engine) as session:
        subscriptions.subscribe(session, "stranger@example.com", ["news"], public=True, source="page")
        subscriptions.subscribe(session, "member@example.com", ["events"], force=True, source="api")
        subscriptions.subscribe(session, "member@example.com", ["news"], public=True, source="page")
        subscriptions.subscribe(session, "recent@example.com", ["news"], public=True, source="page")
        for link in session.exec(select(Subscription)).all():  # every request but recent@'s is old
            if (
                link.status == "pending"
                and link.subscriber_id != subscribers.get_subscriber(session, "recent@example.com").id
            ):
                link.updated_at = link.updated_at - timedelta(days=settings.confirm_link_days + 1)
    assert "2 unconfirmed subscription request(s)" in confirmations.expire_requests(engine, settings, dry_run=True)
    summary = confirmations.expire_requests(engine, settings)
    assert summary.startswith("2 unconfirmed") and "1 address(es)" in summary
    with session_scope(engine) as session:
        assert {s.email for s in session.exec(select(Subscriber)).all()} == {"member@example.com", "recent@example.com"}
        member = subscribers.get_subscriber(session, "member@example.com")
        assert subscribers.current_lists(session, member.id or 0) == {"events"}
        assert [e.action for e in subscriptions.trail(session, member.id or 0)] == ["subscribed", "requested"]
    assert confirmations.expire_requests(engine, settings).startswith("0 unconfirmed")


def test_requests_since_counts_requests_not_lists(db_url: str) -> None:
    """The per-address throttle counts requests: one for three lists at once is one, asked again is two;
    a direct (single opt-in) subscription is no confirmation request."""
    engine = engine_for(make_settings(db_url))
    for name in ("news", "offers", "events"):
        _open_list(db_url, name)
    _open_list(db_url, "direct", double_optin=False)
    before = subscriptions.utcnow() - timedelta(seconds=1)
    with session_scope(engine) as session:
        outcome = subscriptions.subscribe(
            session, "a@example.com", ["news", "offers", "events"], public=True, source="page"
        )
        assert outcome.pending == ["news", "offers", "events"]
        sub_id = outcome.subscriber.id
        assert sub_id is not None
        assert subscriptions.requests_since(session, sub_id, before) == 1
        subscriptions.subscribe(session, "a@example.com", ["news", "direct"], public=True, source="page")
        assert subscriptions.requests_since(session, sub_id, before) == 2
        subscriptions.subscribe(session, "a@example.com", ["direct"], public=True, source="page")
        assert subscriptions.requests_since(session, sub_id, before) == 2
        assert subscriptions.requests_since(session, sub_id, subscriptions.utcnow() + timedelta(seconds=1)) == 0
