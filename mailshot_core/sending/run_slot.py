"""Which run serves a sending: ``mailshot.flow_run_id`` as a slot taken by compare-and-set.

Whoever starts a Prefect run for a sending (the dispatcher's tick, create-and-send, control-mailshot,
`mailshot create`) first *reserves* the slot: one UPDATE that writes a placeholder only if the column
still holds the value it read.  Two callers that read the same value cannot both succeed (the second
UPDATE matches no row), so two concurrent dispatcher ticks never both start a run for one sending;
the database does what the dispatcher's deployment concurrency limit did, without its lease (a tick
left in Submitting by a stopping server held that slot for 300 s and every later tick was cancelled).

Then the run is created and the placeholder replaced by its id (:func:`settle`), again by
compare-and-set (a run that already started may have written its own id: it is kept).  If creating
the run fails, :func:`release` puts the old value back.  A placeholder names the time it was
written: while younger than :data:`PLACEHOLDER_TTL` it counts as a run being created (alive); older,
it is a crashed caller's leftover and the next tick takes the slot over.

Only the flows talk to Prefect; this module decides from the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import Session, col, select

from mailshot_core.store.models import Mailshot, MailshotStatus, utcnow

PLACEHOLDER = "pending:"
# Creating a deployment run takes well under a second; a busy SQLite-backed Prefect server answers
# 503 for a while (scripts/schedule_check.py retries for ~5 s).  Two minutes covers both, and is far
# shorter than the dispatcher's 10-minute tick, so a crashed tick's slot is free for the next one.
PLACEHOLDER_TTL = timedelta(minutes=2)


def placeholder(now: datetime) -> str:
    return f"{PLACEHOLDER}{now.isoformat()}"


def placeholder_is_fresh(value: str, now: datetime) -> bool | None:
    """True/False for a placeholder younger/older than the TTL; None when ``value`` is no placeholder."""
    if not value.startswith(PLACEHOLDER):
        return None
    try:
        written = datetime.fromisoformat(value[len(PLACEHOLDER) :])
    except ValueError:
        return False  # unreadable: nobody can be creating a run under it
    return now - written < PLACEHOLDER_TTL


def _swap(session: Session, mailshot_id: int, seen: str | None, new: str | None) -> bool:
    """``flow_run_id = new`` only if it still is ``seen``; True if this call changed it."""
    current = col(Mailshot.flow_run_id)
    result = session.execute(
        update(Mailshot)
        .where(col(Mailshot.id) == mailshot_id, current.is_(None) if seen is None else current == seen)
        .values(flow_run_id=new, updated_at=utcnow())
    )
    return int(result.rowcount) == 1  # type: ignore[attr-defined]


def reserve(session: Session, mailshot_id: int, seen: str | None, now: datetime | None = None) -> str | None:
    """Take the sending's run slot if it still holds ``seen``: returns the placeholder written, or None
    when another caller changed it first (it is starting a run: do nothing)."""
    token = placeholder(now or utcnow())
    return token if _swap(session, mailshot_id, seen, token) else None


def settle(session: Session, mailshot_id: int, token: str, run_id: str) -> bool:
    """Replace our placeholder by the run's id (unless the run already recorded itself)."""
    return _swap(session, mailshot_id, token, run_id)


def release(session: Session, mailshot_id: int, token: str, previous: str | None) -> None:
    """No run was created: give the slot back as it was."""
    _swap(session, mailshot_id, token, previous)


def current_run(session: Session, mailshot_id: int) -> str | None:
    return session.exec(select(Mailshot.flow_run_id).where(col(Mailshot.id) == mailshot_id)).one_or_none()


@dataclass(frozen=True)
class Upcoming:
    id: int
    start_at: datetime
    flow_run_id: str | None


def upcoming(session: Session, now: datetime) -> list[Upcoming]:
    """Scheduled sendings not due yet: each should have a run waiting for its start time."""
    rows = session.exec(
        select(Mailshot.id, Mailshot.start_at, Mailshot.flow_run_id)
        .where(col(Mailshot.status) == MailshotStatus.INIT, col(Mailshot.start_at) > now)
        .order_by(col(Mailshot.start_at), col(Mailshot.id))
    ).all()
    return [Upcoming(mid, start_at, run) for mid, start_at, run in rows if mid is not None and start_at is not None]
