"""Erasing an address (GDPR art. 17, the API's ``DELETE /subscribers/{email}``): the person goes, the
sendings' figures stay.

The subscriber, its subscriptions and its opt-in trail are deleted.  Its recipient rows, archived
outcomes and feedback events stay, so every counter still equals its recount, but under an address
that names nobody (``erased.<random>@erased.invalid``: RFC 2606's reserved TLD, so it can never be
sent to), with the address also removed from the error texts a relay wrote (a 550 often quotes it),
and the providers' raw events (which carry it in many fields) dropped, as are the API's stored answers
that name it (idempotent_request).
"""

from __future__ import annotations

import secrets

from sqlalchemy import delete, func, or_, update
from sqlmodel import Session, col

from mailshot_core.audience.subscribers import get_subscriber
from mailshot_core.store.models import (
    DeliveryOutcome,
    FeedbackEvent,
    IdempotentRequest,
    OptinEvent,
    Recipient,
    Subscriber,
    Subscription,
)


def erase(session: Session, email: str) -> str:
    """Erase ``email`` (NotFound when it is no subscriber); returns the address that replaces it in the
    sendings' records."""
    sub = get_subscriber(session, email)
    address = sub.email
    anonymous = f"erased.{secrets.token_hex(8)}@erased.invalid"
    session.execute(
        update(Recipient)
        .where(or_(col(Recipient.email) == address, col(Recipient.subscriber_id) == sub.id))
        .values(
            email=anonymous,
            subscriber_id=None,
            last_error=func.replace(col(Recipient.last_error), address, anonymous),
        )
    )
    session.execute(
        update(DeliveryOutcome)
        .where(or_(col(DeliveryOutcome.email) == address, col(DeliveryOutcome.subscriber_id) == sub.id))
        .values(email=anonymous, subscriber_id=None)
    )
    session.execute(
        update(FeedbackEvent)
        .where(col(FeedbackEvent.email) == address)
        .values(email=anonymous, raw=None, detail=func.replace(col(FeedbackEvent.detail), address, anonymous))
    )
    # The API's stored answers (replayed for an Idempotency-Key for 24 hours) that name the address go too.
    session.execute(delete(IdempotentRequest).where(col(IdempotentRequest.body).contains(address, autoescape=True)))
    session.execute(delete(OptinEvent).where(col(OptinEvent.subscriber_id) == sub.id))
    session.execute(delete(Subscription).where(col(Subscription.subscriber_id) == sub.id))
    session.execute(delete(Subscriber).where(col(Subscriber.id) == sub.id))
    session.flush()
    return anonymous
