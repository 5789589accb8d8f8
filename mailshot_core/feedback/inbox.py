"""One feedback pipeline (STYLE §7): provider events -> the ``feedback_event`` inbox -> recipient
statuses, counters and unsubscriptions.

1. **Store** (:func:`store`, called by the webhook): rows written raw, at once, deduplicated by
   (source, provider event id) in the database (``uq_feedback_provider_event``); events for sendings
   that are not ours (another site on the same ESP account) are dropped.
2. **Apply** (:func:`apply_pending`, the ``apply-feedback`` flow): each provider's mapping table
   (:data:`MAPPINGS`) turns the provider's event name into one :class:`Effect`; the recipient moves
   only *up* the precedence (:data:`RANK`), so events arriving late or twice never move it back (a
   `clic` is not downgraded by a late `delivered`), and re-applying changes nothing.  Spam complaints
   and unsubscribe events unsubscribe the address at once.

The mapping starts from the original plugin's (reference/original-mailshot.md §3.4-3.5) with its fixes:
Mandrill open/click mapped (an old revision compared with ``==`` and lost them), Mailjet ``bounce``
split on ``hard_bounce`` (the original made every Mailjet bounce soft), SparkPost ``click_tracking``
spelled right, ``unsub``/``unsubscribe`` events handled for every provider, deliveries recorded.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailshot_core.audience import subscribers
from mailshot_core.errors import NotFound
from mailshot_core.feedback.esp_events import IncomingEvent, digest, sub
from mailshot_core.sending import sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import FeedbackEvent, Mailshot, Recipient, RecipientStatus, utcnow

log = logging.getLogger("mailshot.feedback")
S = RecipientStatus
_events = FeedbackEvent.__table__  # type: ignore[attr-defined]
_recipients = Recipient.__table__  # type: ignore[attr-defined]
_mailshots = Mailshot.__table__  # type: ignore[attr-defined]


class Effect(StrEnum):
    """What an event means for its recipient, whatever the provider."""

    DELIVERED = "delivered"
    READ = "read"
    CLIC = "clic"
    SOFT_BOUNCE = "soft_bounce"  # given up after retries: this message did not arrive
    HARD_BOUNCE = "hard_bounce"
    REJECT = "reject"  # refused before delivery (policy, block list, invalid)
    SPAM = "spam"
    UNSUB = "unsub"
    # An open or click that looks like a machine's (tracking.machine_reason): no status change, counted
    # apart (nb_read_machine / nb_clic_machine), once per recipient (_first_machine_hits).
    MACHINE_READ = "machine_read"
    MACHINE_CLIC = "machine_clic"
    IGNORE = "ignore"  # accepted, queued, deferred, proxy opens...: nothing to record


E = Effect
# The status each effect leads to, and the precedence: a recipient only moves to a higher rank.
# Engagement proves delivery (a read after a soft bounce wins, as in the original); a spam complaint
# or an unsubscribe is the last word.
TARGET: dict[Effect, str] = {
    E.DELIVERED: S.SENT,
    E.SOFT_BOUNCE: S.FAIL,
    E.REJECT: S.FAIL,
    E.HARD_BOUNCE: S.BOUNCE,
    E.READ: S.READ,
    E.CLIC: S.CLIC,
    E.UNSUB: S.UNSUB,
    E.SPAM: S.SPAM,
}
RANK: dict[str, int] = {
    S.TODO: 0,
    S.UNKNOWN: 0,  # in doubt after a crash: any event proves the message left
    S.KILL: 0,
    S.SENT: 1,
    S.FAIL: 2,
    S.BOUNCE: 3,
    S.READ: 4,
    S.CLIC: 5,
    S.UNSUB: 6,
    S.SPAM: 7,
}
MACHINE_COUNTERS: dict[Effect, str] = {E.MACHINE_READ: "nb_read_machine", E.MACHINE_CLIC: "nb_clic_machine"}
# Rows a worker is handing over right now: their result is not recorded yet, so an event waits.
IN_FLIGHT = {S.CLAIMED, S.SENDING}

Rule = Effect | Callable[[Mapping[str, Any]], Effect]


def _sparkpost_bounce(ev: Mapping[str, Any]) -> Effect:
    # Bounce classes (SparkPost "Bounce classification codes"): 10 invalid recipient, 30 no RCPT,
    # 90 unsubscribe are hard; 50-54 are blocks (our reputation or content, not the address) and 25/80
    # administrative: rejections; the rest are soft (SparkPost's own advice: only hard/admin suppress).
    try:
        cls = int(ev.get("bounce_class") or 1)
    except (TypeError, ValueError):
        cls = 1  # "Undetermined"
    if cls == 90:
        return E.UNSUB
    if cls in (10, 30):
        return E.HARD_BOUNCE
    if 50 <= cls <= 54 or cls in (25, 80):
        return E.REJECT
    return E.SOFT_BOUNCE


def _ses_bounce(ev: Mapping[str, Any]) -> Effect:
    bounce = sub(ev, "bounce")
    return E.HARD_BOUNCE if bounce.get("bounceType") == "Permanent" else E.SOFT_BOUNCE


def _ses_complaint(ev: Mapping[str, Any]) -> Effect:
    complaint = sub(ev, "complaint")
    # A feedback report saying "not-spam" is the recipient taking a complaint back.
    return E.IGNORE if complaint.get("complaintFeedbackType") == "not-spam" else E.SPAM


# Provider event name -> effect (reference/email-standards.md §2.1 table).  Names absent here are
# recorded and ignored (a provider adding an event type never breaks the pipeline).
MAPPINGS: dict[str, dict[str, Rule]] = {
    "mailjet": {
        "sent": E.DELIVERED,  # Mailjet's `sent` is "accepted by the receiving server"
        "open": E.READ,
        "click": E.CLIC,
        "bounce": lambda ev: E.HARD_BOUNCE if ev.get("hard_bounce") else E.SOFT_BOUNCE,
        "blocked": E.REJECT,
        "spam": E.SPAM,
        "unsub": E.UNSUB,
    },
    "sparkpost": {
        "injection": E.IGNORE,
        "delivery": E.DELIVERED,
        "delay": E.IGNORE,
        "bounce": _sparkpost_bounce,
        "out_of_band": _sparkpost_bounce,
        "policy_rejection": E.REJECT,
        "generation_failure": E.REJECT,
        "generation_rejection": E.REJECT,
        "spam_complaint": E.SPAM,
        "open": E.READ,
        "initial_open": E.READ,
        "amp_open": E.READ,
        "amp_initial_open": E.READ,
        "click": E.CLIC,
        "amp_click": E.CLIC,
        "list_unsubscribe": E.UNSUB,
        "link_unsubscribe": E.UNSUB,
    },
    "mandrill": {
        "send": E.IGNORE,
        "delivered": E.DELIVERED,
        "deferral": E.IGNORE,
        "hard_bounce": E.HARD_BOUNCE,
        "soft_bounce": E.SOFT_BOUNCE,
        "open": E.READ,
        "click": E.CLIC,
        "spam": E.SPAM,
        "unsub": E.UNSUB,
        "reject": E.REJECT,
    },
    "brevo": {
        "request": E.IGNORE,
        "delivered": E.DELIVERED,
        "deferred": E.IGNORE,
        "hard_bounce": E.HARD_BOUNCE,
        "soft_bounce": E.SOFT_BOUNCE,
        "blocked": E.REJECT,
        "invalid_email": E.REJECT,
        "error": E.REJECT,
        "spam": E.SPAM,
        "complaint": E.SPAM,
        "opened": E.READ,
        "unique_opened": E.READ,
        # Apple Mail Privacy Protection loads every image: not a reader's open.
        "proxy_open": E.IGNORE,
        "unique_proxy_open": E.IGNORE,
        "unique_proxy_opened": E.IGNORE,
        "click": E.CLIC,
        "unsubscribe": E.UNSUB,
        "unsubscribed": E.UNSUB,
    },
    "ses": {
        "Send": E.IGNORE,
        "Delivery": E.DELIVERED,
        "DeliveryDelay": E.IGNORE,
        "Bounce": _ses_bounce,
        "Complaint": _ses_complaint,
        "Reject": E.REJECT,
        "Rendering Failure": E.REJECT,
        "Open": E.READ,
        "Click": E.CLIC,
        "Subscription": E.UNSUB,
    },
}
# Sources whose events are written already in our own vocabulary (SMTP replies, bounce mail, pages).
_NATIVE = {effect.value: effect for effect in Effect}


def classify(source: str, kind: str, raw: str | None) -> Effect:
    """The effect of one stored event, by its provider's mapping table."""
    table = MAPPINGS.get(source)
    if table is None:
        return _NATIVE.get(kind, E.IGNORE)
    rule = table.get(kind, E.IGNORE)
    if isinstance(rule, Effect):
        return rule
    try:
        event = json.loads(raw or "{}")
    except json.JSONDecodeError:
        event = {}
    try:
        return rule(event if isinstance(event, dict) else {})
    except (TypeError, ValueError, AttributeError) as exc:
        # One odd event must not stop the inbox (it would be retried, and fail, every minute).
        log.warning("feedback: %s %s event not understood (%s): ignored", source, kind, exc)
        return E.IGNORE


# --- 1. store -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreReport:
    received: int
    stored: int
    duplicates: int
    ignored: int  # not about a sending of this site


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
            ids = [row[0] for row in conn.execute(stmt, list(rows.values())).all()]
    ignored = sum(1 for e in events if e.mailshot_id not in known)
    return StoreReport(len(events), len(ids), len(events) - ignored - len(ids), ignored), ids


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
    fetched, so the counters equal tracking.machine_recount.  Earlier hits are the applied events
    (looked up by address: ix_feedback_event_email); this batch's are not applied yet."""
    if not hits:
        return {}
    earlier = session.execute(
        select(_events.c.recipient_id, _events.c.kind).where(
            _events.c.email.in_({row.email for row, _ in hits}),
            _events.c.kind.in_([e.value for e in MACHINE_COUNTERS]),
            _events.c.applied_at.is_not(None),
        )
    )
    seen: set[tuple[int, str]] = {(rid, kind) for rid, kind in earlier}
    counts: dict[int, Counter[str]] = {}
    for row, effect in hits:
        if (row.id, effect.value) in seen:
            continue
        seen.add((row.id, effect.value))
        counts.setdefault(row.mailshot_id, Counter())[MACHINE_COUNTERS[effect]] += 1
    return counts


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
        for ev in events:
            row = by_id.get(ev.recipient_id) if ev.recipient_id is not None else by_pair.get((ev.mailshot_id, ev.email))
            if row is None or row.mailshot_id != ev.mailshot_id or (ev.email and row.email != ev.email):
                report.unmatched += 1
                done.append(ev.id)
                continue
            if row.status in IN_FLIGHT:
                report.deferred += 1
                continue
            done.append(ev.id)
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
            from mailshot_core.feedback import fail_rule  # it reads this module's mapping tables

            failed = {r.email for r in moved if r.status in (S.FAIL, S.BOUNCE)}
            report.unsubscribed += fail_rule.check_addresses(session, failed, max_fail)
        if done:
            # Guarded by `applied_at IS NULL`: the row count is what *this* run applied, so the sum over
            # all runs equals the number of events, never more (tests/test_feedback_load.py).
            result = session.execute(
                update(_events).where(_events.c.id.in_(done), _events.c.applied_at.is_(None)).values(applied_at=now)
            )
            report.applied = int(result.rowcount)  # type: ignore[attr-defined]
    return report


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
