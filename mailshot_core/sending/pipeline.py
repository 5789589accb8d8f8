"""The send pipeline for one batch: claim -> render -> hand over -> record.

Exactly-once bookkeeping (DESIGN §4.1–4.2).  A recipient moves
``claimed -> sending -> sent|todo|fail``; the move to ``sending`` is committed
*before* its message is handed to the transport, and the result is committed
before the same connection starts its next message.  So when a worker is killed,
its rows in ``sending`` are the only ones whose fate is unknown: at most one per
open connection.  Everything ``claimed`` was never attempted and goes back to
the queue.

Those commits are grouped (:class:`Ledger`): all connections' transitions that
are waiting at the same moment share one transaction.  One commit per message per
connection would cap throughput at the database's commit rate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, cast

from sqlalchemy.engine import Connection as DbConnection
from sqlalchemy.engine import Engine
from sqlmodel import col

from mailshot_core.config import Settings
from mailshot_core.content.message import Envelope, HeaderError, MessageBuilder
from mailshot_core.content.render import CompiledMailshot, Personalisation, TemplateError
from mailshot_core.content.tokens import TRACK, UNSUBSCRIBE, make_token
from mailshot_core.feedback import tracking
from mailshot_core.sending import sendings
from mailshot_core.sending.pacing import Pacer
from mailshot_core.store.db import raw_write_transaction, session_scope
from mailshot_core.store.models import (
    Mailshot,
    MailshotStatus,
    Recipient,
    RecipientStatus,
    utcnow,
)
from mailshot_core.transports import get_transport
from mailshot_core.transports.base import (
    BatchConnection,
    BatchTransport,
    ConfigurationError,
    Connection,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TemporaryError,
    Throttled,
    Transport,
    TransportError,
    TransportUnavailable,
    batch_size_of,
)

log = logging.getLogger("mailshot.sending")

S = RecipientStatus
Clock = Callable[[], datetime]
MAX_RETRY_DELAY = timedelta(hours=6)
# A throttled recipient is retried after THROTTLE_DELAY s (or MAILSHOT_RETRY_DELAY if shorter), doubling; after MAX_THROTTLED deferrals the
# relay is clearly not going to take it and it fails like any other.
THROTTLE_DELAY = 2.0
MAX_THROTTLED = 30
# A worker waiting for its send slot refreshes its heartbeat this often (well under MAILSHOT_CLAIM_LEASE).
HEARTBEAT_EVERY = 20.0
# How long a connection pauses after a "slow down" reply, doubling up to the maximum, reset on success.
CONNECTION_BACKOFF = (0.5, 30.0)


# --- per-sending context ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SendContext:
    """What every message of one sending shares: compiled templates, envelope, links."""

    mailshot_id: int
    builder: MessageBuilder
    base_url: str
    secret_key: bytes
    track: bool  # the HTML carries our open pixel and click redirects (tracking.py)

    @classmethod
    def build(
        cls, mailshot: Mailshot, settings: Settings, list_title: str, links: Mapping[str, int] | None = None
    ) -> SendContext:
        """``links``: the sending's tracked links (tracking.links_for) when it is tracked."""
        assert mailshot.id is not None
        key = settings.secret_key.get_secret_value().encode()
        first_list = sendings.list_identifiers(mailshot)[0]
        domain = settings.list_domain
        title = list_title.replace("\\", "").replace('"', "")
        envelope = Envelope(
            mailshot_id=mailshot.id,
            from_name=mailshot.from_name,
            from_email=mailshot.from_email or settings.from_email,
            list_id=f'"{title}" <{first_list}.{domain}>',
            domain=domain,
            secret_key=key,
            reply_to=settings.reply_to,
            bounce_address=settings.bounce_address,
            unsubscribe_mailto=settings.unsubscribe_mailto,
        )
        compiled = CompiledMailshot(mailshot.subject, mailshot.html, mailshot.text, links)
        return cls(
            mailshot_id=mailshot.id,
            builder=MessageBuilder(envelope, compiled),
            base_url=settings.base_url,
            secret_key=key,
            track=links is not None,
        )

    def personalise(
        self,
        recipient_id: int,
        subscriber_id: int | None,
        email: str,
        nom: str = "",
        listes: tuple[str, ...] = (),
        lang: str = "",
        status: str = "valid",
    ) -> Personalisation:
        """The recipient's variables, with their signed links (tokens.py).

        The unsubscribe link names the subscriber (0: an address that is none), so it keeps working
        after the sending's details are purged; the tracking links name the recipient row.
        """
        unsubscribe = (
            f"{self.base_url}/u/{make_token(self.secret_key, UNSUBSCRIBE, self.mailshot_id, subscriber_id or 0)}"
        )
        if not self.track:
            return Personalisation(email, nom, listes, lang, status, unsubscribe)
        track = make_token(self.secret_key, TRACK, self.mailshot_id, recipient_id)
        opened, clicked = f"{self.base_url}/o/{track}", f"{self.base_url}/c/{track}"
        return Personalisation(email, nom, listes, lang, status, unsubscribe, opened, clicked)

    def personalise_claimed(self, rcpt: sendings.ClaimedRecipient) -> Personalisation:
        return self.personalise(rcpt.id, rcpt.subscriber_id, rcpt.email, rcpt.nom, rcpt.listes, rcpt.lang, rcpt.status)

    def message_for(
        self, recipient_id: int, email: str, who: Personalisation, *, test: bool = False
    ) -> OutgoingMessage:
        return self.builder.build(recipient_id, email, who, test=test)


_contexts: dict[tuple[str, int, str], SendContext] = {}


def context_for(engine: Engine, settings: Settings, mailshot_id: int) -> SendContext:
    """The sending's context, built once per process and settings (its content is frozen at creation)."""
    # SecretStr dumps as '****': the key's own bytes stand for it, so a changed key is seen.
    key = (
        engine.url.render_as_string(),
        mailshot_id,
        settings.model_dump_json() + settings.secret_key.get_secret_value(),
    )
    ctx = _contexts.get(key)
    if ctx is None:
        from mailshot_core.audience.subscribers import get_list

        with session_scope(engine) as session:
            mailshot = sendings.get(session, mailshot_id)
            title = get_list(session, sendings.list_identifiers(mailshot)[0]).title
            links = tracking.links_for(session, mailshot) if mailshot.track else None
            ctx = SendContext.build(mailshot, settings, title, links)
        if len(_contexts) > 16:
            _contexts.clear()
        _contexts[key] = ctx
    return ctx


# --- outcomes and the ledger ------------------------------------------------------------------------


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
        rcpt: sendings.ClaimedRecipient,
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
    stopped: str | None = None  # why the sending stopped (pause, cancel, configuration error)

    def add(self, other: BatchReport) -> None:
        for name in ("claimed", "sent", "retried", "failed", "killed", "skipped"):
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

    async def wait_until(self, when: datetime) -> None:
        """Sleep until ``when``, heartbeating meanwhile: a slow pace (100/day = one message every 14 min)
        must not make this live worker look dead to other runs (MAILSHOT_CLAIM_LEASE)."""
        while (remaining := (when - self.clock()).total_seconds()) > 0:
            await asyncio.sleep(min(remaining, HEARTBEAT_EVERY))
            if remaining > HEARTBEAT_EVERY:
                await asyncio.to_thread(self._beat)

    def _beat(self) -> None:
        with session_scope(self.engine) as session:
            sendings.heartbeat(session, self.token, self.clock())

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
        try:
            while self._starts or self._outcomes:
                starts, self._starts = self._starts, []
                outcomes, self._outcomes = self._outcomes, []
                try:
                    # In the loop's own thread on purpose: a writer thread waited up to the GIL switch
                    # interval (5 ms) each time it needed the GIL back, and writes took 5.8 ms instead
                    # of 2.1 ms (bench/RESULTS.md).
                    granted = self._write([rid for rid, _ in starts], outcomes)
                except Exception as exc:
                    # The database is failing: stop every connection.  Rows left in `sending` are
                    # reported as in doubt by the next run's recovery, never resent blindly.
                    self._error = exc
                    for _, fut in starts + self._starts:
                        if not fut.done():
                            fut.set_exception(exc)
                    self._starts, self._outcomes = [], []
                    return
                for rid, fut in starts:
                    if not fut.done():
                        fut.set_result(rid in granted)
        finally:
            self._flushing = None

    def _write(self, starts: list[int], outcomes: list[Outcome]) -> set[int]:
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
        with raw_write_transaction(self.engine, self._connection.connection.dbapi_connection) as cursor:
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


# --- one batch --------------------------------------------------------------------------------------


Prepared = tuple[sendings.ClaimedRecipient, OutgoingMessage]


def _prepare_next(queue: asyncio.Queue[sendings.ClaimedRecipient], ledger: Ledger, ctx: SendContext) -> Prepared | None:
    """The next recipient of the queue with its message; None when the queue is empty.

    A recipient whose message cannot be built (a template error at run time, a name unusable in a
    header) is recorded as failed here and skipped.
    """
    while True:
        try:
            rcpt = queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        who = ctx.personalise_claimed(rcpt)
        try:
            return rcpt, ctx.message_for(rcpt.id, rcpt.email, who)
        except (TemplateError, HeaderError) as exc:
            ledger.record(Outcome.of(rcpt, Result.PERMANENT, from_status=S.CLAIMED, text=str(exc)))


async def _connection_loop(
    transport: Transport,
    queue: asyncio.Queue[sendings.ClaimedRecipient],
    ledger: Ledger,
    ctx: SendContext,
    stop: asyncio.Event,
    pacer: Pacer | None,
) -> None:
    """Send queued recipients over one connection until the queue is empty or ``stop`` is set.

    The next message is prepared before the current one is handed over, so the transport may start it
    early (SMTP pipelines its envelope with the current data).  Its content still goes out only after its
    start is committed.  Not with a pace: its slot may be minutes away.
    """
    conn: Connection | None = None
    backoff = 0.0
    current: Prepared | None = None
    upcoming: Prepared | None = None
    try:
        while not stop.is_set():
            current, upcoming = upcoming or _prepare_next(queue, ledger, ctx), None
            if current is None:
                return
            rcpt, msg = current
            if conn is None:
                conn = await transport.connect()
            if pacer is not None:
                await ledger.wait_until(await asyncio.to_thread(pacer.next_slot))
            if not await ledger.start(rcpt.id):
                await conn.withdraw()  # its envelope may be on the wire already
                continue
            current = None  # attempted from here on: no longer to give back
            upcoming = None if pacer is not None else _prepare_next(queue, ledger, ctx)
            try:
                reply = await conn.send(msg, then=upcoming[1] if upcoming is not None else None)
            except (TransportUnavailable, ConfigurationError) as exc:
                # Reconnecting failed, or the relay refuses us: this message never left, no try consumed.
                ledger.record(Outcome.of(rcpt, Result.DEFERRED, code=exc.code, text=exc.text))
                raise
            except Throttled as exc:
                ledger.record(Outcome.of(rcpt, Result.THROTTLED, code=exc.code, text=exc.text))
                backoff = min(backoff * 2, CONNECTION_BACKOFF[1]) if backoff else CONNECTION_BACKOFF[0]
                if pacer is not None:
                    pacer.slow_down()
                await asyncio.sleep(backoff)
            except TemporaryError as exc:
                ledger.record(Outcome.of(rcpt, Result.TEMPORARY, code=exc.code, text=exc.text))
            except PermanentError as exc:
                ledger.record(
                    Outcome.of(rcpt, Result.PERMANENT, code=exc.code, text=exc.text, policy_block=exc.is_policy_block)
                )
            else:
                backoff = 0.0
                ledger.record(
                    Outcome.of(rcpt, Result.SENT, code=reply.code, text=reply.text, message_id=msg.message_id)
                )
    except BaseException:
        stop.set()
        # Not attempted: other connections may still send them; otherwise their claims are released.
        for prepared in (current, upcoming):
            if prepared is not None:
                queue.put_nowait(prepared[0])
        raise
    finally:
        if conn is not None:
            await conn.close()


# --- the batched path (ESP APIs) --------------------------------------------------------------------


def _esp_message(ctx: SendContext, rcpt: sendings.ClaimedRecipient) -> OutgoingMessage:
    """The recipient's message as bytes *and* fields: rendered once by our sandbox for every transport."""
    from mailshot_core.content.message import build_message
    from mailshot_core.transports.parts import with_parts

    who = ctx.personalise_claimed(rcpt)
    # Rendered once, kept as fields for the API and serialised by the plain builder (the MIME is only
    # read back for its bulk headers, and used as is by SES): MessageBuilder's pre-encoded fast path
    # gives bytes only.
    content = ctx.builder.compiled.render(who)
    msg = build_message(ctx.builder.env, rcpt.id, rcpt.email, who.nom, content, who.url_unsubscribe)
    return with_parts(msg, ctx.builder.env, who.nom, content)


def _reply_outcome(
    rcpt: sendings.ClaimedRecipient, msg: OutgoingMessage, reply: SendResult | TransportError
) -> Outcome:
    """What one recipient's part of an API call means for its row."""
    if isinstance(reply, SendResult):
        # The provider's id when it gives one per recipient: its events quote it.
        mid = reply.transport_id or msg.message_id
        return Outcome.of(rcpt, Result.SENT, code=reply.code, text=reply.text, message_id=mid)
    if isinstance(reply, Throttled):
        return Outcome.of(rcpt, Result.THROTTLED, code=reply.code, text=reply.text)
    if isinstance(reply, PermanentError):
        return Outcome.of(rcpt, Result.PERMANENT, code=reply.code, text=reply.text, policy_block=reply.is_policy_block)
    if isinstance(reply, ConfigurationError | TransportUnavailable):
        return Outcome.of(rcpt, Result.DEFERRED, code=reply.code, text=reply.text)
    return Outcome.of(rcpt, Result.TEMPORARY, code=reply.code, text=reply.text)


async def _batch_loop(
    transport: Transport,
    queue: asyncio.Queue[sendings.ClaimedRecipient],
    ledger: Ledger,
    ctx: SendContext,
    stop: asyncio.Event,
    pacer: Pacer | None,
) -> None:
    """One ESP connection: up to ``batch_size`` messages per API call.

    All messages of a call become ``sending`` in one flush before the call (one ledger transaction),
    so after a kill at most ``batch_size`` x connections rows are in doubt, instead of one per
    connection on the SMTP path (docs/ARCHITECTURE.md).
    """
    size = batch_size_of(transport)
    conn: BatchConnection | None = None
    backoff = 0.0
    try:
        while not stop.is_set():
            chunk: list[tuple[sendings.ClaimedRecipient, OutgoingMessage]] = []
            while len(chunk) < size:
                try:
                    rcpt = queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                try:
                    chunk.append((rcpt, _esp_message(ctx, rcpt)))
                except (TemplateError, HeaderError) as exc:
                    ledger.record(Outcome.of(rcpt, Result.PERMANENT, from_status=S.CLAIMED, text=str(exc)))
            if not chunk:
                return
            if conn is None:
                try:
                    conn = await cast(BatchTransport, transport).connect()
                except BaseException:
                    for rcpt, _ in chunk:
                        queue.put_nowait(rcpt)  # not attempted: released with the rest
                    raise
            if pacer is not None:
                slot = None
                for _ in chunk:  # one paced slot per message: the cadence counts messages, not calls
                    slot = await asyncio.to_thread(pacer.next_slot)
                assert slot is not None
                await ledger.wait_until(slot)
            granted = await asyncio.gather(*(ledger.start(rcpt.id) for rcpt, _ in chunk))
            chunk = [item for item, ok in zip(chunk, granted, strict=True) if ok]
            if not chunk:
                continue
            try:
                replies = await conn.send_many([msg for _, msg in chunk])
            except (TransportUnavailable, ConfigurationError) as exc:
                for rcpt, _ in chunk:  # the call never reached the provider, or it refuses us
                    ledger.record(Outcome.of(rcpt, Result.DEFERRED, code=exc.code, text=exc.text))
                raise
            except Throttled as exc:
                for rcpt, _ in chunk:
                    ledger.record(Outcome.of(rcpt, Result.THROTTLED, code=exc.code, text=exc.text))
                backoff = min(backoff * 2, CONNECTION_BACKOFF[1]) if backoff else CONNECTION_BACKOFF[0]
                if pacer is not None:
                    pacer.slow_down()
                await asyncio.sleep(max(backoff, min(exc.retry_after or 0.0, CONNECTION_BACKOFF[1])))
                continue
            except TemporaryError as exc:
                for rcpt, _ in chunk:
                    ledger.record(Outcome.of(rcpt, Result.TEMPORARY, code=exc.code, text=exc.text))
                continue
            backoff = 0.0
            refused: ConfigurationError | None = None
            for (rcpt, msg), reply in zip(chunk, replies, strict=True):
                ledger.record(_reply_outcome(rcpt, msg, reply))
                if isinstance(reply, ConfigurationError):
                    refused = refused or reply
            if refused is not None:
                raise refused
    except BaseException:
        stop.set()
        raise
    finally:
        if conn is not None:
            await conn.close()


async def _send_claimed(
    transport: Transport,
    claimed: list[sendings.ClaimedRecipient],
    ledger: Ledger,
    ctx: SendContext,
    pacer: Pacer | None = None,
) -> None:
    queue: asyncio.Queue[sendings.ClaimedRecipient] = asyncio.Queue()
    for rcpt in claimed:
        queue.put_nowait(rcpt)
    stop = asyncio.Event()
    width = max(1, min(transport.parallelism, len(claimed)))
    # ESP transports take many messages per call: their own loop (see _batch_loop).
    loop = _batch_loop if batch_size_of(transport) > 1 else _connection_loop
    results = await asyncio.gather(
        *(loop(transport, queue, ledger, ctx, stop, pacer) for _ in range(width)),
        return_exceptions=True,
    )
    await ledger.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    # A configuration error explains more than the disconnects it caused in sibling connections.
    errors.sort(key=lambda e: 0 if isinstance(e, ConfigurationError) else 1)
    if errors:
        raise errors[0]


def send_batch(
    engine: Engine,
    settings: Settings,
    mailshot_id: int,
    *,
    transport: Transport | None = None,
    clock: Clock = utcnow,
) -> BatchReport:
    """Claim one batch of due recipients and send it; the sending's state is in the database.

    Raises :class:`TransportUnavailable` when the relay cannot be reached (the batch's claims are
    released first, no try consumed): the caller retries the batch later.  A configuration error
    pauses the sending and is reported in ``BatchReport.stopped``.
    """
    # Each batch is its own worker (its own claims, heartbeat and pid), so batches can run in parallel in
    # threads, processes or machines, and a batch whose process died is recovered on its own.
    token = sendings.new_worker_token()
    with session_scope(engine) as session:
        mailshot = sendings.get(session, mailshot_id)
        if mailshot.status != MailshotStatus.PROCESSING:
            return BatchReport(stopped=f"sending is {mailshot.status}")
        sendings.register_worker(session, mailshot_id, token, clock())
    with session_scope(engine) as session:
        claimed, killed = sendings.claim(session, mailshot, token, settings.batch_size, clock())
    report = BatchReport(claimed=len(claimed) + killed, killed=killed)
    if not claimed:
        with session_scope(engine) as session:
            sendings.unregister_worker(session, mailshot_id, token)
        return report
    ctx = context_for(engine, settings, mailshot_id)
    transport = transport or get_transport(mailshot.transport, settings)
    ledger = Ledger(engine, mailshot_id, token, settings.max_try, settings.retry_delay, clock, report)
    cadence = sendings.cadence(mailshot, settings)
    pacer = Pacer(engine, mailshot.transport, cadence, clock) if cadence.limited else None
    try:
        try:
            asyncio.run(_send_claimed(transport, claimed, ledger, ctx, pacer))
        finally:
            if pacer is not None:
                pacer.close()
    except ConfigurationError as exc:
        with session_scope(engine) as session:
            m = sendings.get(session, mailshot_id)
            if m.status == MailshotStatus.PROCESSING:
                sendings.set_status(session, m, MailshotStatus.PAUSE, f"paused: {exc}")
        log.error("sending %s paused: %s", mailshot_id, exc)
        report.stopped = f"paused: {exc}"
    finally:
        with session_scope(engine) as session:
            sendings.unregister_worker(session, mailshot_id, token)  # releases what was not attempted
    return report


def send_batches(engine: Engine, settings: Settings, mailshot_id: int, *, clock: Clock = utcnow) -> BatchReport:
    """Batch after batch until nothing is due now or the sending stops: fast mode's worker.

    A fast-mode task runs in a process of its own, whose start (imports, task run, templates) costs far
    more than a batch's own set-up; looping here pays it once per worker instead of once per batch.
    Each batch is still its own worker in the database (claims, heartbeat, recovery), and pause or
    cancel is seen between batches.  Raises what :func:`send_batch` raises.
    """
    total = BatchReport()
    while True:
        report = send_batch(engine, settings, mailshot_id, clock=clock)
        total.add(report)
        if report.stopped or report.claimed == 0:
            return total


# --- test send --------------------------------------------------------------------------------------


def send_test(
    engine: Engine, settings: Settings, mailshot_id: int, email: str, *, transport: Transport | None = None
) -> OutgoingMessage:
    """One personalised message to any address, subject prefixed ``[TEST] ``; no recipient row changes.

    Variables come from the subscriber when the address is one (its lists among the sending's),
    otherwise from the address alone.
    """
    from sqlmodel import select

    from mailshot_core.audience.subscribers import current_lists, normalise_email
    from mailshot_core.errors import MailshotError
    from mailshot_core.store.models import Subscriber

    address = normalise_email(email)
    ctx = context_for(engine, settings, mailshot_id)
    with session_scope(engine) as session:
        mailshot = sendings.get(session, mailshot_id)
        names = sendings.list_identifiers(mailshot)
        sub = session.exec(select(Subscriber).where(Subscriber.email == address)).first()
        listes: tuple[str, ...] = tuple(names)
        nom = lang = ""
        status = "valid"
        if sub is not None:
            nom, lang, status = sub.nom, sub.lang, sub.status
            assert sub.id is not None
            mine = current_lists(session, sub.id)
            listes = tuple(n for n in names if n in mine) or listes
        row = session.exec(
            select(Recipient.id).where(Recipient.mailshot_id == mailshot_id, col(Recipient.email) == address)
        ).first()
        transport = transport or get_transport(mailshot.transport, settings)
    # Recipient 0: tracking links that record nothing (a test message is no recipient's).
    who = ctx.personalise(0, sub.id if sub is not None else None, address, nom, listes, lang, status)
    try:
        msg = ctx.message_for(row or 0, address, who, test=True)
    except (TemplateError, HeaderError) as exc:
        raise MailshotError(str(exc)) from None

    async def _go() -> None:
        conn = await transport.connect()
        try:
            await conn.send(msg)
        finally:
            await conn.close()

    try:
        asyncio.run(_go())
    except (TemporaryError, PermanentError, ConfigurationError) as exc:
        raise MailshotError(f"test message to {address} not sent: {exc}") from None
    return msg


# --- a whole sending --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    total: int
    transport: str
    released: int  # claims of dead workers put back in the queue
    in_doubt: int  # messages of dead workers whose fate is unknown


def start_sending(
    engine: Engine, settings: Settings, mailshot_id: int, *, run_id: str | None = None, clock: Clock = utcnow
) -> Started:
    """Open a sending: validate, start, recover dead claims, materialise once.

    Raises InvalidState when the sending cannot be sent now (paused, ended, cancelled, scheduled).
    """
    from mailshot_core.errors import InvalidState

    now = clock()
    with session_scope(engine) as session:
        # Locked first: two runs starting together (the dispatcher and an operator's `send`, fast-mode
        # workers) must not both see `materialised` false.  The second used to materialise again,
        # waiting on rows the first run's workers were updating while holding the sending's row those
        # workers needed for their counters: a deadlock on PostgreSQL (tests/test_workers.py, under load).
        mailshot = sendings.get(session, mailshot_id, lock=True)
        if mailshot.status == MailshotStatus.INIT:
            if mailshot.start_at is not None and mailshot.start_at > now:
                raise InvalidState(
                    f"sending {mailshot_id} is scheduled for {mailshot.start_at:%Y-%m-%d %H:%M} UTC; "
                    "it starts then (or resume it to start now)"
                )
            sendings.set_status(session, mailshot, MailshotStatus.PROCESSING)
        if mailshot.status != MailshotStatus.PROCESSING:
            reason = f" ({mailshot.status_reason})" if mailshot.status_reason else ""
            hint = " (mailshot resume ID first)" if mailshot.status == MailshotStatus.PAUSE else ""
            raise InvalidState(f"sending {mailshot_id} is '{mailshot.status}'{reason}: nothing to send{hint}")
        if mailshot.started_at is None:
            mailshot.started_at = now
        if run_id:
            mailshot.flow_run_id = run_id
        mailshot.status_reason = None
        session.add(mailshot)
        released, in_doubt = sendings.recover_dead_workers(
            session, mailshot_id, now, timedelta(seconds=settings.claim_lease)
        )
        if not mailshot.materialised:
            sendings.materialise(session, mailshot)
        total, transport = mailshot.total, mailshot.transport
    # Validate the templates and settings before the first batch (errors surface here, not mid-way).
    context_for(engine, settings, mailshot_id)
    return Started(total, transport, released, in_doubt)


@dataclass(frozen=True)
class Step:
    """What the sending loop does next: send a batch, wait (seconds), or stop (with why)."""

    action: str  # "send", "wait", "done", "stopped"
    seconds: float = 0.0
    reason: str = ""


def next_step(engine: Engine, settings: Settings, mailshot_id: int, *, clock: Clock = utcnow) -> Step:
    now = clock()
    with session_scope(engine) as session:
        sendings.recover_dead_workers(session, mailshot_id, now, timedelta(seconds=settings.claim_lease))
        p = sendings.progress(session, mailshot_id, now)
    if p.status != MailshotStatus.PROCESSING:
        return Step("stopped", reason=f"sending is {p.status}")
    if p.due:
        return Step("send")
    if p.next_due is not None:
        return Step("wait", seconds=max(0.05, (p.next_due - now).total_seconds()), reason="waiting for retries")
    if p.in_flight:
        return Step("wait", seconds=1.0, reason="other workers are finishing their batches")
    return Step("done")


def end_sending(engine: Engine, mailshot_id: int, *, finished: bool) -> Mailshot:
    """When nothing is left to send, end the sending (recount checked)."""
    with session_scope(engine) as session:
        if finished:
            return sendings.finish(session, mailshot_id)
        return sendings.get(session, mailshot_id)
