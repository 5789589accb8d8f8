"""Sendings: create, status machine, counters, progress.  Recipients and their claims: claims.py.

Status machine (DESIGN §2)::

    draft ──schedule──> init ──start──> processing ──(no todo left)──> end ──> archive
      └──────────────send now──────────────┘ │  ^
                                       pause │  │ resume
                                             v  │
                                             pause
    draft/init/processing/pause ──cancel──> cancel (pending recipients -> kill) ──> archive

A new sending is a draft unless it is told when to start: nothing (the dispatcher included) starts
a draft; test messages work on it; the operator sends it (`mailshot send`, a send-mailshot run, the
pages) or schedules it.

Counters are derived from the recipient rows: :func:`recount` is the truth, and
every write that moves recipients between statuses moves the counters in the same
transaction (:func:`apply_counter_deltas`), so they never drift (the tests compare them with a recount after every scenario).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, update
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, col, select

from mailshot_core.audience.addresses import normalise_email
from mailshot_core.audience.lists import get_list
from mailshot_core.config import Settings
from mailshot_core.content.message import MAX_HEADER_TEXT, HeaderError, check_header_value
from mailshot_core.content.render import CompiledMailshot, TemplateError, html_to_text, inline_css
from mailshot_core.errors import InvalidInput, InvalidState, NotFound
from mailshot_core.sending import tracked_links
from mailshot_core.sending.pacing import Cadence
from mailshot_core.store.models import (
    Mailshot,
    MailshotStatus,
    Recipient,
    RecipientStatus,
    as_utc,
    max_length,
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
    S.KILL: ("current", "nb_kill"),  # never sent (cancelled, unsubscribed before its turn): not a failure
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
    "nb_kill",
)
# The counters as the operator and the data team read them (artifacts, pages): same order as COUNTERS.
COUNTER_LABELS: dict[str, str] = {
    "total": "recipients",
    "current": "done",
    "sent": "accepted",
    "failed": "failed",
    "nb_read": "opened",
    "nb_clic": "clicked",
    "nb_spam": "spam complaints",
    "nb_bounce": "bounced",
    "nb_unsub": "unsubscribed",
    "nb_unknown": "in doubt",
    "nb_kill": "cancelled (never sent)",
}


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
    send_now: bool = False  # start at once (``processing``) instead of a draft; ignored with start_at


def create(session: Session, settings: Settings, spec: NewMailshot, now: datetime | None = None) -> Mailshot:
    """Validate everything a sending needs, then store it: ``init`` if scheduled (``start_at``),
    ``processing`` with ``send_now``, else a ``draft``."""

    now = now or utcnow()
    if not spec.lists:
        raise InvalidInput("a sending needs at least one list (--list NAME)")
    lists = [get_list(session, name) for name in dict.fromkeys(spec.lists)]
    if not spec.subject.strip():
        raise InvalidInput("the subject is empty")
    if not spec.html.strip() and not (spec.text or "").strip():
        raise InvalidInput("the message is empty: give an HTML body (--html) or a text body (--text)")
    # The sender, as SPIP's bulkstart chooses it: the one given, else the first of the lists that has
    # one (a list's own sender), else MAILSHOT_FROM_*.
    list_sender = next((m for m in lists if m.from_email), None)
    default_name, default_email = (
        (list_sender.from_name, list_sender.from_email) if list_sender else (settings.from_name, settings.from_email)
    )
    try:
        subject = check_header_value("subject", spec.subject.strip(), MAX_HEADER_TEXT)
        from_name = check_header_value(
            "sender name",
            spec.from_name if spec.from_name is not None else default_name,
            max_length(Mailshot, "from_name"),
        )
    except HeaderError as exc:
        raise InvalidInput(str(exc)) from None
    from_email = normalise_email(spec.from_email) if spec.from_email else default_email
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
        start_at = as_utc(start_at)
    scheduled = start_at is not None and start_at > now
    if scheduled:
        status = MailshotStatus.INIT
    elif spec.send_now or start_at is not None:  # a start time already past: start now
        status = MailshotStatus.PROCESSING
    else:
        status = MailshotStatus.DRAFT
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
        track=spec.track if spec.track is not None else tracked_links.tracks(settings, transport),
        status=status,
        start_at=start_at if scheduled else (now if status == MailshotStatus.PROCESSING else None),
        created_at=now,
        updated_at=now,
    )
    session.add(mailshot)
    session.flush()
    if mailshot.track:
        tracked_links.links_for(session, mailshot)  # the link table is there before the first message
    return mailshot


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
    MailshotStatus.DRAFT: {MailshotStatus.INIT, MailshotStatus.PROCESSING, MailshotStatus.CANCEL},
    MailshotStatus.INIT: {MailshotStatus.DRAFT, MailshotStatus.PROCESSING, MailshotStatus.CANCEL, MailshotStatus.PAUSE},
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


def send_now(session: Session, mailshot_id: int, now: datetime | None = None) -> Mailshot:
    """The operator says send: a draft or a scheduled sending starts now (a paused one is resumed:
    ``resume``).  Idempotent on a sending already in progress."""
    mailshot = get(session, mailshot_id, lock=True)
    if mailshot.status == MailshotStatus.PROCESSING:
        return mailshot
    if mailshot.status not in (MailshotStatus.DRAFT, MailshotStatus.INIT):
        hint = f" (mailshot resume {mailshot_id})" if mailshot.status == MailshotStatus.PAUSE else ""
        raise InvalidState(f"sending {mailshot_id} is '{mailshot.status}': it cannot be sent now{hint}")
    mailshot.start_at = now or utcnow()
    set_status(session, mailshot, MailshotStatus.PROCESSING)
    return mailshot


def schedule(session: Session, mailshot_id: int, start_at: datetime, now: datetime | None = None) -> Mailshot:
    """A draft (or a scheduled sending) starts at ``start_at``; a time already past means now."""
    mailshot = get(session, mailshot_id, lock=True)
    if mailshot.status not in (MailshotStatus.DRAFT, MailshotStatus.INIT):
        raise InvalidState(
            f"sending {mailshot_id} is '{mailshot.status}': only a draft or a scheduled one can be scheduled"
        )
    when = as_utc(start_at)
    if when <= (now or utcnow()):
        return send_now(session, mailshot_id, now)
    mailshot.start_at = when
    set_status(session, mailshot, MailshotStatus.INIT)
    session.add(mailshot)
    return mailshot


def pause(session: Session, mailshot_id: int, reason: str = "paused by the operator") -> Mailshot:
    mailshot = get(session, mailshot_id)
    set_status(session, mailshot, MailshotStatus.PAUSE, reason)
    return mailshot


def pause_if_processing(session: Session, mailshot_id: int, reason: str) -> None:
    """Pause a sending that is sending, with ``reason``: what a stop from outside does (a Prefect control,
    a configuration error), never overwriting the operator's own pause, an end or a cancel."""
    mailshot = get(session, mailshot_id, lock=True)
    if mailshot.status == MailshotStatus.PROCESSING:
        set_status(session, mailshot, MailshotStatus.PAUSE, reason)


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


# --- progress ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """Where a sending stands, from the database (whatever process is sending it)."""

    status: str
    pending: int  # todo rows (due now or later)
    due: bool  # some todo row can be sent now
    next_due: datetime | None  # earliest retry time among todo rows not due yet
    in_flight: int  # claimed or sending by live workers
    materialising: bool = False  # recipients are still being added (a streamed materialisation)


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
        materialising=not mailshot.materialised,
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


def browse(
    session: Session, *, status: str | None = None, before: int | None = None, limit: int = 50
) -> list[Mailshot]:
    """Sendings newest first (by id, before ``before``: keyset pagination on the primary key), ``limit``+1
    rows so the caller knows whether another page follows."""
    query = select(Mailshot)
    if status is not None:
        query = query.where(Mailshot.status == status)
    if before is not None:
        query = query.where(col(Mailshot.id) < before)
    return list(session.exec(query.order_by(col(Mailshot.id).desc()).limit(limit + 1)).all())


def recipients(
    session: Session, mailshot_id: int, *, status: str | None = None, after: int = 0, limit: int = 100
) -> list[Recipient]:
    """A sending's recipient rows by id after ``after`` (``limit``+1 of them), of one status or all; on
    ``ix_recipient_claim`` (mailshot_id, status, ...) with a status, the mailshot's rows without."""
    get(session, mailshot_id)  # an unknown sending is NotFound, not an empty page
    query = select(Recipient).where(Recipient.mailshot_id == mailshot_id, col(Recipient.id) > after)
    if status is not None:
        query = query.where(Recipient.status == status)
    return list(session.exec(query.order_by(col(Recipient.id)).limit(limit + 1)).all())
