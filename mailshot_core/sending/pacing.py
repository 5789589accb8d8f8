"""Sending pace: the original's "N mails per day, spread evenly", done precisely and shared.

A cadence (per day, and optional per-hour / per-minute caps) becomes one emission
interval T = max(86400/day, 3600/hour, 60/minute).  Slots are handed out by GCRA
(generic cell rate algorithm, with no burst): a reservation takes the identity's
"theoretical arrival time" ``tat``, gives slots ``max(tat, now) + i*T`` and moves
``tat`` on.  The ``send_pace`` row lives in the mailshot database, so every worker
on every machine shares the same pace, and it is reserved in a short transaction
(row lock on PostgreSQL, BEGIN IMMEDIATE on SQLite).

Over any half-open window of W seconds this hands out at most ceil(W/T) slots, so
no per-minute, per-hour or per-day budget can be exceeded however many workers
ask.  A hard cap counted from the recipient rows (messages accepted in the last
hour / day through the same identity) backs it up: it also covers sends made
before a restart with a different pace.  Prefect's ``rate_limit`` cannot do this:
measured, it under-delivers by up to 45 %, bursts, and has no notion of hours or
days (reference/prefect.md §2).

Time is injected (``clock``), so tests run days of cadence in milliseconds.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from mailshot_core.store.db import session_scope
from mailshot_core.store.models import Mailshot, Recipient, SendPace

Clock = Callable[[], datetime]

# A reservation covers about this much sending time: fewer transactions, still smooth.  Slots a
# worker reserved but did not use are given back when it closes (see Pacer.close).
RESERVATION_SPAN = 0.5
MAX_RESERVATION = 50


@dataclass(frozen=True)
class Cadence:
    per_day: int | None = None
    per_hour: int | None = None
    per_minute: int | None = None

    def __post_init__(self) -> None:
        for name in ("per_day", "per_hour", "per_minute"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"rate {name.replace('_', ' ')} must be positive, got {value}")

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.per_day, self.per_hour, self.per_minute))

    def interval(self) -> float:
        """Seconds between two messages (0 when unlimited)."""
        candidates = [0.0]
        if self.per_day:
            candidates.append(86400 / self.per_day)
        if self.per_hour:
            candidates.append(3600 / self.per_hour)
        if self.per_minute:
            candidates.append(60 / self.per_minute)
        return max(candidates)

    def windows(self) -> list[tuple[timedelta, int]]:
        """(window, budget) pairs the hard cap enforces."""
        out = []
        if self.per_day:
            out.append((timedelta(days=1), self.per_day))
        if self.per_hour:
            out.append((timedelta(hours=1), self.per_hour))
        if self.per_minute:
            out.append((timedelta(minutes=1), self.per_minute))
        return out


def reserve(session: Session, identity: str, count: int, interval: float, now: datetime) -> datetime:
    """Reserve ``count`` consecutive slots; returns the first one (slot i = first + i*interval).

    Must run in its own short transaction: the row is locked (FOR UPDATE on PostgreSQL; the
    write lock taken by BEGIN IMMEDIATE on SQLite) from read to write.
    """
    stmt = select(SendPace).where(col(SendPace.identity) == identity)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    pace = session.execute(stmt).scalar_one_or_none()
    if pace is None:
        from mailshot_core.audience.subscribers import insert_ignore

        session.execute(insert_ignore(session, SendPace.__table__).values(identity=identity, tat=now))  # type: ignore[attr-defined]
        pace = session.execute(stmt).scalar_one()
    first: datetime = max(pace.tat, now)
    pace.tat = first + timedelta(seconds=interval * count)
    session.add(pace)
    session.flush()
    return first


def accepted_since(session: Session, identity: str, since: datetime) -> int:
    """Messages accepted through this transport since ``since`` (hard cap; uses ix_recipient_sent_at)."""
    return int(
        session.execute(
            select(func.count())
            .select_from(Recipient)
            .join(Mailshot, col(Mailshot.id) == Recipient.mailshot_id)
            .where(col(Recipient.sent_at) >= since, col(Mailshot.transport) == identity)
        ).scalar_one()
    )


def cap_wait(session: Session, identity: str, cadence: Cadence, now: datetime) -> float:
    """Seconds to wait before one more message fits every hard-cap window (0 when it fits now)."""
    wait = 0.0
    for window, budget in cadence.windows():
        if accepted_since(session, identity, now - window) < budget:
            continue
        # Full: wait until the oldest message of the window leaves it.
        oldest = session.execute(
            select(col(Recipient.sent_at))
            .join(Mailshot, col(Mailshot.id) == Recipient.mailshot_id)
            .where(col(Recipient.sent_at) >= now - window, col(Mailshot.transport) == identity)
            .order_by(col(Recipient.sent_at).desc())
            .offset(budget - 1)
            .limit(1)
        ).scalar_one_or_none()
        if oldest is not None:
            wait = max(wait, (oldest + window - now).total_seconds())
    return wait


class Pacer:
    """Hands out send times to the connections of one worker, reserving them in the database."""

    def __init__(self, engine: Engine, identity: str, cadence: Cadence, clock: Clock) -> None:
        self.engine = engine
        self.identity = identity
        self.cadence = cadence
        self.clock = clock
        self.interval = cadence.interval()
        self._slots: list[datetime] = []
        self._end: datetime | None = None  # where our last reservation left the identity's tat
        # Connections ask from worker threads (asyncio.to_thread): one reservation at a time.
        self._lock = threading.Lock()

    def next_slot(self) -> datetime:
        """The time at which the caller may hand over its next message (reserving more when needed)."""
        with self._lock:
            if not self._slots:
                now = self.clock()
                count = max(1, min(MAX_RESERVATION, math.floor(RESERVATION_SPAN / self.interval)))
                with session_scope(self.engine) as session:
                    delay = cap_wait(session, self.identity, self.cadence, now)
                    first = reserve(session, self.identity, count, self.interval, now + timedelta(seconds=delay))
                step = timedelta(seconds=self.interval)
                self._slots = [first + i * step for i in range(count)]
                self._end = first + count * step
            return self._slots.pop(0)

    def slow_down(self, factor: float = 2.0, ceiling: float = 60.0) -> None:
        """The relay asked us to slow down: lengthen the interval (until the end of this batch)."""
        with self._lock:
            self.interval = min(max(self.interval * factor, 0.05), ceiling)
            self._slots.clear()

    def close(self) -> None:
        """Give back the slots reserved and not used, if nobody reserved after us (compare-and-set)."""
        with self._lock:
            if not self._slots or self._end is None:
                return
            with session_scope(self.engine) as session:
                session.execute(
                    update(SendPace)
                    .where(col(SendPace.identity) == self.identity, col(SendPace.tat) == self._end)
                    .values(tat=self._slots[0])
                )
            self._slots.clear()
