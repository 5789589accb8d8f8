"""Mailing lists: create, update, look up, count.  The CLI (`mailshot lists`) and the Newsletter API
share these functions, so a list's rules are written once.

A list carries what SPIP's Mailsubscribers gives one (reference/original-mailshot.md §5 ``lists``):
a title and a description, open (visitors may subscribe themselves) or closed, its sender (the
sending's From when it is the first of the sending's lists that has one), whether a visitor's
subscription waits for the emailed confirmation (double opt-in), its language and its confirmation
message.  Every value is checked before anything is written: header values on one line and within
their column's size, the sender's address normalised like any address.
"""

from __future__ import annotations

import re
from typing import Any

from sqlmodel import Session, col, func, select

from mailshot_core.audience.addresses import check_lang, normalise_email
from mailshot_core.content.confirmation import check_template
from mailshot_core.content.message import HeaderError, check_header_value
from mailshot_core.errors import AlreadyExists, InvalidInput, NotFound
from mailshot_core.store.models import MailingList, Subscription, SubscriptionStatus, max_length

TITLE_LENGTH = max_length(MailingList, "title")
LIST_NAME_LENGTH = max_length(MailingList, "identifier")
FROM_NAME_LENGTH = max_length(MailingList, "from_name")
CONFIRM_SUBJECT_LENGTH = max_length(MailingList, "confirm_subject")
# Text columns have no size of their own: a description or a confirmation message longer than this is
# a mistake (a whole page pasted), refused with a clear error rather than stored.
DESCRIPTION_LENGTH = 10_000
CONFIRM_TEXT_LENGTH = 100_000
_LIST_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
# The fields a caller may set, beside the identifier (never changed: sendings name their lists by it).
FIELDS = (
    "title",
    "description",
    "open",
    "from_name",
    "from_email",
    "double_optin",
    "lang",
    "confirm_subject",
    "confirm_text",
)


def check_identifier(identifier: str) -> str:
    identifier = identifier.strip()
    # ASCII only and dot-separated labels: the identifier becomes the left part of the List-Id
    # (RFC 2919 §2: a dot-atom), which str.isalnum() (true for "é") did not guarantee.
    if len(identifier) > LIST_NAME_LENGTH or not _LIST_NAME.fullmatch(identifier):
        raise InvalidInput(
            f"invalid list name {identifier[:100]!r}: use ASCII letters, digits, '-', '_', and '.' between them, "
            f"at most {LIST_NAME_LENGTH} characters (it becomes part of List-Id)"
        )
    return identifier


def _header(what: str, value: str, length: int) -> str:
    try:
        return check_header_value(what, value.strip(), length)
    except HeaderError as exc:
        raise InvalidInput(str(exc)) from None


def _text(what: str, value: str, length: int) -> str:
    if len(value) > length:
        raise InvalidInput(f"{what} is {len(value):,} characters long; at most {length:,}")
    if "\x00" in value:
        raise InvalidInput(f"{what} contains a NUL character")
    return value


def _flag(what: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} must be true or false, got {value!r}")
    return value


def _cleaned(identifier: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The values to store, each checked; InvalidInput names the first bad field."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"unknown list field(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    values: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            continue  # not given: unchanged (or the column's default at creation)
        if name in ("open", "double_optin"):
            values[name] = _flag(name, value)
            continue
        if not isinstance(value, str):
            raise InvalidInput(f"{name} must be text, got {type(value).__name__}")
        if name == "title":
            values[name] = _header("list title", value or identifier, TITLE_LENGTH) or identifier
        elif name == "description":
            values[name] = _text("description", value, DESCRIPTION_LENGTH)
        elif name == "from_name":
            values[name] = _header("sender name (from_name)", value, FROM_NAME_LENGTH)
        elif name == "from_email":
            # Empty: the list has no sender of its own (the sending's or MAILSHOT_FROM_EMAIL is used).
            values[name] = normalise_email(value) if value.strip() else ""
        elif name == "lang":
            values[name] = check_lang(value)
        elif name == "confirm_subject":
            # Empty: the default confirmation subject in the list's language (stored as NULL).
            values[name] = _header("confirmation subject", value, CONFIRM_SUBJECT_LENGTH) or None
        elif name == "confirm_text":
            values[name] = _text("confirmation text", value, CONFIRM_TEXT_LENGTH) if value.strip() else None
    # A confirmation template that cannot render (syntax, unknown variable, no link) is refused now,
    # not when a visitor subscribes.
    check_template(values.get("confirm_subject"), values.get("confirm_text"))
    return values


def create_list(session: Session, identifier: str, title: str = "", **fields: Any) -> MailingList:
    """A new list; ``fields`` are any of :data:`FIELDS` (the rest take the columns' defaults: closed,
    double opt-in, no sender of its own)."""
    identifier = check_identifier(identifier)
    if session.exec(select(MailingList).where(MailingList.identifier == identifier)).first():
        raise AlreadyExists(f"list {identifier!r} already exists")
    values = _cleaned(identifier, {**fields, "title": title})
    mlist = MailingList(identifier=identifier, **values)
    session.add(mlist)
    session.flush()
    return mlist


def update_list(session: Session, identifier: str, **fields: Any) -> MailingList:
    """Change the given fields of a list (None or absent: unchanged).  An empty ``from_email`` or
    ``from_name`` removes the list's own sender; an empty confirmation subject or text brings back the
    default message; an empty title becomes the identifier."""
    mlist = get_list(session, identifier)
    for name, value in _cleaned(mlist.identifier, fields).items():
        setattr(mlist, name, value)
    session.add(mlist)
    session.flush()
    return mlist


def get_list(session: Session, identifier: str) -> MailingList:
    mlist = session.exec(select(MailingList).where(MailingList.identifier == identifier)).first()
    if mlist is None:
        known = session.exec(select(MailingList.identifier).order_by(MailingList.identifier)).all()
        hint = (
            f" (existing lists: {', '.join(known)})" if known else " (no list exists yet: mailshot lists create NAME)"
        )
        raise NotFound(f"unknown list {identifier[:LIST_NAME_LENGTH]!r}{hint}")
    return mlist


def list_lists(session: Session) -> list[tuple[MailingList, int]]:
    """Every list with its number of valid subscriptions."""
    counts = (
        select(Subscription.list_id, func.count().label("n"))  # type: ignore[call-overload]
        .where(Subscription.status == SubscriptionStatus.VALID)
        .group_by(col(Subscription.list_id))
        .subquery()
    )
    rows = session.execute(
        select(MailingList, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.list_id == MailingList.id)
        .order_by(MailingList.identifier)
    ).all()
    return [(r[0], int(r[1])) for r in rows]


def pending_counts(session: Session) -> dict[int, int]:
    """List id -> subscriptions waiting for their double opt-in confirmation."""
    rows = session.exec(
        select(Subscription.list_id, func.count())
        .where(Subscription.status == SubscriptionStatus.PENDING)
        .group_by(col(Subscription.list_id))
    ).all()
    return {list_id: int(n) for list_id, n in rows}
