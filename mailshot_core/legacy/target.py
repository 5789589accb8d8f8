"""The mailshot-database side of import-legacy: idempotent writes, and the report of what they did.

Lists by identifier, subscribers by address and subscriptions by key are only added when missing
(an import never re-subscribes someone, never overwrites what changed here); ``legacy_import``
remembers which legacy sending became which one.  Every write counts itself in the report, as
created or as already there, so a dry run (rolled back) reports exactly what a real run would do.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, update
from sqlmodel import Session, col, select

from mailshot_core.audience.addresses import normalise_email
from mailshot_core.audience.subscribers import insert_ignore
from mailshot_core.errors import InvalidInput
from mailshot_core.sending import sendings
from mailshot_core.store.models import (
    FeedbackEvent,
    LegacyImport,
    MailingList,
    Mailshot,
    MailshotStatus,
    Recipient,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    max_length,
    utcnow,
)

R = SubscriptionStatus.REFUSED
IMPORT_SOURCE = "spip-import"  # feedback_event.source of what SPIP had recorded


@dataclass(frozen=True)
class Problem:
    table: str
    row_id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.table} #{self.row_id}: {self.reason}"


@dataclass
class ImportReport:
    dry_run: bool = False
    sources: list[str] = field(default_factory=list)
    created: Counter[str] = field(default_factory=Counter)  # lists, subscribers, subscriptions, sendings, recipients
    existing: Counter[str] = field(default_factory=Counter)  # already there: left as they are
    problems: list[Problem] = field(default_factory=list)

    def problem(self, table: str, row_id: object, reason: str) -> None:
        self.problems.append(Problem(table, str(row_id), reason))

    def summary(self) -> str:
        verb = "would import" if self.dry_run else "imported"
        kinds = ("lists", "subscribers", "subscriptions", "unsubscribed", "sendings", "recipients", "feedback events")
        made = ", ".join(f"{self.created[k]} {k}" for k in kinds)
        kept = ", ".join(f"{self.existing[k]} {k}" for k in kinds if self.existing[k]) or "nothing"
        return (
            f"{'+'.join(self.sources)}: {verb} {made}; already there: {kept}; "
            f"{len(self.problems)} row(s) not imported or changed (listed above)"
        )


def slug(value: str, fallback: str) -> str:
    """An identifier our lists accept (ASCII letters, digits, '-', '_', '.'; it becomes part of List-Id)."""
    ascii_text = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode().lower()
    cleaned = re.sub(r"[^a-z0-9_.-]+", "-", ascii_text)
    cleaned = re.sub(r"[-.]{2,}", "-", cleaned).strip("-._")
    return (cleaned or fallback)[:100].rstrip("-._")


def one_line(value: str) -> str:
    return " ".join(value.split())


class Target:
    """Writes into the mailshot database, counting what it creates and what was already there."""

    def __init__(self, session: Session, report: ImportReport) -> None:
        self.session = session
        self.report = report
        self._subscribers: dict[str, int] = {
            e: i for i, e in session.exec(select(Subscriber.id, Subscriber.email)) if i
        }

    def ensure_list(
        self,
        identifier: str,
        title: str,
        *,
        description: str = "",
        open: bool = False,
        from_name: str = "",
        from_email: str = "",
    ) -> int:
        """The list named ``identifier``, created with what SPIP knew of it; an existing one is left as
        it is (the operator may have changed it here since)."""
        found = self.session.exec(select(MailingList).where(MailingList.identifier == identifier)).first()
        if found is not None and found.id is not None:
            self.report.existing["lists"] += 1
            return found.id
        sender = ""
        if from_email.strip():
            try:
                sender = normalise_email(from_email)
            except InvalidInput as exc:
                self.report.problem("list", identifier, f"sender address not imported: {exc}")
        name, name_length = one_line(from_name), max_length(MailingList, "from_name")
        if len(name) > name_length:
            self.report.problem("list", identifier, f"sender name cut to {name_length} characters")
        mlist = MailingList(
            identifier=identifier,
            title=one_line(title)[:255] or identifier,
            description=description.strip(),
            open=open,
            from_name=name[:name_length] if sender else "",
            from_email=sender,
        )
        self.session.add(mlist)
        self.session.flush()
        self.report.created["lists"] += 1
        assert mlist.id is not None
        return mlist.id

    def address(self, table: str, row_id: object, raw: str) -> str | None:
        try:
            return normalise_email(raw)
        except InvalidInput as exc:
            self.report.problem(table, row_id, str(exc))
            return None

    def ensure_subscriber(
        self, email: str, nom: str = "", lang: str = "", created: datetime | None = None, unsubscribed: bool = False
    ) -> int:
        existing = self._subscribers.get(email)
        if existing is not None:
            self.report.existing["subscribers"] += 1
            return existing
        when = created or utcnow()
        sub = Subscriber(
            email=email,
            nom=one_line(nom)[:255],
            lang=lang[:16],
            created_at=when,
            updated_at=when,
            status=SubscriberStatus.UNSUBSCRIBED if unsubscribed else SubscriberStatus.VALID,
            unsubscribed_at=utcnow() if unsubscribed else None,
            unsubscribe_reason="unsubscribed in the legacy SPIP site (import)" if unsubscribed else None,
        )
        self.session.add(sub)
        self.session.flush()
        assert sub.id is not None
        self._subscribers[email] = sub.id
        self.report.created["subscribers"] += 1
        if unsubscribed:
            self.report.created["unsubscribed"] += 1
        return sub.id

    def subscribe(self, subscriber_id: int, list_id: int, status: str, when: datetime | None = None) -> None:
        now = when or utcnow()
        # RETURNING tells whether the row was new: rowcount of ON CONFLICT DO NOTHING is -1 on psycopg.
        added = self.session.execute(
            insert_ignore(self.session, Subscription.__table__)  # type: ignore[attr-defined]
            .values(subscriber_id=subscriber_id, list_id=list_id, status=status, created_at=now, updated_at=now)
            .returning(Subscription.__table__.c.subscriber_id)  # type: ignore[attr-defined]
        ).first()
        (self.report.created if added else self.report.existing)["subscriptions"] += 1

    def membership(
        self,
        table: str,
        subscriber: tuple[str, int, Mapping[int, int]],
        mlist: tuple[str, int, Mapping[int, int]],
        status: str,
        when: datetime | None = None,
        no_list: str = "",
    ) -> None:
        """Subscribe a legacy (subscriber id, list id) pair, each a (column, value, legacy id -> our id) triple;
        a side that was not imported is reported with the row's key."""
        (sub_col, sub, subs), (list_col, liste, lists) = subscriber, mlist
        key = f"{sub}/{liste}"
        if sub not in subs:
            self.report.problem(table, key, f"subscriber {sub_col} {sub} was not imported")
        elif liste not in lists:
            self.report.problem(table, key, no_list or f"list {list_col} {liste} was not imported")
        else:
            self.subscribe(subs[sub], lists[liste], status, when)

    def unsubscribe(self, email: str, reason: str) -> None:
        """An address that left: unsubscribed overall, every subscription refused (idempotent)."""
        sub_id = self.ensure_subscriber(email, unsubscribed=True)
        sub = self.session.get(Subscriber, sub_id)
        assert sub is not None
        if sub.status != SubscriberStatus.UNSUBSCRIBED:
            sub.status = SubscriberStatus.UNSUBSCRIBED
            sub.unsubscribed_at = utcnow()
            sub.unsubscribe_reason = reason
            self.session.add(sub)
            self.report.created["unsubscribed"] += 1
        self.session.execute(
            update(Subscription)
            .where(col(Subscription.subscriber_id) == sub_id, col(Subscription.status) != R)
            .values(status=R, updated_at=utcnow())
        )

    def already_imported(self, source: str, table: str, legacy_id: object) -> bool:
        found = self.session.get(LegacyImport, (source, table, str(legacy_id))) is not None
        if found:
            self.report.existing["sendings"] += 1
        return found

    def add_sending(
        self,
        source: str,
        table: str,
        legacy_id: object,
        mailshot: Mailshot,
        rows: Iterable[tuple[str, str, int, datetime | None]],
        counters: dict[str, int] | None = None,
    ) -> int:
        """Store one legacy sending with its recipient rows (email, status, tries, date).

        Counters come from the rows (recount) when there are any, else from ``counters`` (the legacy
        totals), and a sending without rows is ``archive``: its detail is gone.
        """
        self.session.add(mailshot)
        self.session.flush()
        assert mailshot.id is not None
        values = []
        seen: set[str] = set()
        for email, status, tries, when in rows:
            if email in seen:
                self.report.problem(f"{table} recipients", f"{legacy_id}/{email}", "address listed twice: kept once")
                continue
            seen.add(email)
            accepted = status not in ("fail", "kill")
            values.append(
                {
                    "mailshot_id": mailshot.id,
                    "email": email,
                    "subscriber_id": self._subscribers.get(email),
                    "status": status,
                    "tries": tries,
                    "throttled": 0,
                    "last_attempt_at": when,
                    "sent_at": when if accepted else None,
                }
            )
        mailshot.materialised = True
        if mailshot.status == MailshotStatus.PAUSE:
            mailshot.status_reason = f"{mailshot.status_reason}: unfinished there, paused here; resume or cancel it"
        if values:
            self.session.execute(insert(Recipient), values)
            for name, value in sendings.recount(self.session, mailshot.id).items():
                setattr(mailshot, name, value)
        elif mailshot.status == MailshotStatus.PAUSE:
            mailshot.materialised = False  # never started there: a resume materialises its lists, as SPIP would
        else:
            for name, value in (counters or {}).items():
                setattr(mailshot, name, max(0, int(value)))
            mailshot.status_reason = f"{mailshot.status_reason} (was '{mailshot.status}'; no recipient rows)"
            mailshot.status = MailshotStatus.ARCHIVE
        self.session.add(mailshot)
        self.session.add(
            LegacyImport(source=source, legacy_table=table, legacy_id=str(legacy_id), target_id=mailshot.id)
        )
        self.session.flush()
        self.report.created["sendings"] += 1
        self.report.created["recipients"] += len(values)
        return mailshot.id

    def add_feedback(
        self, mailshot_id: int, origin: str, events: Iterable[tuple[str, str, str, datetime | None]]
    ) -> None:
        """The recipients' last feedback kept by SPIP (email, kind, "quoi|raw", date) as feedback events of
        source ``spip-import``, already applied (the recipient rows were written with their effect):
        the address history shows them, and the MAX_FAIL rule reads them like any provider's."""
        rows = list(events)
        if not rows:
            return
        ids = dict(
            self.session.execute(
                select(Recipient.email, Recipient.id).where(
                    col(Recipient.mailshot_id) == mailshot_id, col(Recipient.email).in_([r[0] for r in rows])
                )
            ).all()
        )
        now = utcnow()
        for email, kind, raw, when in rows:
            self.session.add(
                FeedbackEvent(
                    source=IMPORT_SOURCE,
                    provider_event_id=f"{mailshot_id}:{email}"[:255],
                    mailshot_id=mailshot_id,
                    recipient_id=ids.get(email),
                    email=email,
                    kind=kind[:20] or "unknown",
                    detail=f"raw_feedback {raw[:200]!r} of {origin}",
                    raw=raw,
                    received_at=when or now,
                    applied_at=now,
                )
            )
        self.session.flush()
        self.report.created["feedback events"] += len(rows)


def new_sending(
    source: str,
    legacy_id: object,
    subject: str,
    html: str,
    text_body: str,
    lists: str,
    status: str,
    started: datetime | None,
    ended: datetime | None,
    **extra: Any,
) -> Mailshot:
    created = started or ended or utcnow()
    return Mailshot(
        subject=one_line(subject) or f"({source} #{legacy_id}, no subject)",
        html=html,
        text=text_body,
        lists=lists,
        status=status,
        status_reason=f"imported from {source} #{legacy_id}",
        created_at=created,
        updated_at=ended or created,
        start_at=started,
        started_at=started,
        ended_at=ended or started,
        **extra,
    )
