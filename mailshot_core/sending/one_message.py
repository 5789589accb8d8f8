"""One personalised message to one address, outside the sending's queue: test messages, and the API's
one-off copies of a sending.

No recipient row changes; variables come from the subscriber when the address is one.
"""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from mailshot_core.audience.addresses import normalise_email
from mailshot_core.audience.subscribers import current_lists
from mailshot_core.config import Settings
from mailshot_core.content.message import HeaderError, OutgoingMessage
from mailshot_core.content.render import TemplateError
from mailshot_core.errors import InvalidState, MailshotError
from mailshot_core.sending import sendings
from mailshot_core.sending.context import context_for
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import Recipient, Subscriber
from mailshot_core.transports import get_transport
from mailshot_core.transports.base import ConfigurationError, PermanentError, TemporaryError, Transport


def send_test(
    engine: Engine, settings: Settings, mailshot_id: int, email: str, *, transport: Transport | None = None
) -> OutgoingMessage:
    """One personalised message to any address, subject prefixed ``[TEST] ``; no recipient row changes."""
    return send_one(engine, settings, mailshot_id, email, test=True, transport=transport)


def send_one(
    engine: Engine,
    settings: Settings,
    mailshot_id: int,
    email: str,
    *,
    test: bool,
    transport: Transport | None = None,
) -> OutgoingMessage:
    """One personalised message of a sending to any address (SPIP's ``newsletter/send``), a test (subject
    prefixed ``[TEST] ``) or not (a transactional copy, as its recipients get it); no recipient row changes.

    Variables come from the subscriber when the address is one (its lists among the sending's),
    otherwise from the address alone.
    """
    address = normalise_email(email)
    ctx = context_for(engine, settings, mailshot_id)
    with session_scope(engine) as session:
        mailshot = sendings.get(session, mailshot_id)
        names = sendings.list_identifiers(mailshot)
        sub = session.exec(select(Subscriber).where(Subscriber.email == address)).first()
        listes: tuple[str, ...] = tuple(names)
        nom = lang = ""
        status = "valid"
        if sub is not None:
            nom, lang, status = sub.nom, sub.lang, sub.status
            assert sub.id is not None
            mine = current_lists(session, sub.id)
            listes = tuple(n for n in names if n in mine) or listes
        row = session.exec(
            select(Recipient.id).where(Recipient.mailshot_id == mailshot_id, col(Recipient.email) == address)
        ).first()
        transport = transport or get_transport(mailshot.transport, settings)
    # Recipient 0: tracking links that record nothing (a test message is no recipient's).
    who = ctx.personalise(0, sub.id if sub is not None else None, address, nom, listes, lang, status)
    try:
        msg = ctx.message_for(row or 0, address, who, test=test)
    except (TemplateError, HeaderError) as exc:
        raise MailshotError(str(exc)) from None

    hand_over(transport, msg, "test message" if test else "message")
    return msg


def hand_over(transport: Transport, msg: OutgoingMessage, what: str) -> None:
    """Send one message on a connection of its own; MailshotError saying why when it is refused."""

    async def _go() -> None:
        conn = await transport.connect()
        try:
            await conn.send(msg)
        finally:
            await conn.close()

    try:
        asyncio.run(_go())
    except ConfigurationError as exc:
        # Nothing was tried: the site's settings lack what the transport needs (a missing API key),
        # which the operator fixes; not a refusal by the relay or the provider.
        raise InvalidState(f"{what} to {msg.envelope_to} not sent: {exc}") from None
    except (TemporaryError, PermanentError) as exc:
        raise MailshotError(f"{what} to {msg.envelope_to} not sent: {exc}") from None
