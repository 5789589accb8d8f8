"""Sendings: create, materialise recipients, status machine, counters, worker claims.

Status machine (DESIGN §2)::

    init ──start──> processing ──(no todo left)──> end ──> archive
                     │  ^
               pause │  │ resume
                     v  │
                     pause
    init/processing/pause ──cancel──> cancel (pending recipients -> kill) ──> archive

Counters are derived from the recipient rows: :func:`recount` is the truth, and
every write that moves recipients between statuses moves the counters in the same
transaction (:func:`apply_counter_deltas`), so they never drift (tests/test_counters.py).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, text, update
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, col, select

from mailshot_core.audience.subscribers import get_list, normalise_email
from mailshot_core.config import Settings
from mailshot_core.content.message import HeaderError, check_header_value
from mailshot_core.content.render import CompiledMailshot, TemplateError, html_to_text, inline_css
from mailshot_core.errors import InvalidInput, InvalidState, NotFound
from mailshot_core.sending.pacing import Cadence
from mailshot_core.store.models import (
    MailingList,
    Mailshot,
    MailshotStatus,
    Recipient,
    RecipientStatus,
    SendWorker,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    utcnow,
)
from mailshot_core.transports import AVAILABLE as TRANSPORTS

S = RecipientStatus

# Which counters a recipient in a given status contributes to.  `sent` counts messages the
# transport accepted; feedback statuses (read, clic, spam, bounce, unsub) come after an acceptance.
_ACCEPTED = {S.SENT, S.READ, S.CLIC, S.SPAM, S.BOUNCE, S.UNSUB}
_COUNTERS_OF: dict[str, tuple[str, ...]] = {
    S.TODO: (),
    S.CLAIMED: (),
    S.SENDING: (),
    S.SENT: ("current", "sent"),
    S.FAIL: ("current", "failed"),
    S.KILL: ("current", "failed"),
    S.UNKNOWN: ("current", "nb_unknown"),
    S.READ: ("current", "sent", "nb_read"),
    S.CLIC: ("current", "sent", "nb_read", "nb_clic"),
    S.SPAM: ("current", "sent", "nb_spam"),
    S.BOUNCE: ("current", "sent", "nb_bounce"),
    S.UNSUB: ("current", "sent", "nb_unsub"),
}
COUNTERS = (
    "total",
    "current",
    "sent",
    "failed",
    "nb_read",
    "nb_clic",
    "nb_spam",
    "nb_bounce",
    "nb_unsub",
    "nb_unknown",
)


def counter_deltas(moves: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Counter changes for recipients moving from one status to another."""
    delta: Counter[str] = Counter()
    for old, new in moves:
        for name in _COUNTERS_OF[old]:
            delta[name] -= 1
        for name in _COUNTERS_OF[new]:
            delta[name] += 1
    return {k: v for k, v in delta.items() if v}


def apply_counter_deltas(session: Session | Connection, mailshot_id: int, delta: Mapping[str, int]) -> None:
    if not delta:
        return
    values: dict[str, Any] = {name: getattr(Mailshot, name) + n for name, n in delta.items()}
    values["updated_at"] = utcnow()
    session.execute(update(Mailshot).where(col(Mailshot.id) == mailshot_id).values(**values))


def status_counts(session: Session, mailshot_id: int, email_contains: str | None = None) -> dict[str, int]:
    """Recipient rows per status (one GROUP BY on ix_recipient_claim), optionally of the addresses
    containing a text (the follow-up pages' search: a scan of the sending's rows, LIKE %text%)."""
    query = select(Recipient.status, func.count()).where(Recipient.mailshot_id == mailshot_id)
    if email_contains:
        query = query.where(col(Recipient.email).contains(email_contains, autoescape=True))
    return {status: int(n) for status, n in session.exec(query.group_by(col(Recipient.status))).all()}


def recount(session: Session, mailshot_id: int) -> dict[str, int]:
    """Counters computed from the recipient rows."""
    totals: Counter[str] = Counter()
    for status, n in status_counts(session, mailshot_id).items():
        totals["total"] += n
        for name in _COUNTERS_OF[status]:
            totals[name] += n
    return {name: totals[name] for name in COUNTERS}


def stored_counters(mailshot: Mailshot) -> dict[str, int]:
    return {name: getattr(mailshot, name) for name in COUNTERS}


# --- creation ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewMailshot:
    subject: str
    html: str
    lists: tuple[str, ...]
    text: str | None = None
    from_name: str | None = None
    from_email: str | None = None
    start_at: datetime | None = None
    transport: str | None = None
    rate_per_day: int | None = None
    rate_per_hour: int | None = None
    rate_per_minute: int | None = None
    track: bool | None = None  # our open pixel and click redirects; None: as MAILSHOT_TRACKING says


def create(session: Session, settings: Settings, spec: NewMailshot, now: datetime | None = None) -> Mailshot:
    """Validate everything a sending needs, then store it (``init`` if scheduled, else ``processing``)."""
    from mailshot_core.feedback import tracking  # it imports feedback.py, which imports this module

    now = now or utcnow()
    if not spec.lists:
        raise InvalidInput("a sending needs at least one list (--list NAME)")
    lists = [get_list(session, name) for name in dict.fromkeys(spec.lists)]
    if not spec.subject.strip():
        raise InvalidInput("the subject is empty")
    if not spec.html.strip() and not (spec.text or "").strip():
        raise InvalidInput("the message is empty: give an HTML body (--html) or a text body (--text)")
    try:
        subject = check_header_value("subject", spec.subject.strip())
        from_name = check_header_value(
            "sender name", spec.from_name if spec.from_name is not None else settings.from_name
        )
    except HeaderError as exc:
        raise InvalidInput(str(exc)) from None
    from_email = normalise_email(spec.from_email) if spec.from_email else settings.from_email
    transport = spec.transport or settings.transport
    if transport not in TRANSPORTS:
        raise InvalidInput(f"unknown transport {transport!r} (available: {', '.join(TRANSPORTS)})")
    for what, rate in (("day", spec.rate_per_day), ("hour", spec.rate_per_hour), ("minute", spec.rate_per_minute)):
        if rate is not None and rate <= 0:
            raise InvalidInput(f"--rate-per-{what} must be a positive number of messages, got {rate}")
    html = inline_css(spec.html) if spec.html.strip() else ""
    text_body = spec.text if spec.text and spec.text.strip() else html_to_text(html)
    try:
        CompiledMailshot(subject, html, text_body).check()
    except TemplateError as exc:
        raise InvalidInput(str(exc)) from None
    start_at = spec.start_at
    if start_at is not None:
        start_at = _to_utc(start_at)
    scheduled = start_at is not None and start_at > now
    mailshot = Mailshot(
        subject=subject,
        html=html,
        text=text_body,
        lists=",".join(m.identifier for m in lists),
        from_name=from_name,
        from_email=from_email,
        transport=transport,
        rate_per_day=spec.rate_per_day,
        rate_per_hour=spec.rate_per_hour,
        rate_per_minute=spec.rate_per_minute,
        track=spec.track if spec.track is not None else tracking.tracks(settings, transport),
        status=MailshotStatus.INIT if scheduled else MailshotStatus.PROCESSING,
        start_at=start_at if scheduled else now,
        created_at=now,
        updated_at=now,
    )
    session.add(mailshot)
    session.flush()
    if mailshot.track:
        tracking.links_for(session, mailshot)  # the link table is there before the first message
    return mailshot


def _to_utc(value: datetime) -> datetime:
    """Times without an offset are taken as UTC (documented in the CLI help)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def get(session: Session, mailshot_id: int, *, lock: bool = False) -> Mailshot:
    """The sending; ``lock``: row-locked until the transaction ends (PostgreSQL ``FOR UPDATE``; SQLite's
    transactions already hold the write lock) and read fresh, for decisions other runs must not race."""
    mailshot = session.get(Mailshot, mailshot_id, with_for_update=lock, populate_existing=lock)
    if mailshot is None:
        raise NotFound(f"no sending with id {mailshot_id}")
    return mailshot


def cadence(mailshot: Mailshot, settings: Settings) -> Cadence:
    """The sending's pace: its own rates where set, else the MAILSHOT_RATE_* defaults."""
    return Cadence(
        per_day=mailshot.rate_per_day or settings.rate_per_day,
        per_hour=mailshot.rate_per_hour or settings.rate_per_hour,
        per_minute=mailshot.rate_per_minute or settings.rate_per_minute,
    )


def list_identifiers(mailshot: Mailshot) -> list[str]:
    return [name for name in mailshot.lists.split(",") if name]


# --- status machine ---------------------------------------------------------------------------------

_TRANSITIONS: dict[str, set[str]] = {
    MailshotStatus.INIT: {MailshotStatus.PROCESSING, MailshotStatus.CANCEL, MailshotStatus.PAUSE},
    MailshotStatus.PROCESSING: {MailshotStatus.PAUSE, MailshotStatus.CANCEL, MailshotStatus.END},
    MailshotStatus.PAUSE: {MailshotStatus.PROCESSING, MailshotStatus.CANCEL},
    MailshotStatus.END: {MailshotStatus.ARCHIVE},
    MailshotStatus.CANCEL: {MailshotStatus.ARCHIVE},
    MailshotStatus.ARCHIVE: set(),
}


def set_status(session: Session, mailshot: Mailshot, new: MailshotStatus, reason: str | None = None) -> None:
    if mailshot.status == new:
        return
    if new not in _TRANSITIONS[mailshot.status]:
        raise InvalidState(f"sending {mailshot.id} is '{mailshot.status}': it cannot become '{new}'")
    now = utcnow()
    mailshot.status = new
    mailshot.status_reason = reason
    mailshot.updated_at = now
    if new == MailshotStatus.PROCESSING and mailshot.started_at is None:
        mailshot.started_at = now
    if new in (MailshotStatus.END, MailshotStatus.CANCEL):
        mailshot.ended_at = now
    session.add(mailshot)
    session.flush()


def pause(session: Session, mailshot_id: int, reason: str = "paused by the operator") -> Mailshot:
    mailshot = get(session, mailshot_id)
    set_status(session, mailshot, MailshotStatus.PAUSE, reason)
    return mailshot


def resume(session: Session, mailshot_id: int) -> Mailshot:
    mailshot = get(session, mailshot_id)
    if mailshot.status != MailshotStatus.PAUSE:
        raise InvalidState(f"sending {mailshot_id} is '{mailshot.status}', not paused")
    set_status(session, mailshot, MailshotStatus.PROCESSING)
    return mailshot


def cancel(session: Session, mailshot_id: int) -> Mailshot:
    """Cancel: every recipient not yet handed to the transport becomes ``kill``."""
    mailshot = get(session, mailshot_id)
    set_status(session, mailshot, MailshotStatus.CANCEL, "cancelled by the operator")
    moves = session.exec(
        select(Recipient.status, func.count())
        .where(Recipient.mailshot_id == mailshot_id, col(Recipient.status).in_([S.TODO, S.CLAIMED]))
        .group_by(col(Recipient.status))
    ).all()
    session.execute(
        update(Recipient)
        .where(col(Recipient.mailshot_id) == mailshot_id, col(Recipient.status).in_([S.TODO, S.CLAIMED]))
        .values(status=S.KILL, last_error="sending cancelled")
    )
    apply_counter_deltas(session, mailshot_id, counter_deltas((old, S.KILL) for old, n in moves for _ in range(n)))
    session.refresh(mailshot)
    return mailshot


# --- recipients -------------------------------------------------------------------------------------


def materialise(session: Session, mailshot: Mailshot) -> int:
    """Freeze the recipient list: one set-based INSERT .. SELECT, deduplicated across lists.

    Only subscribers whose overall status is valid and who hold a valid subscription to at least one
    of the sending's lists.  ``ON CONFLICT DO NOTHING`` on (mailshot_id, email) makes a re-run (after a
    crash during materialisation) add only what is missing.  Relies on subscription's primary key
    and ix_subscription_list_id; never loops over subscribers in Python.
    """
    assert mailshot.id is not None
    list_ids = [
        m.id
        for m in session.exec(select(MailingList).where(col(MailingList.identifier).in_(list_identifiers(mailshot))))
    ]
    dialect = session.get_bind().dialect.name
    conflict = "ON CONFLICT (mailshot_id, email) DO NOTHING"
    stmt = text(
        f"""
        INSERT INTO recipient (mailshot_id, email, subscriber_id, status, tries)
        SELECT :mailshot_id, s.email, s.id, 'todo', 0
        FROM subscriber s
        WHERE s.status = 'valid'
          AND EXISTS (
            SELECT 1 FROM subscription sub
            WHERE sub.subscriber_id = s.id AND sub.status = 'valid' AND sub.list_id IN :list_ids
          )
        ORDER BY s.id
        {conflict if dialect in ("sqlite", "postgresql") else ""}
        """
    ).bindparams(bindparam("list_ids", expanding=True))
    session.execute(stmt, {"mailshot_id": mailshot.id, "list_ids": list_ids})
    total = session.exec(select(func.count()).select_from(Recipient).where(Recipient.mailshot_id == mailshot.id)).one()
    # Only todo rows can have been added here: total and nothing else moves.
    mailshot.total = int(total)
    mailshot.materialised = True
    mailshot.updated_at = utcnow()
    session.add(mailshot)
    session.flush()
    return mailshot.total


@dataclass(frozen=True)
class ClaimedRecipient:
    id: int
    email: str
    tries: int
    throttled: int
    nom: str
    lang: str
    status: str
    listes: tuple[str, ...]
    subscriber_id: int


def claim(
    session: Session, mailshot: Mailshot, token: str, limit: int, now: datetime
) -> tuple[list[ClaimedRecipient], int]:
    """Reserve up to ``limit`` due recipients for this worker; returns (sendable, killed).

    Fewest tries first (never-tried addresses before retries: the original's retry-at-end rule),
    then by id.  On PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets several workers claim in parallel
    without waiting on each other; on SQLite the transaction holds the write lock from BEGIN
    IMMEDIATE (db.py), which makes the select-then-update atomic.  Uses ix_recipient_claim.

    Recipients whose subscriber left the sending's lists since materialisation are re-checked here
    (DESIGN §4.4) and become ``kill`` instead of being sent.
    """
    assert mailshot.id is not None
    due = (
        select(Recipient.id)
        .where(
            col(Recipient.mailshot_id) == mailshot.id,
            col(Recipient.status) == S.TODO,
            or_(col(Recipient.next_attempt_at).is_(None), col(Recipient.next_attempt_at) <= now),
        )
        .order_by(col(Recipient.tries), col(Recipient.id))
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    ids = list(session.exec(due).all())
    if not ids:
        return [], 0
    session.execute(
        update(Recipient).where(col(Recipient.id).in_(ids)).values(status=S.CLAIMED, claim_token=token, claimed_at=now)
    )
    rows = session.execute(
        sa_select(  # type: ignore[call-overload]
            Recipient.id,
            Recipient.email,
            Recipient.tries,
            Recipient.throttled,
            Subscriber.nom,
            Subscriber.lang,
            Subscriber.status,
            Subscriber.id,
        )
        .join(Subscriber, col(Subscriber.id) == Recipient.subscriber_id, isouter=True)
        .where(col(Recipient.id).in_(ids))
        .order_by(col(Recipient.tries), col(Recipient.id))
    ).all()
    names = list_identifiers(mailshot)
    memberships: dict[int, list[str]] = {}
    sub_ids = [r[7] for r in rows if r[7] is not None]
    if sub_ids:
        for sub_id, identifier in session.exec(
            select(Subscription.subscriber_id, MailingList.identifier)
            .join(MailingList, col(MailingList.id) == Subscription.list_id)
            .where(
                col(Subscription.subscriber_id).in_(sub_ids),
                col(Subscription.status) == SubscriptionStatus.VALID,
                col(MailingList.identifier).in_(names),
            )
        ).all():
            memberships.setdefault(sub_id, []).append(identifier)
    sendable: list[ClaimedRecipient] = []
    gone: list[int] = []
    for rid, email, tries, throttled, nom, lang, status, sub_id in rows:
        listes = memberships.get(sub_id, []) if sub_id is not None else []
        if status != SubscriberStatus.VALID or not listes:
            gone.append(rid)
            continue
        ordered = tuple(n for n in names if n in listes)
        sendable.append(ClaimedRecipient(rid, email, tries, throttled, nom or "", lang or "", status, ordered, sub_id))
    if gone:
        session.execute(
            update(Recipient)
            .where(col(Recipient.id).in_(gone))
            .values(status=S.KILL, claim_token=None, last_error="unsubscribed before sending")
        )
        apply_counter_deltas(session, mailshot.id, counter_deltas((S.CLAIMED, S.KILL) for _ in gone))
    return sendable, len(gone)


def release(session: Session, mailshot_id: int, token: str) -> int:
    """Give back this worker's claimed (not yet attempted) rows; they stay due, no try consumed."""
    result = session.execute(
        update(Recipient)
        .where(col(Recipient.claim_token) == token, col(Recipient.status) == S.CLAIMED)
        .values(status=S.TODO, claim_token=None, claimed_at=None)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


# --- workers and crash recovery ---------------------------------------------------------------------


def new_worker_token() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def register_worker(session: Session, mailshot_id: int, token: str, now: datetime) -> None:
    hostname, pid, _ = token.rsplit(":", 2)
    session.add(
        SendWorker(
            token=token, mailshot_id=mailshot_id, hostname=hostname, pid=int(pid), started_at=now, heartbeat_at=now
        )
    )
    session.flush()


def heartbeat(session: Session, token: str, now: datetime) -> None:
    session.execute(update(SendWorker).where(col(SendWorker.token) == token).values(heartbeat_at=now))


def unregister_worker(session: Session, mailshot_id: int, token: str) -> None:
    release(session, mailshot_id, token)
    worker = session.get(SendWorker, token)
    if worker is not None:
        session.delete(worker)
    session.flush()


def _is_dead(worker: SendWorker, now: datetime, lease: timedelta) -> bool:
    if worker.heartbeat_at < now - lease:
        return True
    if worker.hostname == socket.gethostname()[:40]:
        try:
            os.kill(worker.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def recover_dead_workers(session: Session, mailshot_id: int, now: datetime, lease: timedelta) -> tuple[int, int]:
    """Take back the claims of workers that died; returns (released, in_doubt).

    A dead worker's ``claimed`` rows were never attempted: back to ``todo``.  Its ``sending`` rows
    were handed to the transport and their fate is unknown (SMTP has no idempotency key): they
    become ``unknown``, are reported, and are not resent unless the operator asks
    (:func:`resend_unknown`).  A worker is dead when its heartbeat is older than the lease, or at
    once when it ran on this host and its process no longer exists.
    """
    released = in_doubt = 0
    workers = session.exec(select(SendWorker).where(SendWorker.mailshot_id == mailshot_id)).all()
    for worker in workers:
        if not _is_dead(worker, now, lease):
            continue
        released += int(
            session.execute(
                update(Recipient)
                .where(col(Recipient.claim_token) == worker.token, col(Recipient.status) == S.CLAIMED)
                .values(status=S.TODO, claim_token=None, claimed_at=None)
            ).rowcount  # type: ignore[attr-defined]
        )
        n = int(
            session.execute(
                update(Recipient)
                .where(col(Recipient.claim_token) == worker.token, col(Recipient.status) == S.SENDING)
                .values(
                    status=S.UNKNOWN, claim_token=None, last_error="in flight when its worker died: maybe delivered"
                )
            ).rowcount  # type: ignore[attr-defined]
        )
        apply_counter_deltas(session, mailshot_id, counter_deltas((S.SENDING, S.UNKNOWN) for _ in range(n)))
        in_doubt += n
        session.delete(worker)
    # Rows claimed by a token with no worker row at all (registration lost): same treatment.
    orphan = and_(
        col(Recipient.mailshot_id) == mailshot_id,
        col(Recipient.status).in_([S.CLAIMED, S.SENDING]),
        ~col(Recipient.claim_token).in_(select(SendWorker.token).where(SendWorker.mailshot_id == mailshot_id)),
    )
    orphans = session.exec(select(Recipient.status, func.count()).where(orphan).group_by(col(Recipient.status))).all()
    if orphans:
        session.execute(
            update(Recipient).where(orphan, col(Recipient.status) == S.CLAIMED).values(status=S.TODO, claim_token=None)
        )
        session.execute(
            update(Recipient)
            .where(orphan, col(Recipient.status) == S.SENDING)
            .values(status=S.UNKNOWN, claim_token=None, last_error="in flight when its worker died: maybe delivered")
        )
        for status, n in orphans:
            if status == S.SENDING:
                apply_counter_deltas(session, mailshot_id, counter_deltas((S.SENDING, S.UNKNOWN) for _ in range(n)))
                in_doubt += n
            else:
                released += n
    session.flush()
    return released, in_doubt


def resend_unknown(session: Session, mailshot_id: int) -> int:
    """Operator's choice: put the in-doubt recipients back in the queue (they may get it twice)."""
    mailshot = get(session, mailshot_id)
    n = int(
        session.execute(
            update(Recipient)
            .where(col(Recipient.mailshot_id) == mailshot_id, col(Recipient.status) == S.UNKNOWN)
            .values(
                status=S.TODO, claim_token=None, next_attempt_at=None, last_error="resent at the operator's request"
            )
        ).rowcount  # type: ignore[attr-defined]
    )
    apply_counter_deltas(session, mailshot_id, counter_deltas((S.UNKNOWN, S.TODO) for _ in range(n)))
    if n and mailshot.status == MailshotStatus.END:
        mailshot.status = MailshotStatus.PROCESSING
        mailshot.ended_at = None
        session.add(mailshot)
    session.flush()
    return n


def unknown_recipients(session: Session, mailshot_id: int) -> list[str]:
    return list(
        session.exec(
            select(Recipient.email)
            .where(Recipient.mailshot_id == mailshot_id, col(Recipient.status) == S.UNKNOWN)
            .order_by(col(Recipient.id))
        ).all()
    )


# --- progress ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """Where a sending stands, from the database (whatever process is sending it)."""

    status: str
    pending: int  # todo rows (due now or later)
    due: bool  # some todo row can be sent now
    next_due: datetime | None  # earliest retry time among todo rows not due yet
    in_flight: int  # claimed or sending by live workers


def progress(session: Session, mailshot_id: int, now: datetime) -> Progress:
    mailshot = get(session, mailshot_id)
    counts = dict(
        session.exec(
            select(Recipient.status, func.count())
            .where(Recipient.mailshot_id == mailshot_id, col(Recipient.status).in_([S.TODO, S.CLAIMED, S.SENDING]))
            .group_by(col(Recipient.status))
        ).all()
    )
    next_due = session.exec(
        select(func.min(Recipient.next_attempt_at)).where(
            col(Recipient.mailshot_id) == mailshot_id,
            col(Recipient.status) == S.TODO,
            col(Recipient.next_attempt_at) > now,
        )
    ).one()
    due = session.exec(
        select(Recipient.id)
        .where(
            col(Recipient.mailshot_id) == mailshot_id,
            col(Recipient.status) == S.TODO,
            or_(col(Recipient.next_attempt_at).is_(None), col(Recipient.next_attempt_at) <= now),
        )
        .limit(1)
    ).first()
    return Progress(
        status=mailshot.status,
        pending=counts.get(S.TODO, 0),
        due=due is not None,
        next_due=next_due,
        in_flight=counts.get(S.CLAIMED, 0) + counts.get(S.SENDING, 0),
    )


def finish(session: Session, mailshot_id: int) -> Mailshot:
    """Mark the sending ended and check the counters against a recount (repairing any drift)."""
    mailshot = get(session, mailshot_id)
    truth = recount(session, mailshot_id)
    if truth != stored_counters(mailshot):
        for name, value in truth.items():
            setattr(mailshot, name, value)
    if mailshot.status == MailshotStatus.PROCESSING:
        set_status(session, mailshot, MailshotStatus.END)
    session.add(mailshot)
    session.flush()
    return mailshot


def status_rows(engine: Engine, mailshot_id: int | None = None) -> list[Mailshot]:
    with Session(engine) as session:
        if mailshot_id is not None:
            return [get(session, mailshot_id)]
        return list(session.exec(select(Mailshot).order_by(col(Mailshot.id).desc())).all())
