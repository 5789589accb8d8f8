"""What the follow-up pages show, read from the database: pages of sendings, a sending's counters
and its recipients grouped by status; the lists the public pages offer.  Read-only; the operations (pause, resume, cancel) and the
address history are sendings.py's and subscribers.py's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy.orm import defer
from sqlmodel import Session, col, func, select

from mailshot_core.errors import InvalidInput, NotFound
from mailshot_core.sending.sendings import status_counts
from mailshot_core.store.models import MailingList, Mailshot, Recipient, RecipientStatus

S = RecipientStatus
T = TypeVar("T")

SENDINGS_PER_PAGE = 20
RECIPIENTS_PER_PAGE = 10  # the original's tables: 10 rows per status


@dataclass(frozen=True)
class Section:
    key: str  # also the query parameter holding this section's page number
    title: str
    statuses: tuple[str, ...]


# The original's list page (reference/original-mailshot.md §9), in its order, after the drafts
# (created, waiting for the operator's Send: nothing starts them).
SECTIONS = (
    Section("drafts", "Drafts", ("draft",)),
    Section("scheduled", "Scheduled", ("init",)),
    Section("in_progress", "In progress", ("processing", "pause")),
    Section("completed", "Completed", ("end", "cancel")),
    Section("archived", "Archived", ("archive",)),
)

STATUS_LABELS = {
    "draft": "draft",
    "init": "scheduled",
    "processing": "sending",
    "pause": "paused",
    "end": "finished",
    "cancel": "cancelled",
    "archive": "archived",
}


@dataclass(frozen=True)
class Group:
    key: str  # also the query parameter prefix of this group's page number: page_<key>
    label: str
    statuses: tuple[str, ...]


# Recipients by status, in the original's order (to send, sent, opened, clicked ...), then ours.
GROUPS = (
    Group("todo", "To send", (S.TODO,)),
    Group("inflight", "Being sent", (S.CLAIMED, S.SENDING)),
    Group("sent", "Sent", (S.SENT,)),
    Group("read", "Opened", (S.READ,)),
    Group("clic", "Clicked", (S.CLIC,)),
    Group("unsub", "Unsubscribed", (S.UNSUB,)),
    Group("spam", "Marked as spam", (S.SPAM,)),
    Group("fail", "Failed", (S.FAIL,)),
    Group("bounce", "Bounced", (S.BOUNCE,)),
    Group("unknown", "In doubt (in flight when a worker died)", (S.UNKNOWN,)),
    Group("kill", "Not sent (cancelled, or left the lists)", (S.KILL,)),
)


# One recipient's status in words (the subscriber page's history).
RECIPIENT_LABELS = {status: group.label for group in GROUPS for status in group.statuses}


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    number: int
    count: int  # pages
    total: int  # items over all pages


def pages_of(total: int, per_page: int) -> int:
    return max(1, math.ceil(total / per_page))


def check_page(number: int, total: int, per_page: int, what: str) -> int:
    count = pages_of(total, per_page)
    if number < 1:
        raise InvalidInput(f"{what}: page numbers start at 1")
    if number > count:
        raise NotFound(f"{what}: there is no page {number} (last page: {count})")
    return count


def sendings(session: Session, section: Section, number: int) -> Page[Mailshot]:
    """One page of a section, newest first.  The bodies are not loaded: a list page shows counters."""
    where = col(Mailshot.status).in_(section.statuses)
    total = session.exec(select(func.count()).select_from(Mailshot).where(where)).one()
    count = check_page(number, total, SENDINGS_PER_PAGE, section.title)
    rows = session.exec(
        select(Mailshot)
        .options(defer(Mailshot.html), defer(Mailshot.text))  # type: ignore[arg-type]
        .where(where)
        .order_by(col(Mailshot.id).desc())
        .limit(SENDINGS_PER_PAGE)
        .offset((number - 1) * SENDINGS_PER_PAGE)
    ).all()
    return Page(rows, number, count, total)


def list_titles(session: Session) -> dict[str, str]:
    return {m.identifier: m.title or m.identifier for m in session.exec(select(MailingList)).all()}


def any_processing(session: Session) -> bool:
    return session.exec(select(Mailshot.id).where(Mailshot.status == "processing").limit(1)).first() is not None


def percent(part: int, whole: int) -> float:
    """Rounded to 0.1 % like the original's display (round(x * 1000 / total) / 10)."""
    return round(part * 1000 / whole) / 10 if whole else 0.0


@dataclass(frozen=True)
class GroupPage:
    group: Group
    page: Page[Recipient]


def recipient_groups(session: Session, mailshot_id: int, pages: dict[str, int], search: str) -> list[GroupPage]:
    """The non-empty groups of a sending's recipients (of the addresses containing ``search``), each
    with its requested page.  Counts: one GROUP BY; rows: one query per shown group, by id, on
    ix_recipient_claim (mailshot_id, status, ...)."""
    counts = status_counts(session, mailshot_id, search or None)
    shown = []
    for group in GROUPS:
        total = sum(counts.get(status, 0) for status in group.statuses)
        number = pages.get(group.key, 1)
        if not total:
            if number != 1:
                raise NotFound(f"{group.label}: no recipient, so no page {number}")
            continue
        count = check_page(number, total, RECIPIENTS_PER_PAGE, group.label)
        query = select(Recipient).where(Recipient.mailshot_id == mailshot_id, col(Recipient.status).in_(group.statuses))
        if search:
            query = query.where(col(Recipient.email).contains(search, autoescape=True))
        rows = session.exec(
            query.order_by(col(Recipient.id)).limit(RECIPIENTS_PER_PAGE).offset((number - 1) * RECIPIENTS_PER_PAGE)
        ).all()
        shown.append(GroupPage(group, Page(rows, number, count, total)))
    return shown


# --- the public pages ---------------------------------------------------------------------------------


def open_lists(session: Session) -> list[MailingList]:
    """The lists a visitor may subscribe to, by identifier (the subscribe form's checkboxes)."""
    return list(session.exec(select(MailingList).where(col(MailingList.open)).order_by(col(MailingList.identifier))))
