"""What dispatch-mailshots does every minute: the "cron" of the original (§2.5), without its defects.

Each tick:

1. **expire**: an ``init`` sending whose start time is more than ``MAILSHOT_START_EXPIRY`` in the
   past is cancelled with that reason (a newsletter announcing a 9:00 event must not go out at 17:00
   because the scheduler was down all day);
2. **candidates**: every due ``init`` sending and every ``processing`` one.  The flow starts a
   ``send-mailshot`` run for each candidate whose recorded flow run (``mailshot.flow_run_id``) is
   not alive in Prefect, and records the new run's id at once so the next tick sees it as alive.

A duplicate run is harmless (the claims in the database guarantee that no recipient gets the
mail twice, DESIGN §4.1); the recorded id only avoids wasting a run.  Only the flow talks to
Prefect: this module decides from the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, update
from sqlmodel import Session, col, select

from mailshot_core.duration import Duration
from mailshot_core.sending import sendings
from mailshot_core.store.models import Mailshot, MailshotStatus, utcnow


@dataclass(frozen=True)
class Candidate:
    id: int
    status: str
    flow_run_id: str | None
    subject: str


def expire_late(session: Session, expiry: Duration, now: datetime) -> list[int]:
    """Cancel the scheduled sendings more than ``expiry`` late; returns their ids."""
    limit = expiry.before(now)
    late = session.exec(
        select(Mailshot).where(
            col(Mailshot.status) == MailshotStatus.INIT,
            col(Mailshot.start_at).is_not(None),
            col(Mailshot.start_at) < limit,
        )
    ).all()
    expired = []
    for mailshot in late:
        assert mailshot.id is not None and mailshot.start_at is not None
        sendings.cancel(session, mailshot.id)
        mailshot.status_reason = (
            f"expired: scheduled for {mailshot.start_at:%Y-%m-%d %H:%M} UTC and still not started "
            f"{expiry} later (MAILSHOT_START_EXPIRY)"
        )
        session.add(mailshot)
        expired.append(mailshot.id)
    session.flush()
    return expired


def candidates(session: Session, now: datetime) -> list[Candidate]:
    """Due scheduled sendings and sendings in progress, oldest first."""
    rows = session.exec(
        select(Mailshot)
        .where(
            or_(
                col(Mailshot.status) == MailshotStatus.PROCESSING,
                and_(
                    col(Mailshot.status) == MailshotStatus.INIT,
                    or_(col(Mailshot.start_at).is_(None), col(Mailshot.start_at) <= now),
                ),
            )
        )
        .order_by(col(Mailshot.id))
    ).all()
    return [Candidate(m.id, m.status, m.flow_run_id, m.subject) for m in rows if m.id is not None]


def record_run(session: Session, mailshot_id: int, flow_run_id: str) -> None:
    session.execute(
        update(Mailshot).where(col(Mailshot.id) == mailshot_id).values(flow_run_id=flow_run_id, updated_at=utcnow())
    )
