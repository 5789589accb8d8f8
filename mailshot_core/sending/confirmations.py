"""The double opt-in message: one signed, expiring link that confirms an address's pending subscriptions.

The link (``/confirm/<token>``, tokens.CONFIRM) signs the subscriber and the time it was issued:
following it confirms the subscriptions pending since before then, for MAILSHOT_CONFIRM_LINK_DAYS.
An altered link fails its signature, an old one its age: both confirm nothing.

The message comes from the first of the lists that has a sender (else MAILSHOT_FROM_*), in the
list's template when it has one (``confirm_subject``/``confirm_text``, sandboxed like a sending's),
else in a default text in the subscriber's language (then the list's, then English).  It is sent
at once through the site's transport: it belongs to no sending and is no bulk mail.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailshot_core.audience.lists import get_list
from mailshot_core.audience.subscribers import get_subscriber
from mailshot_core.audience.subscriptions import SubscribeOutcome, confirm, expire_pending, subscribe
from mailshot_core.config import Settings
from mailshot_core.content.confirmation import DEFAULTS, VARIABLES, language
from mailshot_core.content.message import HeaderError, OutgoingMessage, build_notice
from mailshot_core.content.render import TemplateError, TextTemplate
from mailshot_core.content.tokens import CONFIRM, make_timed_token, read_timed_token
from mailshot_core.errors import InvalidInput, MailshotError
from mailshot_core.sending.one_message import hand_over
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import MailingList
from mailshot_core.transports import get_transport
from mailshot_core.transports.base import Transport


@dataclass(frozen=True)
class Confirmation:
    """A confirmation message sent, and the link it carries."""

    message: OutgoingMessage
    url: str


def link_for(settings: Settings, subscriber_id: int, issued: int | None = None) -> str:
    key = settings.secret_key.get_secret_value().encode()
    # Rounded up: the link must cover a subscription made in the same second (confirm compares times).
    token = make_timed_token(key, CONFIRM, subscriber_id, math.ceil(time.time()) if issued is None else issued)
    return f"{settings.base_url}/confirm/{token}"


def build(session: Session, settings: Settings, email: str, lists: Sequence[str]) -> Confirmation:
    """The confirmation message for ``email``'s pending subscriptions to ``lists`` (identifiers)."""
    if not lists:
        raise InvalidInput("no list to confirm")
    sub = get_subscriber(session, email)
    assert sub.id is not None
    mlists: list[MailingList] = [get_list(session, identifier) for identifier in lists]
    first = mlists[0]
    sender = next((m for m in mlists if m.from_email), None)
    url = link_for(settings, sub.id)
    titles = ", ".join(m.title or m.identifier for m in mlists)
    context = {
        "email": sub.email,
        "nom": sub.nom,
        "lists": titles,
        "url_confirm": url,
        "days": str(settings.confirm_link_days),
    }
    default_subject, default_text = DEFAULTS[language(sub.lang, first.lang)]
    try:
        subject = TextTemplate(first.confirm_subject or default_subject, "confirmation subject", VARIABLES)
        text = TextTemplate(first.confirm_text or default_text, "confirmation text", VARIABLES)
        message = build_notice(
            from_name=sender.from_name if sender else settings.from_name,
            from_email=sender.from_email if sender else settings.from_email,
            to_email=sub.email,
            to_name=sub.nom,
            subject=subject.render(context),
            text=text.render(context),
            domain=settings.list_domain,
            kind="confirm",
            reply_to=settings.reply_to,
        )
    except (TemplateError, HeaderError) as exc:
        raise MailshotError(f"list {first.identifier}: confirmation message not built: {exc}") from None
    return Confirmation(message, url)


def send_confirmation(
    engine: Engine, settings: Settings, email: str, lists: Sequence[str], *, transport: Transport | None = None
) -> Confirmation:
    """Build and send the confirmation message now (MailshotError when the relay refuses it)."""
    with session_scope(engine) as session:
        confirmation = build(session, settings, email, lists)
    hand_over(transport or get_transport(settings.transport, settings), confirmation.message, "confirmation message")
    return confirmation


def request_subscription(
    engine: Engine,
    settings: Settings,
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
    transport: Transport | None = None,
    send: bool = True,
) -> tuple[SubscribeOutcome, Confirmation | None]:
    """Subscribe (subscriptions.subscribe, committed) and, when some lists wait for the address's
    confirmation, send it the link: what the public form and the API's subscribe do.

    ``send=False`` leaves the sending to the caller (the form answers first and sends in the
    background, so its answer time does not tell whether the address was known)."""
    with session_scope(engine) as session:
        outcome = subscribe(
            session,
            email,
            lists,
            nom=nom,
            lang=lang,
            force=force,
            graceful=graceful,
            public=public,
            source=source,
            client=client,
        )
    if not (send and outcome.pending):
        return outcome, None
    return outcome, send_confirmation(engine, settings, outcome.subscriber.email, outcome.pending, transport=transport)


def read_link(settings: Settings, token: str) -> tuple[int, datetime] | None:
    """(subscriber id, issued at) of a confirmation link still valid; None when altered or too old."""
    key = settings.secret_key.get_secret_value().encode()
    found = read_timed_token(key, token, CONFIRM, settings.confirm_link_days * 86400, time.time())
    if found is None:
        return None
    subscriber_id, issued = found
    return subscriber_id, datetime.fromtimestamp(issued, UTC)


def follow(engine: Engine, settings: Settings, token: str, *, client: str | None = None) -> list[str] | None:
    """Follow a confirmation link: the lists confirmed ([] when already done); None for a bad link."""
    found = read_link(settings, token)
    if found is None:
        return None
    subscriber_id, issued_at = found
    with session_scope(engine) as session:
        return confirm(session, subscriber_id, issued_at, client=client)


def expire_requests(engine: Engine, settings: Settings, *, dry_run: bool = False) -> str:
    """Forget the requests whose confirmation link has expired (purge-stats, ``mailshot purge``); the
    summary line."""
    before = datetime.now(UTC) - timedelta(days=settings.confirm_link_days)
    with session_scope(engine) as session:
        done = expire_pending(session, before, dry_run=dry_run)
    verb = "would be forgotten" if dry_run else "forgotten"
    return (
        f"{done.subscriptions} unconfirmed subscription request(s) older than {settings.confirm_link_days} days "
        f"{verb}, {done.addresses} address(es) with nothing else removed"
    )
