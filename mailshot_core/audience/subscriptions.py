"""Subscribing with consent: the Newsletter API's ``subscribe``, double opt-in, preferences, the trail.

SPIP's contract (original-mailshot.md §5): subscriptions are cumulative; without ``force`` a list
that asks for double opt-in gets a *pending* subscription until the address confirms through the
emailed link; ``graceful`` (imports) never re-subscribes someone who left.  Visitors (``public``)
may only join open lists, and never force.  Every change is written to the opt-in trail
(``optin_event``): what, when, from where, and when it was confirmed.

A pending subscription sends nothing: materialisation takes valid subscriptions of valid
subscribers only, and an address whose only subscriptions are pending is itself ``pending``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, distinct, func
from sqlmodel import Session, col, select

from mailshot_core.audience.addresses import check_lang, check_name, normalise_email
from mailshot_core.audience.lists import get_list
from mailshot_core.audience.subscribers import record_optin, unsubscribe
from mailshot_core.errors import InvalidInput
from mailshot_core.store.models import (
    MailingList,
    OptinEvent,
    Recipient,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    utcnow,
)


@dataclass
class SubscribeOutcome:
    """What one subscribe call did, list by list (identifiers)."""

    subscriber: Subscriber
    subscribed: list[str] = field(default_factory=list)  # now valid
    pending: list[str] = field(default_factory=list)  # waiting for the address to confirm (a link must be sent)
    already: list[str] = field(default_factory=list)  # valid before: nothing changed
    kept_unsubscribed: list[str] = field(default_factory=list)  # graceful: the address had left, nothing changed

    @property
    def needs_confirmation(self) -> bool:
        return bool(self.pending)


def _lists(session: Session, identifiers: Sequence[str], public: bool) -> list[MailingList]:
    if not identifiers:
        raise InvalidInput("lists: give at least one list to subscribe to")
    found: list[MailingList] = []
    for identifier in dict.fromkeys(i.strip() for i in identifiers):
        mlist = get_list(session, identifier)
        if public and not mlist.open:
            raise InvalidInput(f"list {identifier!r} is not open to public subscription")
        found.append(mlist)
    return found


def subscribe(
    session: Session,
    email: str,
    lists: Sequence[str],
    *,
    nom: str = "",
    lang: str = "",
    force: bool = False,
    graceful: bool = False,
    public: bool = False,
    source: str,
    client: str | None = None,
) -> SubscribeOutcome:
    """Subscribe ``email`` to ``lists`` (cumulative); see the module's docstring for the rules.

    ``force``: subscribe at once, without double opt-in (the operator's or a trusted site's decision).
    ``public``: a visitor's request: open lists only; the name and language of an address that
    already exists are not changed by it (someone else may be typing that address).
    """
    if public and force:
        raise InvalidInput("a visitor's subscription cannot be forced")
    address = normalise_email(email)
    nom, lang = check_name(nom), check_lang(lang)
    targets = _lists(session, lists, public)
    now = utcnow()
    sub = session.exec(select(Subscriber).where(Subscriber.email == address)).first()
    if sub is not None and graceful and sub.status == SubscriberStatus.UNSUBSCRIBED:
        return SubscribeOutcome(sub, kept_unsubscribed=[m.identifier for m in targets])
    if sub is None:
        sub = Subscriber(email=address, nom=nom, lang=lang, status=SubscriberStatus.PENDING)
        session.add(sub)
        session.flush()
    elif (nom or lang) and not public:
        sub.nom = nom or sub.nom
        sub.lang = lang or sub.lang
        sub.updated_at = now
    assert sub.id is not None
    outcome = SubscribeOutcome(sub)
    for mlist in targets:
        assert mlist.id is not None
        link = session.get(Subscription, (sub.id, mlist.id))
        if link is not None and link.status == SubscriptionStatus.VALID:
            outcome.already.append(mlist.identifier)
            continue
        if link is not None and link.status == SubscriptionStatus.REFUSED and graceful:
            outcome.kept_unsubscribed.append(mlist.identifier)
            continue
        direct = force or not mlist.double_optin
        if link is None:
            link = Subscription(subscriber_id=sub.id, list_id=mlist.id, created_at=now)
            session.add(link)
        elif link.status == SubscriptionStatus.PENDING and not direct:
            # Asked again: a new link is sent; the time of the first request stays, so its link still works.
            outcome.pending.append(mlist.identifier)
            record_optin(session, sub.id, mlist.id, "requested", source, client, "again", at=now)
            continue
        link.status = SubscriptionStatus.VALID if direct else SubscriptionStatus.PENDING
        link.updated_at = now
        if direct:
            outcome.subscribed.append(mlist.identifier)
            record_optin(
                session, sub.id, mlist.id, "subscribed", source, client, "forced" if force else "single opt-in", at=now
            )
        else:
            outcome.pending.append(mlist.identifier)
            record_optin(session, sub.id, mlist.id, "requested", source, client, at=now)
    if outcome.subscribed:
        _become_valid(sub, now)
    session.flush()
    return outcome


def add_subscriber(
    session: Session, email: str, list_identifier: str, nom: str = "", lang: str = "", *, source: str = "cli"
) -> tuple[Subscriber, bool]:
    """The operator subscribes one address to one list, at once (forced: no confirmation), even
    someone who had left: it is the operator's decision for one person.  Returns (subscriber,
    whether the subscription is new)."""
    outcome = subscribe(session, email, [list_identifier], nom=nom, lang=lang, force=True, source=source)
    return outcome.subscriber, bool(outcome.subscribed)


def _become_valid(sub: Subscriber, now: datetime) -> None:
    if sub.status != SubscriberStatus.VALID:
        sub.status = SubscriberStatus.VALID
        sub.unsubscribed_at = None
        sub.unsubscribe_reason = None
        sub.updated_at = now


def confirm(session: Session, subscriber_id: int, issued_at: datetime, *, client: str | None = None) -> list[str]:
    """Follow a confirmation link issued at ``issued_at``: the subscriber's subscriptions pending since
    before then become valid.  Returns the identifiers confirmed (none: already done, or nothing left)."""
    sub = session.get(Subscriber, subscriber_id)
    if sub is None:  # erased since the link was sent
        return []
    rows = session.exec(
        select(Subscription, MailingList)
        .join(MailingList, col(MailingList.id) == Subscription.list_id)
        .where(
            Subscription.subscriber_id == subscriber_id,
            col(Subscription.status) == SubscriptionStatus.PENDING,
            col(Subscription.updated_at) <= issued_at,
        )
        .order_by(col(MailingList.identifier))
    ).all()
    now = utcnow()
    for link, mlist in rows:
        link.status = SubscriptionStatus.VALID
        link.confirmed_at = now
        link.updated_at = now
        record_optin(session, subscriber_id, mlist.id, "confirmed", "link", client)
    if rows:
        _become_valid(sub, now)
    session.flush()
    return [mlist.identifier for _, mlist in rows]


@dataclass(frozen=True)
class ListChoice:
    identifier: str
    title: str
    description: str
    status: str | None  # valid, pending, refused; None: never subscribed
    open: bool = True  # False: a closed list the address is on (it may leave it, not join it again)


def choices(session: Session, subscriber_id: int) -> list[ListChoice]:
    """The lists a subscriber may choose on the preferences page: every open list, and the closed
    ones the address is on (it may leave them, not join them)."""
    states: dict[int | None, str] = dict(
        session.exec(
            select(Subscription.list_id, Subscription.status).where(Subscription.subscriber_id == subscriber_id)
        ).all()
    )
    shown = []
    for mlist in session.exec(select(MailingList).order_by(col(MailingList.identifier))).all():
        state = states.get(mlist.id)
        if mlist.open or state in (SubscriptionStatus.VALID, SubscriptionStatus.PENDING):
            shown.append(ListChoice(mlist.identifier, mlist.title, mlist.description, state, mlist.open))
    return shown


def set_preferences(
    session: Session, subscriber_id: int, wanted: Iterable[str], *, source: str, client: str | None = None
) -> tuple[list[str], list[str]]:
    """The preferences page's choice: on exactly the ``wanted`` lists among :func:`choices`.  Reached
    through a link sent to the address, so joining needs no further confirmation.  Returns (joined, left)."""
    sub = session.get(Subscriber, subscriber_id)
    if sub is None:
        raise InvalidInput("this address is no longer subscribed to anything")
    offered = {c.identifier: c for c in choices(session, subscriber_id)}
    wanted = set(wanted)
    unknown = sorted(wanted - set(offered))
    if unknown:
        raise InvalidInput(f"list {unknown[0]!r} cannot be chosen here")
    joined = [i for i, c in offered.items() if i in wanted and c.status != SubscriptionStatus.VALID]
    left = [
        i
        for i, c in offered.items()
        if i not in wanted and c.status in (SubscriptionStatus.VALID, SubscriptionStatus.PENDING)
    ]
    if joined:
        subscribe(session, sub.email, joined, force=True, source=source, client=client)
    for identifier in left:
        unsubscribe(session, sub.email, identifier, reason="preferences page", source=source, client=client)
    session.flush()
    return joined, left


def pending_since(session: Session, subscriber_id: int) -> datetime | None:
    """When the oldest of the subscriber's pending subscriptions was asked for (None: none pending)."""
    return session.exec(
        select(Subscription.updated_at)
        .where(Subscription.subscriber_id == subscriber_id, col(Subscription.status) == SubscriptionStatus.PENDING)
        .order_by(col(Subscription.updated_at))
    ).first()


@dataclass(frozen=True)
class TrailEntry:
    at: datetime
    action: str
    list: str  # identifier, or "all lists"
    source: str
    client: str | None
    detail: str | None


def trail(session: Session, subscriber_id: int) -> list[TrailEntry]:
    """The address's opt-in trail, oldest first (``mailshot subscribers show``, the pages, the API)."""
    rows = session.exec(
        select(OptinEvent, MailingList.identifier)
        .join(MailingList, col(MailingList.id) == OptinEvent.list_id, isouter=True)
        .where(OptinEvent.subscriber_id == subscriber_id)
        .order_by(col(OptinEvent.at), col(OptinEvent.id))
    ).all()
    return [TrailEntry(e.at, e.action, ident or "all lists", e.source, e.client, e.detail) for e, ident in rows]


def requests_since(session: Session, subscriber_id: int, since: datetime) -> int:
    """Confirmation requests for this address since ``since``: the per-address throttle's count.  A
    request for several lists at once is one request: its trail entries share their time
    (:func:`subscribe` writes them with one ``at``)."""
    return session.exec(
        select(func.count(distinct(col(OptinEvent.at)))).where(
            OptinEvent.subscriber_id == subscriber_id,
            OptinEvent.action == "requested",
            col(OptinEvent.at) >= since,
        )
    ).one()


@dataclass(frozen=True)
class ExpiredRequests:
    subscriptions: int  # pending subscriptions whose link has expired, deleted
    addresses: int  # addresses that had nothing else, deleted with their trail (they never consented)


def expire_pending(session: Session, before: datetime, *, dry_run: bool = False) -> ExpiredRequests:
    """Forget the subscription requests nobody confirmed before ``before`` (their links no longer work):
    an address typed into a form by someone else is not kept for ever.  An address left with no
    subscription at all, that was never subscribed (status pending) and never received a sending,
    is deleted with its trail; the others keep their trail, which records the request."""
    stale = (
        col(Subscription.status) == SubscriptionStatus.PENDING,
        col(Subscription.updated_at) < before,
    )
    owners = list(session.exec(select(Subscription.subscriber_id).where(*stale)).all())
    if not owners:
        return ExpiredRequests(0, 0)
    still_on = select(Subscription.subscriber_id).where(
        col(Subscription.subscriber_id).in_(owners), ~(stale[0] & stale[1])
    )
    received = select(Recipient.subscriber_id).where(col(Recipient.subscriber_id).in_(owners))
    orphans = set(
        session.exec(
            select(Subscriber.id).where(
                col(Subscriber.id).in_(set(owners)),
                Subscriber.status == SubscriberStatus.PENDING,
                col(Subscriber.id).not_in(still_on),
                col(Subscriber.id).not_in(received),
            )
        ).all()
    )
    if not dry_run:
        session.execute(delete(Subscription).where(*stale))
        if orphans:
            session.execute(delete(OptinEvent).where(col(OptinEvent.subscriber_id).in_(orphans)))
            session.execute(delete(Subscriber).where(col(Subscriber.id).in_(orphans)))
        session.flush()
    return ExpiredRequests(len(owners), len(orphans))
