"""The ``url_unsubscribe`` link of every message: what it names, and what following it does.

The link signs (sending, subscriber) (tokens.UNSUBSCRIBE).  Naming the subscriber rather than the
recipient row keeps year-old links working after purge.py has deleted the sending's recipients.

- One-click (RFC 8058, the mail client's POST): the subscriber leaves the sending's lists at once.
- The page (a person's GET, then POST): leave one of the sending's lists, or every list.

Each unsubscription is recorded as a feedback event (subscribers.unsubscribe), the recipient row of
the sending, when still there, moves to ``unsub`` with the counters, and a repeat changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailshot_core.audience import subscribers
from mailshot_core.content.tokens import LEGACY_UNSUBSCRIBE, UNSUBSCRIBE, read_token
from mailshot_core.errors import NotFound
from mailshot_core.feedback.effects import IN_FLIGHT, RANK
from mailshot_core.sending import sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import (
    MailingList,
    Mailshot,
    Recipient,
    RecipientStatus,
    Subscriber,
)

ALL_LISTS = "*"  # the page's choice "every list"


@dataclass(frozen=True)
class ListChoice:
    identifier: str
    title: str
    subscribed: bool


@dataclass(frozen=True)
class LinkTarget:
    """Who and what a valid link is about, as the page shows it."""

    mailshot_id: int
    subscriber_id: int | None  # None: as email (the preferences page is this subscriber's)
    email: str | None  # None: a test message to an address that is no subscriber, or one since erased
    lists: tuple[ListChoice, ...]  # the sending's lists, and whether the address is still on each
    other_lists: int  # lists outside the sending the address is still on

    @property
    def subscribed(self) -> bool:
        return any(c.subscribed for c in self.lists) or self.other_lists > 0


def read_link(engine: Engine, key: bytes, token: str) -> LinkTarget | None:
    """The link's target; None when the token is forged or malformed, or names no sending."""
    ids = read_token(key, token, UNSUBSCRIBE)
    legacy = read_token(key, token, LEGACY_UNSUBSCRIBE) if ids is None else None
    if ids is None and legacy is None:
        return None
    with Session(engine) as session:
        if ids is not None:
            mailshot_id, subscriber_id = ids
        else:
            assert legacy is not None
            mailshot_id, recipient_id = legacy
            row = session.get(Recipient, recipient_id)
            if row is None or row.mailshot_id != mailshot_id or row.subscriber_id is None:
                return None  # purged since: that old link cannot say whose it was any more
            subscriber_id = row.subscriber_id
        mailshot = session.get(Mailshot, mailshot_id)
        if mailshot is None:
            return None
        names = sendings.list_identifiers(mailshot)
        sub = session.get(Subscriber, subscriber_id) if subscriber_id else None
        titles = dict(
            session.exec(
                select(MailingList.identifier, MailingList.title).where(col(MailingList.identifier).in_(names))
            ).all()
        )
        on = subscribers.current_lists(session, subscriber_id) if sub is not None else set()
    choices = tuple(ListChoice(n, titles[n] or n, n in on) for n in names if n in titles)
    return LinkTarget(
        mailshot_id=mailshot_id,
        subscriber_id=sub.id if sub is not None else None,
        email=sub.email if sub is not None else None,
        lists=choices,
        other_lists=len(on - set(names)),
    )


def _mark_recipient(session: Session, mailshot_id: int, email: str) -> None:
    """The sending's recipient row moves to ``unsub`` (the feedback precedence: never down).

    Only a row whose message went out (sent or later, or in doubt): a ``todo`` row's address left before its turn,
    and the claim will kill it.  The update is guarded by the status read, so a concurrent move (a
    complaint, a click applied meanwhile) is never overwritten nor counted twice.
    """
    row = session.exec(
        select(Recipient.id, Recipient.status).where(
            Recipient.mailshot_id == mailshot_id, col(Recipient.email) == email
        )
    ).first()
    if row is None:
        return
    rid, status = row
    rank = RANK.get(status, 0)
    went_out = rank >= RANK[RecipientStatus.SENT] or status == RecipientStatus.UNKNOWN  # a link followed: it left
    if status in IN_FLIGHT or not went_out or rank >= RANK[RecipientStatus.UNSUB]:
        return
    moved = session.execute(
        update(Recipient)
        .where(col(Recipient.id) == rid, col(Recipient.status) == status)
        .values(status=RecipientStatus.UNSUB)
    )
    if moved.rowcount == 1:  # type: ignore[attr-defined]
        sendings.apply_counter_deltas(session, mailshot_id, sendings.counter_deltas([(status, RecipientStatus.UNSUB)]))


def unsubscribe(engine: Engine, target: LinkTarget, choice: str | None, *, one_click: bool) -> int:
    """Apply the link: ``choice`` None = the sending's lists (one-click), a list identifier of the
    sending, or :data:`ALL_LISTS`.  Returns how many subscriptions were ended (0 on a repeat)."""
    if target.email is None:
        return 0
    if choice is None:
        scopes: list[str | None] = [c.identifier for c in target.lists if c.subscribed]
    elif choice == ALL_LISTS:
        scopes = [None]
    elif choice in {c.identifier for c in target.lists}:
        scopes = [choice]
    else:
        raise ValueError(f"{choice!r} is not one of this sending's lists")
    how = "one-click unsubscribe (RFC 8058)" if one_click else "unsubscribe page"
    changed = 0
    with session_scope(engine) as session:
        for scope in scopes:
            try:
                changed += subscribers.unsubscribe(
                    session,
                    target.email,
                    scope,
                    reason=f"{how}, link of sending {target.mailshot_id}",
                    source="web",
                    mailshot_id=target.mailshot_id,
                )
            except NotFound:  # erased or list deleted since the page was shown: nothing left to do
                continue
        if changed:
            _mark_recipient(session, target.mailshot_id, target.email)
    return changed
