"""Subscribers and subscriptions: CSV import, unsubscription, history (lists: lists.py).

Addresses are validated and normalised with email-validator (no DNS look-up: an
import of a million rows must not depend on the network) and lower-cased, so one
person is one row whatever the case they typed.  Imports are set-based (chunks of
1,000 rows, ``INSERT .. ON CONFLICT DO NOTHING``) and idempotent: re-importing the
same file changes nothing, and an import never re-subscribes someone who left.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import String, and_, func, literal, union_all, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql import Subquery
from sqlmodel import Session, col, select

from mailshot_core.audience.addresses import check_lang, check_name, normalise_email
from mailshot_core.audience.lists import get_list
from mailshot_core.errors import InvalidInput, NotFound
from mailshot_core.store.models import (
    DeliveryOutcome,
    FeedbackEvent,
    MailingList,
    Mailshot,
    OptinEvent,
    Recipient,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    max_length,
    utcnow,
)

IMPORT_CHUNK = 1000
_SOURCE_LENGTH = max_length(OptinEvent, "source")
_CLIENT_LENGTH = max_length(OptinEvent, "client")
_SUBSCRIBERS = Subscriber.__table__  # type: ignore[attr-defined]
_SUBSCRIPTIONS = Subscription.__table__  # type: ignore[attr-defined]
_RECIPIENTS = Recipient.__table__  # type: ignore[attr-defined]
_OUTCOMES = DeliveryOutcome.__table__  # type: ignore[attr-defined]
_MAILSHOTS = Mailshot.__table__  # type: ignore[attr-defined]


def insert_ignore(session: Session, table: Any) -> Any:
    """``INSERT .. ON CONFLICT DO NOTHING`` for the session's dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"database {dialect!r} is not supported (use SQLite or PostgreSQL)")


# --- subscribers ------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    rows: int = 0
    new_subscribers: int = 0
    new_subscriptions: int = 0
    already_subscribed: int = 0
    kept_unsubscribed: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Row:
    line: int
    email: str
    nom: str
    lang: str


def _row(line: int, email: str, nom: str, lang: str) -> _Row | tuple[int, str]:
    """One row checked like every address (normalised, name and language on one line), or (line, why not)."""
    try:
        return _Row(line, normalise_email(email), check_name(nom), check_lang(lang))
    except InvalidInput as exc:
        return (line, str(exc))


def read_csv(text: str, source: str) -> Iterator[_Row | tuple[int, str]]:
    """The rows of a CSV text (columns email[, nom|name][, lang], any of , ; tab), each checked; a row
    with the wrong number of fields or a bad value is (line, reason).  InvalidInput for a file that is
    not CSV or has no email column (``source`` names it in the message)."""
    sample = text[:4096]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    # Universal newlines, as Path.read_text gives the CLI: a lone CR (old Mac files, or a body sent to the
    # API as it is) ends a line instead of failing the whole file as malformed.
    reader = csv.reader(io.StringIO(text, newline=None), dialect)
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidInput(f"{source}: the file is empty") from None
    except csv.Error as exc:
        raise InvalidInput(f"{source}, line 1: malformed CSV: {exc}") from None
    columns = [h.strip().lower().lstrip("\ufeff") for h in header]
    if "email" not in columns:
        raise InvalidInput(
            f"{source}, line 1: no 'email' column in the header (found: {', '.join(columns) or 'nothing'}); "
            "expected columns: email, and optionally nom, lang"
        )
    i_email = columns.index("email")
    i_nom = columns.index("nom") if "nom" in columns else (columns.index("name") if "name" in columns else None)
    i_lang = columns.index("lang") if "lang" in columns else None
    while True:
        line = reader.line_num + 1  # where this row starts (a quoted field may span several lines)
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InvalidInput(f"{source}, line {reader.line_num}: malformed CSV: {exc}") from None
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) != len(columns):
            yield (line, f"expected {len(columns)} fields, found {len(values)}")
            continue
        nom = values[i_nom] if i_nom is not None else ""
        yield _row(line, values[i_email], nom, values[i_lang] if i_lang is not None else "")


def read_records(records: Iterable[object]) -> Iterator[_Row | tuple[int, str]]:
    """The rows of a JSON import (objects with email[, nom][, lang]), numbered from 1 like lines."""
    for line, record in enumerate(records, 1):
        if not isinstance(record, dict):
            yield (line, f"expected an object with an email, got {type(record).__name__}")
            continue
        values = [record.get(name, "") for name in ("email", "nom", "lang")]
        unknown = sorted(set(record) - {"email", "nom", "lang"})
        if unknown:
            yield (line, f"unknown field(s) {', '.join(map(str, unknown))} (known: email, nom, lang)")
        elif not all(isinstance(v, str) for v in values):
            yield (line, "email, nom and lang must be text")
        else:
            yield _row(line, *values)


def import_csv(session: Session, path: Path, list_identifier: str, *, strict: bool = False) -> ImportReport:
    """Import a CSV file (columns email[, nom][, lang]) into a list: :func:`import_rows` of its rows."""
    get_list(session, list_identifier)  # an unknown list is said before the file is read
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    return import_rows(session, read_csv(text, str(path)), list_identifier, source=str(path), strict=strict)


def import_rows(
    session: Session,
    items: Iterable[_Row | tuple[int, str]],
    list_identifier: str,
    *,
    source: str,
    strict: bool = False,
) -> ImportReport:
    """Import checked rows (:func:`read_csv`, :func:`read_records`) into a list: the one path of
    ``mailshot subscribers import`` and the API's import.

    Invalid rows are reported by line and skipped (``strict``: refused, nothing imported).
    Every row is read and checked before the first write, so a malformed file changes nothing.
    """
    mlist = get_list(session, list_identifier)
    report = ImportReport()
    rows: dict[str, _Row] = {}
    for item in items:
        report.rows += 1
        if isinstance(item, tuple):
            report.errors.append(item)
        elif item.email not in rows:  # the first occurrence of an address wins
            rows[item.email] = item
    if strict and report.errors:
        line, reason = report.errors[0]
        raise InvalidInput(f"{source}, line {line}: {reason} ({len(report.errors)} invalid rows; nothing imported)")
    _upsert(session, mlist, list(rows.values()), report)
    return report


def _upsert(session: Session, mlist: MailingList, rows: Sequence[_Row], report: ImportReport) -> None:
    assert mlist.id is not None
    now = utcnow()
    for start in range(0, len(rows), IMPORT_CHUNK):
        chunk = rows[start : start + IMPORT_CHUNK]
        emails = [r.email for r in chunk]
        before = session.exec(
            select(func.count()).select_from(Subscriber).where(col(Subscriber.email).in_(emails))
        ).one()
        session.execute(
            insert_ignore(session, _SUBSCRIBERS),
            [
                {
                    "email": r.email,
                    "nom": r.nom,
                    "lang": r.lang,
                    "status": SubscriberStatus.VALID,
                    "created_at": now,
                    "updated_at": now,
                }
                for r in chunk
            ],
        )
        report.new_subscribers += len(chunk) - int(before)
        ids = {
            email: (sub_id, status)
            for email, sub_id, status in session.exec(
                select(Subscriber.email, Subscriber.id, Subscriber.status).where(col(Subscriber.email).in_(emails))
            ).all()
        }
        existing = dict(
            session.exec(
                select(Subscription.subscriber_id, Subscription.status).where(
                    col(Subscription.list_id) == mlist.id,
                    col(Subscription.subscriber_id).in_([i for i, _ in ids.values()]),
                )
            ).all()
        )
        new = []
        for email in emails:
            sub_id, sub_status = ids[email]
            if sub_id in existing:
                if existing[sub_id] == SubscriptionStatus.VALID:
                    report.already_subscribed += 1
                else:
                    report.kept_unsubscribed += 1
                continue
            if sub_status != SubscriberStatus.VALID:
                report.kept_unsubscribed += 1
                continue
            new.append(
                {
                    "subscriber_id": sub_id,
                    "list_id": mlist.id,
                    "status": SubscriptionStatus.VALID,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        if new:
            session.execute(insert_ignore(session, _SUBSCRIPTIONS), new)
        report.new_subscriptions += len(new)


def get_subscriber(session: Session, email: str) -> Subscriber:
    try:
        address = normalise_email(email)
    except InvalidInput:
        address = email.strip().lower()
    sub = session.exec(select(Subscriber).where(Subscriber.email == address)).first()
    if sub is None:
        raise NotFound(f"no subscriber with address {email!r}")
    return sub


@dataclass(frozen=True)
class SubscriberPage:
    subscribers: list[Subscriber]  # by id, after the cursor
    count: int  # every subscriber the filter matches, all pages together
    more: bool  # another page follows


def browse(
    session: Session, *, list_identifier: str | None = None, status: str | None = None, after: int = 0, limit: int = 100
) -> SubscriberPage:
    """One page of subscribers by id after ``after`` (keyset pagination on the primary key, so page n
    costs what page 1 does), with the count of all that match.  With a list: its subscribers, ``status``
    filtering the subscription (valid, pending, refused); without: every address, ``status`` filtering
    the subscriber (valid, pending, unsubscribed)."""
    query = select(Subscriber)
    if list_identifier is not None:
        mlist = get_list(session, list_identifier)
        query = query.join(Subscription, col(Subscription.subscriber_id) == Subscriber.id).where(
            Subscription.list_id == mlist.id
        )
        if status is not None:
            query = query.where(Subscription.status == status)
    elif status is not None:
        query = query.where(Subscriber.status == status)
    count = session.exec(select(func.count()).select_from(query.subquery())).one()
    found = list(
        session.exec(query.where(col(Subscriber.id) > after).order_by(col(Subscriber.id)).limit(limit + 1)).all()
    )
    return SubscriberPage(found[:limit], int(count), len(found) > limit)


def current_lists(session: Session, subscriber_id: int) -> set[str]:
    """Identifiers of the lists the subscriber is on (valid subscriptions)."""
    return set(
        session.exec(
            select(MailingList.identifier)
            .join(Subscription, col(Subscription.list_id) == MailingList.id)
            .where(Subscription.subscriber_id == subscriber_id, col(Subscription.status) == SubscriptionStatus.VALID)
        ).all()
    )


def unsubscribe(
    session: Session,
    email: str,
    list_identifier: str | None = None,
    *,
    reason: str,
    source: str = "cli",
    mailshot_id: int | None = None,
    recipient_id: int | None = None,
    client: str | None = None,
) -> int:
    """Refuse the subscriber's subscriptions (one list, or all); returns how many changed.

    Leaving every list also marks the subscriber unsubscribed, with the reason.  Each call that
    changes something is recorded as a feedback event (already applied), so the address history
    shows who did it, and in the opt-in trail (``client``: the visitor's address or the API key).
    """
    sub = get_subscriber(session, email)
    now = utcnow()
    query = update(Subscription).where(
        and_(col(Subscription.subscriber_id) == sub.id, col(Subscription.status) != SubscriptionStatus.REFUSED)
    )
    mlist = None
    if list_identifier is not None:
        mlist = get_list(session, list_identifier)
        query = query.where(col(Subscription.list_id) == mlist.id)
    changed = session.execute(query.values(status=SubscriptionStatus.REFUSED, updated_at=now)).rowcount  # type: ignore[attr-defined]
    remaining = session.exec(
        select(func.count())
        .select_from(Subscription)
        .where(Subscription.subscriber_id == sub.id, col(Subscription.status) == SubscriptionStatus.VALID)
    ).one()
    left = (list_identifier is None or remaining == 0) and sub.status != SubscriberStatus.UNSUBSCRIBED
    if left:
        sub.status = SubscriberStatus.UNSUBSCRIBED
        sub.unsubscribed_at = now
        sub.unsubscribe_reason = reason
        sub.updated_at = now
    if not changed and not left:
        return 0  # a repeat (a second click, a late complaint): nothing happened, nothing to record
    session.add(
        FeedbackEvent(
            source=source,
            mailshot_id=mailshot_id,
            recipient_id=recipient_id,
            email=sub.email,
            kind="unsub",
            detail=f"{reason} ({'list ' + list_identifier if list_identifier else 'all lists'})",
            applied_at=now,
        )
    )
    assert sub.id is not None
    record_optin(session, sub.id, mlist.id if mlist is not None else None, "unsubscribed", source, client, reason, now)
    session.flush()
    return int(changed)


def record_optin(
    session: Session,
    subscriber_id: int,
    list_id: int | None,
    action: str,
    source: str,
    client: str | None = None,
    detail: str | None = None,
    at: datetime | None = None,
) -> None:
    """One entry of the opt-in trail (``optin_event``; subscriptions.py tells what each action means)."""
    session.add(
        OptinEvent(
            subscriber_id=subscriber_id,
            list_id=list_id,
            action=action,
            source=source[:_SOURCE_LENGTH],
            client=client[:_CLIENT_LENGTH] if client else None,
            detail=detail,
            at=at or utcnow(),
        )
    )


class SendingOutcome(NamedTuple):
    """One sending of an address: its recipient row, or what purge.py kept of it once archived."""

    mailshot_id: int
    subject: str
    status: str
    tries: int
    at: datetime | None  # last attempt
    last_error: str | None
    archived: bool = False  # from delivery_outcome: the row itself (and its error text) was purged


def outcomes_of(email: str) -> Subquery:
    """One address's fate in every sending: its recipient rows and, for archived sendings, what
    purge.py kept of them (``delivery_outcome``).  Columns: mailshot_id, status, tries, at (last
    attempt), last_error (None once archived), archived.  Read by :func:`history` and by the MAX_FAIL
    rule (fail_rule), so both see the same history.  Uses the email indexes of both tables."""
    r, o = _RECIPIENTS.c, _OUTCOMES.c
    live = sa_select(r.mailshot_id, r.status, r.tries, r.last_attempt_at.label("at"), r.last_error)
    kept = sa_select(o.mailshot_id, o.status, o.tries, o.at, literal(None, String).label("last_error"))
    return union_all(
        live.add_columns(literal(False).label("archived")).where(r.email == email),
        kept.add_columns(literal(True).label("archived")).where(o.email == email),
    ).subquery()


@dataclass
class AddressHistory:
    subscriber: Subscriber
    subscriptions: list[tuple[str, str, datetime]]
    sendings: list[SendingOutcome]  # by sending id, live and archived together
    events: list[FeedbackEvent]


def history(session: Session, email: str) -> AddressHistory:
    """Everything known about one address: lists, every sending with its outcome (archived sendings
    through their kept ``delivery_outcome``), every event.  Read by ``mailshot subscribers show`` and
    the subscriber page."""
    sub = get_subscriber(session, email)
    subs = session.exec(
        select(MailingList.identifier, Subscription.status, Subscription.updated_at)
        .join(MailingList, col(MailingList.id) == Subscription.list_id)
        .where(Subscription.subscriber_id == sub.id)
        .order_by(col(MailingList.identifier))
    ).all()
    both = outcomes_of(sub.email)
    rows = session.execute(
        sa_select(both, _MAILSHOTS.c.subject)
        .join(_MAILSHOTS, _MAILSHOTS.c.id == both.c.mailshot_id)
        .order_by(both.c.mailshot_id)
    ).all()
    sendings = [
        SendingOutcome(r.mailshot_id, r.subject, r.status, r.tries, r.at, r.last_error, bool(r.archived)) for r in rows
    ]
    events = session.exec(
        select(FeedbackEvent).where(FeedbackEvent.email == sub.email).order_by(col(FeedbackEvent.id))
    ).all()
    return AddressHistory(
        subscriber=sub,
        subscriptions=[(a, b, c) for a, b, c in subs],
        sendings=sendings,
        events=list(events),
    )
