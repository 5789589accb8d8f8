"""Archive old sendings: recipient rows deleted, counters kept exactly (original §6, DESIGN §2).

A sending is eligible when it is ``end`` or ``cancel``, ended before the cutoff (now minus
``MAILSHOT_PURGE_AFTER``, default 12 months), and is not the most recent finished sending (the
original always keeps that one, so an operator never sees an empty history).  Archiving one sending
is one transaction:

1. the counters are checked against a recount of the rows (and repaired if they drifted: the rows
   are the truth until this moment, and never again after it);
2. each address's outcome (status, tries, last attempt) goes to ``delivery_outcome`` with one
   ``INSERT .. SELECT``: the MAX_FAIL auto-unsubscribe rule needs it once the rows are gone;
3. the recipient rows (and the sending's stale worker registrations) are deleted;
4. the status becomes ``archive`` with a reason saying what was removed.

Users of the original complained that its purge never seemed to run: it archived at most 2
sendings per run of SPIP's optimiser, only when the option was on.  Here every eligible sending is
archived in one run, and the report says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, func, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailshot_core.duration import Duration
from mailshot_core.sending import sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import DeliveryOutcome, Mailshot, MailshotStatus, Recipient, SendWorker, utcnow

# Outcomes kept per address.  The widest window of the original's rule is the soft-bounce one:
# 2 x MAX_FAIL + tolerance 5 = 11 rows (original §3.2); older outcomes can never be in a window.
OUTCOMES_KEPT = 12
_FINISHED = (MailshotStatus.END, MailshotStatus.CANCEL)


@dataclass(frozen=True)
class ArchivedSending:
    id: int
    subject: str
    status: str  # before archiving: end or cancel
    ended_at: datetime | None
    recipients: int  # rows deleted (or that would be, in a dry run)
    counters: dict[str, int]


@dataclass
class PurgeReport:
    cutoff: datetime
    dry_run: bool
    kept_latest: int | None  # the most recent finished sending, never archived
    archived: list[ArchivedSending] = field(default_factory=list)
    repaired: list[int] = field(default_factory=list)  # sendings whose counters had drifted from the rows

    def summary(self) -> str:
        verb = "would archive" if self.dry_run else "archived"
        rows = sum(a.recipients for a in self.archived)
        ids = ", ".join(str(a.id) for a in self.archived) or "none"
        return (
            f"purge: {verb} {len(self.archived)} sending(s) ended before {self.cutoff:%Y-%m-%d %H:%M} UTC "
            f"({rows} recipient rows): {ids}"
        )


def latest_finished(session: Session) -> int | None:
    """The most recent ended or cancelled sending (by end date, then id): the one purge never archives.

    Archived ones do not count (as in the original): an imported archive newer than every real
    sending must not let purge take the detail of the latest real one.
    """
    ended = func.coalesce(Mailshot.ended_at, Mailshot.updated_at)
    return session.exec(
        select(Mailshot.id)
        .where(col(Mailshot.status).in_(_FINISHED))
        .order_by(ended.desc(), col(Mailshot.id).desc())
        .limit(1)
    ).first()


def eligible(session: Session, cutoff: datetime) -> tuple[list[Mailshot], int | None]:
    """Finished sendings ended before ``cutoff``, oldest first, without the most recent one."""
    keep = latest_finished(session)
    ended = func.coalesce(Mailshot.ended_at, Mailshot.updated_at)
    query = select(Mailshot).where(col(Mailshot.status).in_(_FINISHED), ended < cutoff)
    if keep is not None:
        query = query.where(col(Mailshot.id) != keep)
    candidates = session.exec(query.order_by(ended, col(Mailshot.id))).all()
    return list(candidates), keep


def _row_count(session: Session, mailshot_id: int) -> int:
    return int(
        session.exec(select(func.count()).select_from(Recipient).where(Recipient.mailshot_id == mailshot_id)).one()
    )


def archive(session: Session, mailshot: Mailshot, now: datetime) -> tuple[ArchivedSending, bool]:
    """Archive one finished sending in the caller's transaction; returns (what, counters repaired)."""
    assert mailshot.id is not None
    # Locked and read again (PostgreSQL): two archive requests at once (a double click on the page, the
    # daily purge) must not both copy the outcomes; the second sees `archive` and is refused.
    session.refresh(mailshot, with_for_update=True)
    if mailshot.status not in _FINISHED:
        from mailshot_core.errors import InvalidState

        raise InvalidState(
            f"sending {mailshot.id} is '{mailshot.status}': only ended or cancelled sendings are archived"
        )
    status = mailshot.status
    rows = _row_count(session, mailshot.id)
    truth = sendings.recount(session, mailshot.id)
    # Without rows (never materialised) the stored counters are all there is: nothing to repair from.
    repaired = rows > 0 and truth != sendings.stored_counters(mailshot)
    if repaired:
        for name, value in truth.items():
            setattr(mailshot, name, value)
    # One INSERT .. SELECT (uses ix_recipient_claim on mailshot_id), never a Python loop over rows.
    # Rows still todo never went out: no outcome (claimed/sending cannot remain in a finished sending).
    session.execute(
        text(
            "INSERT INTO delivery_outcome (email, mailshot_id, subscriber_id, status, tries, at) "
            "SELECT email, mailshot_id, subscriber_id, status, tries, COALESCE(sent_at, last_attempt_at) "
            "FROM recipient WHERE mailshot_id = :mailshot_id AND status NOT IN ('todo', 'claimed', 'sending')"
        ),
        {"mailshot_id": mailshot.id},
    )
    session.execute(delete(Recipient).where(col(Recipient.mailshot_id) == mailshot.id))
    session.execute(delete(SendWorker).where(col(SendWorker.mailshot_id) == mailshot.id))
    done = ArchivedSending(
        mailshot.id, mailshot.subject, status, mailshot.ended_at, rows, sendings.stored_counters(mailshot)
    )
    sendings.set_status(
        session,
        mailshot,
        MailshotStatus.ARCHIVE,
        f"archived {now:%Y-%m-%d}: {rows} recipient rows removed, counters kept (was '{status}')",
    )
    return done, repaired


def prune_outcomes(session: Session, keep: int = OUTCOMES_KEPT) -> int:
    """Keep only the ``keep`` most recent archived outcomes of each address (by sending id)."""
    result = session.execute(
        text(
            """
            DELETE FROM delivery_outcome
            WHERE (email, mailshot_id) IN (
                SELECT email, mailshot_id FROM (
                    SELECT email, mailshot_id,
                           ROW_NUMBER() OVER (PARTITION BY email ORDER BY mailshot_id DESC) AS rn
                    FROM delivery_outcome
                ) ranked
                WHERE rn > :keep
            )
            """
        ),
        {"keep": keep},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def purge(engine: Engine, older_than: Duration, *, dry_run: bool = False, now: datetime | None = None) -> PurgeReport:
    """Archive every eligible sending, one transaction each (a long purge never holds one big lock)."""
    now = now or utcnow()
    cutoff = older_than.before(now)
    with session_scope(engine) as session:
        candidates, keep = eligible(session, cutoff)
        report = PurgeReport(cutoff=cutoff, dry_run=dry_run, kept_latest=keep)
        if dry_run:
            for m in candidates:
                assert m.id is not None
                report.archived.append(
                    ArchivedSending(
                        m.id, m.subject, m.status, m.ended_at, _row_count(session, m.id), sendings.stored_counters(m)
                    )
                )
            return report
        ids = [m.id for m in candidates if m.id is not None]
    for mailshot_id in ids:
        with session_scope(engine) as session:
            mailshot = sendings.get(session, mailshot_id)
            if mailshot.status not in _FINISHED:  # changed since the selection (resend-unknown ...)
                continue
            done, repaired = archive(session, mailshot, now)
            report.archived.append(done)
            if repaired:
                report.repaired.append(mailshot_id)
    if ids:
        with session_scope(engine) as session:
            prune_outcomes(session)
    return report


def outcomes(session: Session, email: str) -> list[DeliveryOutcome]:
    """The archived outcomes of an address, most recent sending first."""
    return list(
        session.exec(
            select(DeliveryOutcome)
            .where(DeliveryOutcome.email == email)
            .order_by(col(DeliveryOutcome.mailshot_id).desc())
        ).all()
    )
