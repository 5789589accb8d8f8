"""The ledger: group commit of recipient transitions for all the connections of one batch.

Exactly-once bookkeeping (DESIGN §4.1–4.2).  A recipient moves ``claimed -> sending ->
sent|todo|fail``; the move to ``sending`` is committed *before* its message is handed to the
transport, and the result is committed before the same connection starts its next message.  So when
a worker is killed, its rows in ``sending`` are the only ones whose fate is unknown: at most one per
open connection.  Everything ``claimed`` was never attempted and goes back to the queue.

Those commits are grouped (:class:`Ledger`): all connections' transitions that are waiting at the
same moment share one transaction.  One commit per message per connection would cap throughput at
the database's commit rate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy.engine import Connection as DbConnection
from sqlalchemy.engine import Engine

from mailshot_core.sending import claims, runs, sendings
from mailshot_core.store.db import WriteLockBusy, raw_write_transaction, session_scope
from mailshot_core.store.models import Recipient, RecipientStatus

log = logging.getLogger("mailshot.sending")

S = RecipientStatus
Clock = Callable[[], datetime]
MAX_RETRY_DELAY = timedelta(hours=6)
# A throttled recipient is retried after THROTTLE_DELAY s (or MAILSHOT_RETRY_DELAY if shorter), doubling; after MAX_THROTTLED deferrals the
# relay is clearly not going to take it and it fails like any other.
THROTTLE_DELAY = 2.0
MAX_THROTTLED = 30
# A ledger that finds SQLite's write lock taken tries again this soon, and after this long waits for it
# in SQLite's busy handler like any other writer (never starved by busier processes).
LOCK_RETRY_SECONDS = 0.0005
LOCK_PATIENCE_SECONDS = 1.0
# A worker waiting for its send slot refreshes its heartbeat this often (well under MAILSHOT_CLAIM_LEASE).
HEARTBEAT_EVERY = 20.0


class Result(StrEnum):
    SENT = "sent"
    TEMPORARY = "temporary"  # try consumed, retried later (or fail at max_try)
    THROTTLED = "throttled"  # the relay asked us to slow down: retried soon, not counted towards max_try
    PERMANENT = "permanent"  # fail now, recorded as a bounce event
    DEFERRED = "deferred"  # not handed over (relay down, configuration): back to todo, no try consumed


@dataclass(frozen=True, slots=True)
class Outcome:
    recipient_id: int
    email: str
    tries: int  # tries before this attempt
    result: Result
    throttled: int = 0  # throttled attempts before this one
    from_status: str = S.SENDING
    code: int | None = None
    text: str | None = None
    message_id: str | None = None
    policy_block: bool = False

    @classmethod
    def of(
        cls,
        rcpt: claims.ClaimedRecipient,
        result: Result,
        *,
        from_status: str = S.SENDING,
        code: int | None = None,
        text: str | None = None,
        message_id: str | None = None,
        policy_block: bool = False,
    ) -> Outcome:
        return cls(
            rcpt.id, rcpt.email, rcpt.tries, result, rcpt.throttled, from_status, code, text, message_id, policy_block
        )


@dataclass
class BatchReport:
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    killed: int = 0
    skipped: int = 0  # cancelled between claim and send
    throttled: int = 0  # attempts the relay asked us to retry later (counted in retried unless they failed)
    deferred: int = 0  # not handed over (relay unreachable, configuration): back to todo, no try consumed
    seconds: float = 0.0  # time spent sending
    stopped: str | None = None  # why the sending stopped (pause, cancel, configuration error)

    def add(self, other: BatchReport) -> None:
        for name in ("claimed", "sent", "retried", "failed", "killed", "skipped", "throttled", "deferred", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.stopped = other.stopped or self.stopped


@dataclass
class Ledger:
    """Group commit of recipient transitions for all the connections of one batch."""

    engine: Engine
    mailshot_id: int
    token: str
    max_try: int
    retry_delay: float
    clock: Clock
    report: BatchReport = field(default_factory=BatchReport)
    run_id: str | None = None  # the send run whose record these transitions add to (runs.py)
    batch_claimed: int = 0  # recipients the batch holds
    built: int = 0  # messages built so far (connections._unbuildable: a fault of one, or of all?)
    unbuilt: int = 0  # messages that could not be built before the first was
    _starts: list[tuple[int, asyncio.Future[bool]]] = field(default_factory=list)
    _outcomes: list[Outcome] = field(default_factory=list)
    _flushing: asyncio.Task[None] | None = None
    _error: BaseException | None = None
    _last_beat: datetime | None = None
    _connection: DbConnection | None = None

    async def start(self, recipient_id: int) -> bool:
        """Durably mark the recipient as handed over; False if it was cancelled meanwhile."""
        if self._error is not None:
            raise self._error
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._starts.append((recipient_id, fut))
        self._kick()
        return await fut

    async def wait_until(self, when: datetime, stop: asyncio.Event | None = None) -> bool:
        """Sleep until ``when``, heartbeating meanwhile: a slow pace (100/day = one message every 14 min)
        must not make this live worker look dead to other runs (MAILSHOT_CLAIM_LEASE).  Wakes at once
        when ``stop`` is set (a pause must not wait for a slot minutes away); False then."""
        while (remaining := (when - self.clock()).total_seconds()) > 0:
            if stop is None:
                await asyncio.sleep(min(remaining, HEARTBEAT_EVERY))
            else:
                try:
                    await asyncio.wait_for(stop.wait(), min(remaining, HEARTBEAT_EVERY))
                except TimeoutError:
                    pass
                else:
                    return False
            if remaining > HEARTBEAT_EVERY:
                await asyncio.to_thread(self._beat)
        return stop is None or not stop.is_set()

    def _beat(self) -> None:
        with session_scope(self.engine) as session:
            claims.heartbeat(session, self.token, self.clock())

    def record(self, outcome: Outcome) -> None:
        """Queue a result: it is committed before (or with) the next start of any connection."""
        self._outcomes.append(outcome)

    async def close(self) -> None:
        """Commit what is still queued; raises the database error that stopped the ledger, if any."""
        while self._flushing is not None:
            await self._flushing
        if (self._outcomes or self._starts) and self._error is None:
            self._kick()
            while self._flushing is not None:
                await self._flushing
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._error is not None:
            raise self._error

    def _kick(self) -> None:
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        busy_since: float | None = None
        try:
            while self._starts or self._outcomes:
                starts, self._starts = self._starts, []
                outcomes, self._outcomes = self._outcomes, []
                try:
                    # In the loop's own thread on purpose: a writer thread waited up to the GIL switch
                    # interval (5 ms) each time it needed the GIL back, and writes took 5.8 ms instead
                    # of 2.1 ms (bench/RESULTS.md).  Without waiting for SQLite's write lock while
                    # another process holds it: that wait blocked every connection of the batch (8 %
                    # of a fast-mode worker's time, py-spy, issue 16); the loop serves its sockets and
                    # tries again, with whatever was queued meanwhile in the same transaction.
                    granted = self._write(
                        [rid for rid, _ in starts],
                        outcomes,
                        wait=busy_since is not None and time.monotonic() - busy_since > LOCK_PATIENCE_SECONDS,
                    )
                except WriteLockBusy:
                    busy_since = busy_since or time.monotonic()
                    self._starts, self._outcomes = starts + self._starts, outcomes + self._outcomes
                    await asyncio.sleep(LOCK_RETRY_SECONDS)
                    continue
                except Exception as exc:
                    # The database is failing: stop every connection.  Rows left in `sending` are
                    # reported as in doubt by the next run's recovery, never resent blindly.
                    self._error = exc
                    for _, fut in starts + self._starts:
                        if not fut.done():
                            fut.set_exception(exc)
                    self._starts, self._outcomes = [], []
                    return
                busy_since = None
                for rid, fut in starts:
                    if not fut.done():
                        fut.set_result(rid in granted)
        finally:
            self._flushing = None

    def _write(self, starts: list[int], outcomes: list[Outcome], *, wait: bool) -> set[int]:
        """One transaction for everything waiting: results first, then the guarded starts.

        Driver SQL on the raw DBAPI cursor, prepared once per dialect (:class:`_LedgerSql`): this runs
        once per group of messages on the hot path, and building, caching and compiling SQLAlchemy
        statements there cost more than the database's own work (bench/RESULTS.md).
        """
        now = self.clock()
        granted: set[int] = set()
        sql = _LedgerSql.of(self.engine)
        if self._connection is None:  # one connection for the whole batch, closed by close()
            self._connection = self.engine.connect()
        with raw_write_transaction(self.engine, self._connection.connection.dbapi_connection, wait=wait) as cursor:
            if outcomes:
                self._write_outcomes(cursor, sql, outcomes, now)
            if starts:
                # Guarded: a cancel may have turned a row into `kill` since the claim.
                cursor.execute(sql.start(len(starts)), (sql.time(now), self.token, *starts))
                granted = {row[0] for row in cursor.fetchall()}
                self.report.skipped += len(starts) - len(granted)
            if self._last_beat is None or (now - self._last_beat).total_seconds() >= HEARTBEAT_EVERY / 4:
                cursor.execute(sql.heartbeat, (sql.time(now), self.token))
                self._last_beat = now
        return granted

    def _write_outcomes(self, cursor: Any, sql: _LedgerSql, outcomes: list[Outcome], now: datetime) -> None:
        # Only rows this worker still holds: if another run took them over (it believed this worker
        # dead and marked them `unknown`), their fate stays as that run recorded it, and the counters
        # stay equal to a recount.  The row lock (FOR UPDATE / BEGIN IMMEDIATE) keeps it true until commit.
        cursor.execute(sql.owned(len(outcomes)), (self.token, *(o.recipient_id for o in outcomes)))
        owned = {row[0] for row in cursor.fetchall()}
        if len(owned) < len(outcomes):
            log.warning(
                "%d result(s) dropped: their recipients were taken over by another run", len(outcomes) - len(owned)
            )
        rows: list[tuple[object, ...]] = []
        moves: list[tuple[str, str]] = []
        before = (self.report.sent, self.report.failed, self.report.throttled, self.report.retried)
        events: list[dict[str, object]] = []
        stamp = sql.time(now)
        for o in outcomes:
            if o.recipient_id not in owned:
                continue
            tries = o.tries + 1
            throttled = o.throttled
            next_at = None
            if o.result is Result.SENT:
                status = S.SENT
                self.report.sent += 1
            elif o.result is Result.TEMPORARY:
                if tries - throttled >= self.max_try:
                    status = S.FAIL
                    self.report.failed += 1
                else:
                    status = S.TODO
                    delay = timedelta(seconds=self.retry_delay * 2 ** (tries - 1))
                    next_at = now + min(delay, MAX_RETRY_DELAY)
                    self.report.retried += 1
            elif o.result is Result.THROTTLED:
                throttled = o.throttled + 1
                self.report.throttled += 1
                if throttled >= MAX_THROTTLED:
                    status = S.FAIL
                    self.report.failed += 1
                else:
                    status = S.TODO
                    base = min(THROTTLE_DELAY, self.retry_delay)
                    delay = timedelta(seconds=base * 2 ** min(throttled - 1, 8))
                    next_at = now + min(delay, MAX_RETRY_DELAY)
                    self.report.retried += 1
            elif o.result is Result.PERMANENT:
                status = S.FAIL
                self.report.failed += 1
                events.append(
                    {
                        "source": "smtp",
                        "mailshot_id": self.mailshot_id,
                        "recipient_id": o.recipient_id,
                        "email": o.email,
                        "kind": "reject" if o.policy_block else "hard_bounce",
                        "detail": f"{o.code or ''} {o.text or ''}".strip(),
                        "received_at": stamp,
                        "applied_at": stamp,
                    }
                )
            else:  # DEFERRED: not handed over, no try consumed
                status, tries = S.TODO, o.tries
                self.report.deferred += 1
            moves.append((o.from_status, status))
            sent = status == S.SENT
            rows.append(
                (
                    status.value,
                    tries,
                    throttled,
                    sql.time(next_at) if next_at is not None else None,
                    stamp if sent else None,
                    o.message_id if sent else None,
                    None if sent else o.code,
                    None if sent else (o.text or None),
                    o.recipient_id,
                )
            )
        if rows:
            cursor.executemany(sql.record, rows)
        if events:
            cursor.executemany(sql.event, [tuple(e[c] for c in _EVENT_COLUMNS) for e in events])
        delta = sendings.counter_deltas(moves)
        if delta:
            cursor.execute(sql.counters(tuple(delta)), (*delta.values(), stamp, self.mailshot_id))
        after = (self.report.sent, self.report.failed, self.report.throttled, self.report.retried)
        if self.run_id is not None and after != before:
            cursor.execute(sql.run_counters, (*(a - b for a, b in zip(after, before, strict=True)), self.run_id))


_EVENT_COLUMNS = ("source", "mailshot_id", "recipient_id", "email", "kind", "detail", "received_at", "applied_at")


class _LedgerSql:
    """The ledger's statements as driver SQL for one dialect, with its placeholder and time format."""

    _by_dialect: ClassVar[dict[str, _LedgerSql]] = {}

    def __init__(self, engine: Engine) -> None:
        self.postgres = engine.dialect.name == "postgresql"
        self._mark = "%s" if engine.dialect.paramstyle in ("format", "pyformat") else "?"
        # How the dialect stores a datetime (SQLite: UTC text in SQLAlchemy's format; psycopg: natively).
        column_type = Recipient.__table__.c.sent_at.type  # type: ignore[attr-defined]
        self._time_processor = column_type.dialect_impl(engine.dialect).bind_processor(engine.dialect)
        m = self._mark
        self.record = self._sql(
            "UPDATE recipient SET status = ?, tries = ?, throttled = ?, next_attempt_at = ?, sent_at = ?, "
            "message_id = ?, last_error_code = ?, last_error = ?, claim_token = NULL WHERE id = ?"
        )
        self.heartbeat = self._sql("UPDATE send_worker SET heartbeat_at = ? WHERE token = ?")
        self.run_counters = runs.run_counters_sql(self._mark)
        self._start = self._sql(
            f"UPDATE recipient SET status = '{S.SENDING.value}', last_attempt_at = ? "
            f"WHERE claim_token = ? AND status = '{S.CLAIMED.value}' AND id IN ({{ids}}) RETURNING id"
        )
        self._owned = self._sql("SELECT id FROM recipient WHERE claim_token = ? AND id IN ({ids})") + (
            " FOR UPDATE" if self.postgres else ""
        )
        self.event = self._sql(
            f"INSERT INTO feedback_event ({', '.join(_EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(_EVENT_COLUMNS))})"
        )
        self._counters: dict[tuple[str, ...], str] = {}
        self._marks = [", ".join([m] * n) for n in range(_MAX_MARKS + 1)]

    @classmethod
    def of(cls, engine: Engine) -> _LedgerSql:
        key = f"{engine.dialect.name}:{engine.dialect.driver}"
        sql = cls._by_dialect.get(key)
        if sql is None:
            sql = cls._by_dialect[key] = cls(engine)
        return sql

    def _sql(self, text: str) -> str:
        return text.replace("?", self._mark)

    def _ids(self, n: int) -> str:
        return self._marks[n] if n <= _MAX_MARKS else ", ".join([self._mark] * n)

    def time(self, value: datetime) -> object:
        return self._time_processor(value) if self._time_processor is not None else value

    def start(self, n: int) -> str:
        """claimed -> sending for those of ``n`` rows this worker still holds; RETURNING says which may go."""
        return self._start.format(ids=self._ids(n))

    def owned(self, n: int) -> str:
        return self._owned.format(ids=self._ids(n))

    def counters(self, names: tuple[str, ...]) -> str:
        """Add to the named counters (names come from sendings.COUNTERS, never from input)."""
        sql = self._counters.get(names)
        if sql is None:
            assert set(names) <= set(sendings.COUNTERS)
            changes = ", ".join(f"{name} = {name} + ?" for name in names)
            sql = self._counters[names] = self._sql(f"UPDATE mailshot SET {changes}, updated_at = ? WHERE id = ?")
        return sql


_MAX_MARKS = 256
