"""The per-connection loops of one batch: hand claimed recipients over, one connection each.

SMTP (:func:`_connection_loop`): one message at a time per connection, the next one's envelope
pipelined with the current data.  ESP APIs (:func:`_batch_loop`): up to the transport's
``batch_size`` messages per call.  Both start each message in the ledger before it leaves and record
its result before the connection starts another (ledger.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from mailshot_core.content.message import HeaderError, OutgoingMessage, build_message
from mailshot_core.content.render import TemplateError
from mailshot_core.sending import claims
from mailshot_core.sending.context import SendContext
from mailshot_core.sending.ledger import Ledger, Outcome, Result
from mailshot_core.sending.pacing import Pacer
from mailshot_core.store.models import RecipientStatus
from mailshot_core.transports.base import (
    BatchConnection,
    BatchTransport,
    ConfigurationError,
    Connection,
    PermanentError,
    SendResult,
    TemporaryError,
    Throttled,
    Transport,
    TransportError,
    TransportUnavailable,
    batch_size_of,
)
from mailshot_core.transports.parts import with_parts

S = RecipientStatus
log = logging.getLogger("mailshot.sending")
# How long a connection pauses after a "slow down" reply, doubling up to the maximum, reset on success.
CONNECTION_BACKOFF = (0.5, 30.0)
# How often a batch asks whether it must stop (the sending paused or cancelled, the run cancelled or
# suspended): a pause takes effect within about this long, in every mode (issue 13: within 5 s).
STOP_POLL_SECONDS = 1.0
# Messages in a row that cannot be built, before any could, that make it the sending's fault (_unbuildable).
WHOLE_SENDING_FAILURES = 5
# Asked every STOP_POLL_SECONDS, in a thread: why the batch must stop now, or None to go on.
StopCheck = Callable[[], str | None]


# Claims more recipients for the batch (in a thread, with the batch's worker token): what it got,
# or None when nothing more is due now.
Refill = Callable[[], list[claims.ClaimedRecipient] | None]


class Supply:
    """The batch's recipients waiting for a connection, topped up by ``refill`` when they run low.

    A batch used to end when its claim was sent: its connections closed, the next batch claimed and
    connected meanwhile, and the relay waited (~90 ms per batch, 16 % of a fast sending's time at 2,000
    per batch, issue 16).  Topping the queue up while it still holds ``low`` recipients keeps every
    connection busy from one claim to the next; the claims share the batch's worker token and ledger,
    so what was not attempted is still released with the batch.
    """

    def __init__(self, claimed: list[claims.ClaimedRecipient], refill: Refill | None, low: int) -> None:
        self._queue: asyncio.Queue[claims.ClaimedRecipient] = asyncio.Queue()
        for rcpt in claimed:
            self._queue.put_nowait(rcpt)
        self._refill, self._low = refill, low
        self._refilling: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    def get(self) -> claims.ClaimedRecipient | None:
        """The next recipient, or None when none waits (:meth:`more` says whether to wait for some)."""
        try:
            rcpt = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            rcpt = None
        if self._refill is not None and self._refilling is None and self._queue.qsize() < self._low:
            self._refilling = asyncio.get_running_loop().create_task(self._top_up(self._refill))
        return rcpt

    def put_back(self, rcpt: claims.ClaimedRecipient) -> None:
        self._queue.put_nowait(rcpt)

    async def more(self) -> bool:
        """None waiting: whether a top-up brought more (after waiting for the one in flight)."""
        if self._refilling is not None:
            await asyncio.shield(self._refilling)
        return not self._queue.empty()

    async def settle(self) -> None:
        """Wait for a top-up in flight (its claims must be made before the batch releases them)."""
        self._refill = None
        if self._refilling is not None:
            await asyncio.shield(self._refilling)

    async def _top_up(self, refill: Refill) -> None:
        try:
            got = await asyncio.to_thread(refill)
        except Exception as exc:  # the batch ends with it (send_claimed raises it)
            self.error, self._refill = exc, None
            got = None
        finally:
            self._refilling = None
        if not got:
            self._refill = None  # nothing more due now: the batch ends when its connections are done
            return
        for rcpt in got:
            self._queue.put_nowait(rcpt)


Prepared = tuple[claims.ClaimedRecipient, OutgoingMessage]


def _prepare_next(supply: Supply, ledger: Ledger, ctx: SendContext) -> Prepared | None:
    """The next recipient waiting with its message; None when none waits.

    A recipient whose message cannot be built (a template error at run time, a name unusable in a
    header) is skipped (:func:`_unbuildable` says whether it fails or the sending pauses).
    """
    while True:
        rcpt = supply.get()
        if rcpt is None:
            return None
        who = ctx.personalise_claimed(rcpt)
        try:
            prepared = rcpt, ctx.message_for(rcpt.id, rcpt.email, who)
        except (TemplateError, HeaderError) as exc:
            _unbuildable(ledger, rcpt, exc)
            continue
        ledger.built += 1
        return prepared


def _unbuildable(ledger: Ledger, rcpt: claims.ClaimedRecipient, exc: Exception) -> None:
    """A recipient whose message cannot be built fails, unless the fault is the sending's.

    Until a message of the batch has been built, failures are held back (the recipient goes back to
    the queue, no try used); when every one of the first WHOLE_SENDING_FAILURES (or of the whole batch,
    if smaller) fails, the template or a setting breaks every message: the sending pauses with the
    reason (ConfigurationError) instead of failing every recipient, and resumes once fixed.
    """
    if ledger.built:
        ledger.record(Outcome.of(rcpt, Result.PERMANENT, from_status=S.CLAIMED, text=str(exc)))
        return
    ledger.unbuilt += 1
    ledger.record(Outcome.of(rcpt, Result.DEFERRED, from_status=S.CLAIMED, text=str(exc)))
    if ledger.unbuilt >= min(WHOLE_SENDING_FAILURES, ledger.batch_claimed or WHOLE_SENDING_FAILURES):
        raise ConfigurationError(f"no message of the sending can be built ({exc}); fix it, then resume")


async def _connection_loop(
    transport: Transport,
    supply: Supply,
    ledger: Ledger,
    ctx: SendContext,
    stop: asyncio.Event,
    pacer: Pacer | None,
) -> None:
    """Send waiting recipients over one connection until none is left or ``stop`` is set.

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
            current, upcoming = upcoming or _prepare_next(supply, ledger, ctx), None
            if current is None:
                if await supply.more():
                    continue
                return
            rcpt, msg = current
            if conn is None:
                conn = await transport.connect()
            if pacer is not None and not await ledger.wait_until(await asyncio.to_thread(pacer.next_slot), stop):
                return  # stopped while waiting for its slot: `current` stays claimed, released with the batch
            if not await ledger.start(rcpt.id):
                await conn.withdraw()  # its envelope may be on the wire already
                continue
            current = None  # attempted from here on: no longer to give back
            upcoming = None if pacer is not None else _prepare_next(supply, ledger, ctx)
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
                supply.put_back(prepared[0])
        raise
    finally:
        if conn is not None:
            await conn.close()


# --- the batched path (ESP APIs) --------------------------------------------------------------------


def _esp_message(ctx: SendContext, rcpt: claims.ClaimedRecipient) -> OutgoingMessage:
    """The recipient's message as bytes *and* fields: rendered once by our sandbox for every transport."""
    who = ctx.personalise_claimed(rcpt)
    # Rendered once, kept as fields for the API and serialised by the plain builder (the MIME is only
    # read back for its bulk headers, and used as is by SES): MessageBuilder's pre-encoded fast path
    # gives bytes only.
    content = ctx.builder.compiled.render(who)
    msg = build_message(ctx.builder.env, rcpt.id, rcpt.email, who.nom, content, who.url_unsubscribe)
    return with_parts(msg, ctx.builder.env, who.nom, content)


def _reply_outcome(rcpt: claims.ClaimedRecipient, msg: OutgoingMessage, reply: SendResult | TransportError) -> Outcome:
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
    supply: Supply,
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
            chunk: list[tuple[claims.ClaimedRecipient, OutgoingMessage]] = []
            while len(chunk) < size:
                if (rcpt := supply.get()) is None:
                    break
                try:
                    chunk.append((rcpt, _esp_message(ctx, rcpt)))
                    ledger.built += 1
                except (TemplateError, HeaderError) as exc:
                    _unbuildable(ledger, rcpt, exc)
            if not chunk:
                if await supply.more():
                    continue
                return
            if conn is None:
                try:
                    conn = await cast(BatchTransport, transport).connect()
                except BaseException:
                    for rcpt, _ in chunk:
                        supply.put_back(rcpt)  # not attempted: released with the rest
                    raise
            if pacer is not None:
                slot = None
                for _ in chunk:  # one paced slot per message: the cadence counts messages, not calls
                    slot = await asyncio.to_thread(pacer.next_slot)
                assert slot is not None
                if not await ledger.wait_until(slot, stop):
                    return  # stopped while waiting: the chunk stays claimed, released with the batch
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


async def send_claimed(
    transport: Transport,
    claimed: list[claims.ClaimedRecipient],
    ledger: Ledger,
    ctx: SendContext,
    pacer: Pacer | None = None,
    should_stop: StopCheck | None = None,
    refill: Refill | None = None,
) -> None:
    """Send the claimed recipients over the transport's connections; ``should_stop`` is asked every
    STOP_POLL_SECONDS and a reason it gives stops every connection before its next message (what was
    not attempted stays claimed: the batch releases it).  ``refill``: claims more for the batch as
    the waiting recipients run low, until it finds none due (:class:`Supply`)."""
    ledger.batch_claimed = len(claimed)
    width = max(1, min(transport.parallelism, len(claimed)))
    supply = Supply(claimed, refill, low=max(2 * width, len(claimed) // 2))
    stop = asyncio.Event()
    # ESP transports take many messages per call: their own loop (see _batch_loop).
    loop = _batch_loop if batch_size_of(transport) > 1 else _connection_loop
    watcher = asyncio.create_task(_watch(stop, should_stop, ledger)) if should_stop is not None else None
    try:
        results: list[BaseException | None] = await asyncio.gather(
            *(loop(transport, supply, ledger, ctx, stop, pacer) for _ in range(width)),
            return_exceptions=True,
        )
    finally:
        stop.set()
        await supply.settle()
        if watcher is not None:
            await watcher
    await ledger.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    if supply.error is not None:
        errors.append(supply.error)
    # A configuration error explains more than the disconnects it caused in sibling connections.
    errors.sort(key=lambda e: 0 if isinstance(e, ConfigurationError) else 1)
    if errors:
        raise errors[0]


async def _watch(stop: asyncio.Event, should_stop: StopCheck, ledger: Ledger) -> None:
    """Ask ``should_stop`` every STOP_POLL_SECONDS until the batch ends; a reason stops it."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), STOP_POLL_SECONDS)
            return
        except TimeoutError:
            pass
        try:
            reason = await asyncio.to_thread(should_stop)
        except Exception as exc:  # a failing check must not stop the mail: the next one may work
            log.warning("could not check whether sending %s must stop: %s", ledger.mailshot_id, exc)
            continue
        if reason:
            ledger.report.stopped = reason
            stop.set()
