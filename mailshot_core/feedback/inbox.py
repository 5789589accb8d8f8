"""One feedback pipeline (STYLE §7): provider events -> the ``feedback_event`` inbox -> recipient
statuses, counters and unsubscriptions.

1. **Store** (:func:`store`, called by the webhook): rows written raw, at once, deduplicated by
   (source, provider event id) in the database (``uq_feedback_provider_event``); events for sendings
   that are not ours (another site on the same ESP account) are dropped.
2. **Apply** (:func:`apply_pending`, the ``apply-feedback`` flow): each provider's mapping table
   (:data:`effects.MAPPINGS`) turns the provider's event name into one :class:`Effect`; the recipient moves
   only *up* the precedence (:data:`effects.RANK`), so events arriving late or twice never move it back (a
   `clic` is not downgraded by a late `delivered`), and re-applying changes nothing.  Spam complaints
   and unsubscribe events unsubscribe the address at once.

The mapping tables and the precedence are effects.py's.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailshot_core.audience import subscribers
from mailshot_core.errors import NotFound
from mailshot_core.feedback import fail_rule
from mailshot_core.feedback.effects import (
    IN_FLIGHT,
    MACHINE_COUNTERS,
    MACHINE_KINDS,
    RANK,
    TARGET,
    E,
    Effect,
    classify,
)
from mailshot_core.feedback.esp_events import IncomingEvent, digest
from mailshot_core.sending import sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import FeedbackEvent, Mailshot, Recipient, RecipientStatus, utcnow

log = logging.getLogger("mailshot.feedback")
S = RecipientStatus
_events = FeedbackEvent.__table__  # type: ignore[attr-defined]
_recipients = Recipient.__table__  # type: ignore[attr-defined]
_mailshots = Mailshot.__table__  # type: ignore[attr-defined]


# --- 1. store -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreReport:
    received: int
    stored: int
    duplicates: int
    ignored: int  # not about a sending of this site
    untied: dict[str, int] = field(default_factory=dict)  # why the ignored ones were: reason -> count
    ids: tuple[int, ...] = ()  # the rows stored (new events only): what the web app applies on arrival


NO_SENDING_ID = "without any sending id of ours"
NOT_OURS = "for a sending that is not in this database"


def _insert_ignore(dialect: str) -> Any:
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(_events).on_conflict_do_nothing(index_elements=["source", "provider_event_id"])


def store(engine: Engine, events: Iterable[IncomingEvent], now: datetime | None = None) -> StoreReport:
    """Write events to the inbox in one transaction; a duplicate (same source and id) is stored once."""
    report, _ = _store(engine, list(events), now)
    return report


def _store(engine: Engine, events: list[IncomingEvent], now: datetime | None) -> tuple[StoreReport, list[int]]:
    now = now or utcnow()
    wanted = {e.mailshot_id for e in events if e.mailshot_id is not None}
    with engine.begin() as conn:
        known = (
            set(conn.execute(select(_mailshots.c.id).where(_mailshots.c.id.in_(wanted))).scalars()) if wanted else set()
        )
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for e in events:
            if e.mailshot_id not in known:
                continue
            rows.setdefault(
                (e.source, e.event_id),
                {
                    "source": e.source,
                    "provider_event_id": e.event_id
                    if len(e.event_id) <= 255
                    else digest(e.event_id),  # still one row per id
                    "mailshot_id": e.mailshot_id,
                    "recipient_id": e.recipient_id,
                    "email": e.email.strip().lower()[:320],
                    "kind": e.kind,
                    "detail": e.detail,
                    "raw": e.raw,
                    "received_at": now,
                    "applied_at": None,
                },
            )
        ids: list[int] = []
        if rows:
            stmt = _insert_ignore(conn.dialect.name).returning(_events.c.id)
            # In the unique key's order: two concurrent stores of overlapping events then take their index
            # locks in the same order, where PostgreSQL saw a deadlock (tests/feedback/test_feedback_load.py).
            ordered = sorted(rows.values(), key=lambda r: (r["source"], r["provider_event_id"]))
            ids = [row[0] for row in conn.execute(stmt, ordered).all()]
    untied = Counter(NO_SENDING_ID if e.mailshot_id is None else NOT_OURS for e in events if e.mailshot_id not in known)
    ignored = sum(untied.values())
    return StoreReport(len(events), len(ids), len(events) - ignored - len(ids), ignored, dict(untied), tuple(ids)), ids


# --- 2. apply -----------------------------------------------------------------------------------------


@dataclass
class ApplyReport:
    applied: int = 0  # events marked applied by this run (each exactly once, across all runs)
    changed: int = 0  # recipients moved
    deferred: int = 0  # events whose recipient is being handed over right now: next run
    unmatched: int = 0  # no such recipient in that sending
    unsubscribed: int = 0
    last_id: int = 0

    def add(self, other: ApplyReport) -> None:
        for name in ("applied", "changed", "deferred", "unmatched", "unsubscribed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.last_id = max(self.last_id, other.last_id)


@dataclass
class _Row:
    id: int
    mailshot_id: int
    email: str
    status: str
    original: str


def _pending(session: Session, after_id: int, limit: int, ids: list[int] | None) -> list[Any]:
    """Unapplied events in arrival order.  PostgreSQL: ``SKIP LOCKED`` so that concurrent runs share
    the inbox instead of waiting; SQLite: the transaction already holds the write lock (BEGIN IMMEDIATE),
    so no two runs can read the same pending rows.  Relies on ix_feedback_event_applied_at."""
    query = (
        select(
            _events.c.id,
            _events.c.source,
            _events.c.kind,
            _events.c.raw,
            _events.c.mailshot_id,
            _events.c.recipient_id,
            _events.c.email,
            _events.c.detail,
        )
        .where(_events.c.applied_at.is_(None), _events.c.id > after_id, _events.c.mailshot_id.is_not(None))
        .order_by(_events.c.id)
        .limit(limit)
    )
    if ids is not None:
        query = query.where(_events.c.id.in_(ids))
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return list(session.execute(query).all())


def _recipients_of(session: Session, events: list[Any]) -> tuple[dict[int, _Row], dict[tuple[int, str], _Row]]:
    """The recipients the events are about, by id (from the provider's metadata) or by (sending, address).

    PostgreSQL: the rows about to change are then locked in id order (a concurrent recovery, resend or
    another apply run must not move them between read and write; one order, no deadlock between apply
    runs).  Rows being handed over (claimed/sending) are not locked: their worker's ledger owns them
    and their events wait.  SQLite: the transaction holds the database's write lock already.
    """
    ids = {e.recipient_id for e in events if e.recipient_id is not None}
    pairs = {(e.mailshot_id, e.email) for e in events if e.recipient_id is None}
    conditions = []
    if ids:
        conditions.append(_recipients.c.id.in_(ids))
    if pairs:
        conditions.append(tuple_(_recipients.c.mailshot_id, _recipients.c.email).in_(pairs))
    cols = (_recipients.c.id, _recipients.c.mailshot_id, _recipients.c.email, _recipients.c.status)
    found = session.execute(select(*cols).where(or_(*conditions))).all()
    by_id = {r.id: _Row(r.id, r.mailshot_id, r.email, r.status, r.status) for r in found}
    if session.get_bind().dialect.name == "postgresql":
        settled = sorted(r.id for r in by_id.values() if r.status not in IN_FLIGHT)
        if settled:
            locked = session.execute(
                select(_recipients.c.id, _recipients.c.status)
                .where(_recipients.c.id.in_(settled))
                .order_by(_recipients.c.id)
                .with_for_update()
            ).all()
            for rid, status in locked:  # re-read under the lock
                by_id[rid].status = by_id[rid].original = status
    return by_id, {(r.mailshot_id, r.email): r for r in by_id.values()}


def _first_machine_hits(session: Session, hits: list[tuple[_Row, Effect]]) -> dict[int, Counter[str]]:
    """Counter increments for machine hits: one per recipient and kind, however many links a scanner
    fetched or proxy opens a provider reported, so the counters equal tracking.machine_recount.  Earlier
    hits are the applied events (looked up by address: ix_feedback_event_email), whatever their source
    (our pixel's ``machine_read``, Brevo's ``proxy_open``...); this batch's are not applied yet."""
    if not hits:
        return {}
    earlier = session.execute(
        select(_events.c.recipient_id, _events.c.source, _events.c.kind).where(
            _events.c.email.in_({row.email for row, _ in hits}),
            _events.c.kind.in_(MACHINE_KINDS),
            _events.c.applied_at.is_not(None),
        )
    )
    seen: set[tuple[int, Effect]] = {(rid, classify(source, kind, None)) for rid, source, kind in earlier}
    counts: dict[int, Counter[str]] = {}
    for row, effect in hits:
        if (row.id, effect) in seen:
            continue
        seen.add((row.id, effect))
        counts.setdefault(row.mailshot_id, Counter())[MACHINE_COUNTERS[effect]] += 1
    return counts


def _log_unmatched(reasons: Counter[str]) -> None:
    if reasons:
        log.warning(
            "feedback: %d event(s) not tied to a recipient (applied, nothing changed): %s",
            sum(reasons.values()),
            ", ".join(f"{n} {why}" for why, n in sorted(reasons.items())),
        )


def apply_pending(
    engine: Engine,
    *,
    after_id: int = 0,
    limit: int = 500,
    clock: Callable[[], datetime] = utcnow,
    max_fail: int | None = None,
    ids: list[int] | None = None,
) -> ApplyReport:
    """Apply up to ``limit`` unapplied events with id > ``after_id`` (and among ``ids``) in one transaction.

    ``max_fail``: also apply the MAX_FAIL rule (fail_rule.py) to the addresses that moved to
    fail/bounce, in the same transaction (None: the rule is not checked).
    """
    report = ApplyReport()
    now = clock()
    with session_scope(engine) as session:
        events = _pending(session, after_id, limit, ids)
        if not events:
            return report
        report.last_id = events[-1].id
        by_id, by_pair = _recipients_of(session, events)
        done: list[int] = []
        errors: dict[int, str] = {}
        unsubscribe: list[tuple[_Row, Effect, str]] = []
        machine: list[tuple[_Row, Effect]] = []
        unmatched: Counter[str] = Counter()
        found_by_address: list[dict[str, int]] = []
        for ev in events:
            row = by_id.get(ev.recipient_id) if ev.recipient_id is not None else by_pair.get((ev.mailshot_id, ev.email))
            why = _unmatched(ev, row)
            if why is not None or row is None:
                unmatched[why or UNKNOWN_RECIPIENT] += 1
                done.append(ev.id)
                continue
            if row.status in IN_FLIGHT:
                report.deferred += 1
                continue
            done.append(ev.id)
            if ev.recipient_id is None:  # tied by (sending, address): the event now names its recipient
                found_by_address.append({"b_event": ev.id, "b_recipient": row.id})
            effect = classify(ev.source, ev.kind, ev.raw)
            if effect in MACHINE_COUNTERS:
                machine.append((row, effect))
                continue
            target = TARGET.get(effect)
            if target is None or RANK[target] <= RANK.get(row.status, 0):
                continue
            row.status = target
            if effect in (E.SOFT_BOUNCE, E.HARD_BOUNCE, E.REJECT) and ev.detail:
                errors[row.id] = f"{ev.source} {ev.kind}: {ev.detail}"[:1000]
            if effect in (E.SPAM, E.UNSUB):
                unsubscribe.append((row, effect, ev.source))
        moved = [r for r in by_id.values() if r.status != r.original]
        if moved:
            session.execute(
                update(_recipients).where(_recipients.c.id == bindparam("b_id")).values(status=bindparam("b_status")),
                [{"b_id": r.id, "b_status": r.status} for r in moved],
            )
            if errors:
                session.execute(
                    update(_recipients)
                    .where(_recipients.c.id == bindparam("b_id"))
                    .values(last_error=bindparam("b_error")),
                    [{"b_id": rid, "b_error": text} for rid, text in errors.items()],
                )
            per_sending: dict[int, list[tuple[str, str]]] = {}
            for r in moved:
                per_sending.setdefault(r.mailshot_id, []).append((r.original, r.status))
            for mailshot_id, moves in per_sending.items():
                sendings.apply_counter_deltas(session, mailshot_id, sendings.counter_deltas(moves))
            report.changed = len(moved)
        for mailshot_id, counts in _first_machine_hits(session, machine).items():
            sendings.apply_counter_deltas(session, mailshot_id, counts)
        for row, effect, source in unsubscribe:
            report.unsubscribed += _unsubscribe(session, row, effect, source)
        if max_fail is not None:
            failed = {r.email for r in moved if r.status in (S.FAIL, S.BOUNCE)}
            report.unsubscribed += fail_rule.check_addresses(session, failed, max_fail)
        report.unmatched = sum(unmatched.values())
        _log_unmatched(unmatched)
        if found_by_address:
            session.execute(
                update(_events)
                .where(_events.c.id == bindparam("b_event"), _events.c.recipient_id.is_(None))
                .values(recipient_id=bindparam("b_recipient")),
                found_by_address,
            )
        if done:
            # Guarded by `applied_at IS NULL`: the row count is what *this* run applied, so the sum over
            # all runs equals the number of events, never more (tests/feedback/test_feedback_load.py).
            result = session.execute(
                update(_events).where(_events.c.id.in_(done), _events.c.applied_at.is_(None)).values(applied_at=now)
            )
            report.applied = int(result.rowcount)  # type: ignore[attr-defined]
    return report


UNKNOWN_RECIPIENT = "with no such recipient in their sending (by id, or by address)"


def _unmatched(ev: Any, row: _Row | None) -> str | None:
    """Why an event cannot be tied to the recipient it names; None when it can."""
    if row is None:
        return UNKNOWN_RECIPIENT
    if row.mailshot_id != ev.mailshot_id:
        return "whose recipient id belongs to another sending"
    if ev.email and row.email != ev.email:
        return "whose address differs from their recipient's"
    return None


def record_and_apply(engine: Engine, events: Iterable[IncomingEvent], now: datetime | None = None) -> ApplyReport:
    """Store events and apply them at once (the web's own events: an open, a click), not waiting for
    the ``apply-feedback`` run; a duplicate is neither stored nor applied twice."""
    _, ids = _store(engine, list(events), now)
    if not ids:
        return ApplyReport()
    return apply_pending(engine, ids=ids, limit=len(ids), clock=(lambda: now) if now else utcnow)


def _unsubscribe(session: Session, row: _Row, effect: Effect, source: str) -> int:
    """A spam complaint leaves every list; an unsubscribe event leaves the sending's lists."""
    mailshot = sendings.get(session, row.mailshot_id)
    if effect is E.SPAM:
        scopes: list[str | None] = [None]
        reason = f"spam complaint reported by {source} (sending {row.mailshot_id})"
    else:
        scopes = list(sendings.list_identifiers(mailshot))
        reason = f"unsubscribed through {source} (sending {row.mailshot_id})"
    changed = 0
    for scope in scopes:
        try:
            changed += subscribers.unsubscribe(
                session,
                row.email,
                scope,
                reason=reason,
                source=source,
                mailshot_id=row.mailshot_id,
                recipient_id=row.id,
            )
        except NotFound:  # the subscriber or list was deleted since: nothing left to unsubscribe
            log.info("feedback: %s no longer subscribed anywhere (%s)", row.email, reason)
    return 1 if changed else 0


def apply_all(
    engine: Engine, *, limit: int = 500, clock: Callable[[], datetime] = utcnow, max_fail: int | None = None
) -> ApplyReport:
    """Apply every pending event, ``limit`` per transaction; deferred ones wait for the next run."""
    total = ApplyReport()
    after = 0
    while True:
        report = apply_pending(engine, after_id=after, limit=limit, clock=clock, max_fail=max_fail)
        total.add(report)
        if report.last_id == 0:
            return total
        after = report.last_id
