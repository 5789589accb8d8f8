"""Automatic unsubscription of dead addresses (MAILSHOT_MAX_FAIL) and the fail-ratio circuit breaker.

**The MAX_FAIL rule** is the original plugin's (reference/original-mailshot.md §3.2) with its
defaults made exact: an address leaves every list when its last ``max_fail`` settled sendings all
ended in failure or bounce, *each of those sendings having succeeded for at least one other
recipient*.  A sending that failed for everyone (the relay or the account was blocked) proves
nothing about the address, so such a sending among the last ``max_fail`` keeps the address (as in the
original, where it is walked over without counting).  A failure caused by *us* (5.7.x policy,
content, size: ``reject``) never counts either.  The reason names the sendings and the feedback
events that prove it; it is stored with the subscriber and shown by ``mailshot subscribers show``.

It is checked where failures become known: when feedback events move recipients to fail/bounce
(feedback.apply_pending) and when a sending ends (its SMTP-time failures, flows/send_mailshot.py).

**The circuit breaker** (original §3.3) pauses a sending whose failure ratio exceeds
``MAILSHOT_MAX_FAIL_RATIO`` after at least :data:`BREAKER_MIN_ATTEMPTS` attempts *by the current run*:
when most addresses fail at once, the relay or the sender's reputation is broken, not the addresses,
and going on would only burn the list.  Counting from the run's start lets an operator resume after
fixing the cause without the old failures tripping the breaker again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlmodel import Session

from mailshot_core.audience import subscribers
from mailshot_core.errors import NotFound
from mailshot_core.feedback.effects import Effect, classify
from mailshot_core.sending import sendings
from mailshot_core.store.models import (
    DeliveryOutcome,
    FeedbackEvent,
    Mailshot,
    MailshotStatus,
    Recipient,
    RecipientStatus,
    Subscriber,
    SubscriberStatus,
)

log = logging.getLogger("mailshot.fail_rule")
S = RecipientStatus
_r = Recipient.__table__  # type: ignore[attr-defined]
_e = FeedbackEvent.__table__  # type: ignore[attr-defined]
_o = DeliveryOutcome.__table__  # type: ignore[attr-defined]
_m = Mailshot.__table__  # type: ignore[attr-defined]
FAILED = (S.FAIL, S.BOUNCE)
# A sending "succeeded for someone" when one of its recipients got the message.
DELIVERED = (S.SENT, S.READ, S.CLIC, S.SPAM, S.UNSUB)
# Rows that say something about the address: not waiting, not in flight, not cancelled.
SETTLED = (*FAILED, *DELIVERED, S.UNKNOWN)
SOURCE = "max-fail"
BREAKER_MIN_ATTEMPTS = 100


@dataclass(frozen=True)
class Evidence:
    mailshot_id: int
    status: str
    why: str  # the failure as recorded: event kinds and details, or the last SMTP error
    event_ids: tuple[int, ...]


def _effects(session: Session, mailshot_id: int, email: str) -> list[tuple[int, Effect, str]]:
    rows = session.execute(
        select(_e.c.id, _e.c.source, _e.c.kind, _e.c.raw, _e.c.detail)
        .where(_e.c.mailshot_id == mailshot_id, _e.c.email == email)
        .order_by(_e.c.id)
    ).all()
    found: list[tuple[int, Effect, str]] = []
    for r in rows:
        effect = classify(r.source, r.kind, r.raw)
        if effect in (Effect.HARD_BOUNCE, Effect.SOFT_BOUNCE, Effect.REJECT):
            found.append((int(r.id), effect, f"{r.source} {r.kind}: {r.detail or ''}".strip()))
    return found


def _succeeded_for_others(session: Session, mailshot_id: int, email: str, archived: bool) -> bool:
    if archived:  # its recipient rows are gone (purge.py); its kept counter says whether anyone got it
        sent = session.execute(select(_m.c.sent).where(_m.c.id == mailshot_id)).scalar()
        return bool(sent)
    found = session.execute(
        select(_r.c.id).where(_r.c.mailshot_id == mailshot_id, _r.c.email != email, _r.c.status.in_(DELIVERED)).limit(1)
    ).first()
    return found is not None


def _last_outcomes(session: Session, email: str, count: int) -> list[Any]:
    """The address's last ``count`` settled outcomes, from live recipient rows and from the outcomes
    purge.py keeps of archived sendings (``delivery_outcome``), most recent sending first."""
    both = subscribers.outcomes_of(email)
    return list(
        session.execute(
            select(both).where(both.c.status.in_(SETTLED)).order_by(both.c.mailshot_id.desc()).limit(count)
        ).all()
    )


def evidence(session: Session, email: str, max_fail: int) -> list[Evidence] | None:
    """The proof that ``email`` must be unsubscribed, or None when the rule does not name it."""
    rows = _last_outcomes(session, email, max_fail)
    if len(rows) < max_fail:
        return None
    proof = []
    for r in rows:
        if r.status not in FAILED or not _succeeded_for_others(session, r.mailshot_id, email, bool(r.archived)):
            return None
        effects = _effects(session, r.mailshot_id, email)
        if effects and all(effect is Effect.REJECT for _, effect, _ in effects):
            return None  # refused for our own reasons (policy, content): not the address's fault
        if not effects and r.tries == 0:
            return None  # failed after relay throttling only (sending.MAX_THROTTLED): our pace, not the address
        counted = [(i, text) for i, effect, text in effects if effect is not Effect.REJECT]
        why = "; ".join(text for _, text in counted) or f"{r.tries} tries, last error: {r.last_error or 'none'}"
        proof.append(Evidence(r.mailshot_id, r.status, why[:300], tuple(i for i, _ in counted)))
    return proof


def _cite(ids: tuple[int, ...]) -> str:
    if not ids:
        return ""
    return f"; event{'s' if len(ids) > 1 else ''} " + ", ".join(map(str, ids))


def describe(proof: list[Evidence], max_fail: int) -> str:
    parts = [f"sending {p.mailshot_id} {p.status} ({p.why}{_cite(p.event_ids)})" for p in proof]
    return f"MAILSHOT_MAX_FAIL={max_fail}: the last {len(proof)} sendings failed, each delivered to others: " + (
        " | ".join(parts)
    )


def check_addresses(session: Session, emails: Iterable[str], max_fail: int) -> int:
    """Apply the rule to these addresses (still subscribed ones); returns how many were unsubscribed."""
    wanted = sorted(set(emails))
    if not wanted:
        return 0
    valid = session.execute(
        select(Subscriber.email).where(  # type: ignore[call-overload]
            Subscriber.email.in_(wanted),  # type: ignore[attr-defined]
            Subscriber.status == SubscriberStatus.VALID,
        )
    ).scalars()
    done = 0
    for email in list(valid):
        proof = evidence(session, email, max_fail)
        if proof is None:
            continue
        try:
            subscribers.unsubscribe(
                session,
                email,
                None,
                reason=describe(proof, max_fail),
                source=SOURCE,
                mailshot_id=proof[0].mailshot_id,
            )
        except NotFound:
            continue
        log.info("%s unsubscribed: %s", email, describe(proof, max_fail))
        done += 1
    return done


def check_sending(session: Session, mailshot_id: int, max_fail: int) -> int:
    """The rule for every address that failed or bounced in one sending (called when it ends)."""
    emails = session.execute(select(_r.c.email).where(_r.c.mailshot_id == mailshot_id, _r.c.status.in_(FAILED)))
    return check_addresses(session, emails.scalars(), max_fail)


# --- circuit breaker ----------------------------------------------------------------------------------


def breaker(session: Session, mailshot_id: int, since: datetime, max_ratio: int) -> str | None:
    """Pause the sending when more than ``max_ratio`` % of this run's attempts failed; returns why.

    Failed: a final failure or bounce, or waiting for a retry after a temporary one.  One aggregate
    over the attempts since ``since`` (ix_recipient_claim narrows to the sending).
    """
    failing = or_(_r.c.status.in_(FAILED), and_(_r.c.status == S.TODO, _r.c.tries > 0))
    attempts, failed = session.execute(
        select(func.count(), func.coalesce(func.sum(case((failing, 1), else_=0)), 0)).where(
            _r.c.mailshot_id == mailshot_id, _r.c.last_attempt_at >= since
        )
    ).one()
    if attempts < BREAKER_MIN_ATTEMPTS or failed * 100 <= max_ratio * attempts:
        return None
    mailshot: Mailshot = sendings.get(session, mailshot_id)
    if mailshot.status != MailshotStatus.PROCESSING:
        return None
    reason = (
        f"paused by the circuit breaker: {failed} of the {attempts} attempts of this run failed "
        f"({100 * failed // attempts}% > MAILSHOT_MAX_FAIL_RATIO={max_ratio}%). When most addresses fail at "
        "once the relay, the account or the sender's reputation is broken, not the addresses: check the "
        "last errors (mailshot status, the relay's log), then `mailshot resume "
        f"{mailshot_id}` and send again"
    )
    sendings.set_status(session, mailshot, MailshotStatus.PAUSE, reason)
    log.error("sending %s %s", mailshot_id, reason)
    return reason
