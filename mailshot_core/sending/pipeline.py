"""The send pipeline for one batch: claim -> render -> hand over -> record.

A batch is its own worker in the database (claims, heartbeat, recovery): :func:`send_batch` claims,
hands the recipients to the connection loops (connections.py), whose every transition goes through
the ledger (ledger.py), and unregisters.  :func:`send_batches` is fast mode's worker: batch after batch.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.engine import Engine

from mailshot_core.config import Settings
from mailshot_core.sending import claims, sendings
from mailshot_core.sending.connections import StopCheck, send_claimed
from mailshot_core.sending.context import context_for
from mailshot_core.sending.ledger import BatchReport, Clock, Ledger
from mailshot_core.sending.pacing import Pacer
from mailshot_core.store.db import is_sqlite, session_scope
from mailshot_core.store.models import Mailshot, MailshotStatus, utcnow
from mailshot_core.transports import get_transport
from mailshot_core.transports.base import ConfigurationError, Transport

log = logging.getLogger("mailshot.sending")


def send_batch(
    engine: Engine,
    settings: Settings,
    mailshot_id: int,
    *,
    transport: Transport | None = None,
    clock: Clock = utcnow,
    run_id: str | None = None,
    outside_stop: StopCheck | None = None,
    size: int | None = None,
    keep_claiming: Callable[[], bool] | None = None,
) -> BatchReport:
    """Claim one batch of due recipients and send it; the sending's state is in the database.

    Raises :class:`TransportUnavailable` when the relay cannot be reached (the batch's claims are
    released first, no try consumed): the caller retries the batch later.  A configuration error
    pauses the sending and is reported in ``BatchReport.stopped``.

    While it sends, every STOP_POLL_SECONDS the batch reads the sending's status (a pause or cancel
    from the CLI, the pages or another process stops it before its next message) and asks
    ``outside_stop`` (the orchestrator's view: the run cancelled or suspended); a reason from there
    pauses the sending with that reason, then stops.  ``run_id``: the send run whose record
    (runs.py) this batch adds to.  ``size``: how many to claim (default MAILSHOT_BATCH_SIZE).
    ``keep_claiming``: while it says so, the batch claims MAILSHOT_BATCH_SIZE more whenever what it
    holds runs low, keeping its connections busy until nothing is due (connections.Supply).
    """
    # Each batch is its own worker (its own claims, heartbeat and pid), so batches can run in parallel in
    # threads, processes or machines, and a batch whose process died is recovered on its own.
    if _terminating is not None:  # this process is being terminated: no new batch
        return BatchReport(stopped=_terminating)
    token = claims.new_worker_token()
    with session_scope(engine) as session:
        mailshot = sendings.get(session, mailshot_id)
        if mailshot.status != MailshotStatus.PROCESSING:
            return BatchReport(stopped=f"sending is {mailshot.status}")
        claims.register_worker(session, mailshot_id, token, clock(), run_id)
    with session_scope(engine) as session:
        claimed, killed = claims.claim(session, mailshot, token, size or settings.batch_size, clock())
    report = BatchReport(claimed=len(claimed) + killed, killed=killed)
    if not claimed:
        with session_scope(engine) as session:
            claims.unregister_worker(session, mailshot_id, token)
        return report
    ctx = context_for(engine, settings, mailshot_id)
    transport = transport or get_transport(mailshot.transport, settings)
    ledger = Ledger(engine, mailshot_id, token, settings.max_try, settings.retry_delay, clock, report, run_id)
    cadence = sendings.cadence(mailshot, settings)
    pacer = Pacer(engine, mailshot.transport, cadence, clock) if cadence.limited else None
    stop = _BatchStop(engine, mailshot_id, outside_stop)

    def claim_more() -> list[claims.ClaimedRecipient] | None:
        if keep_claiming is None or not keep_claiming():
            return None
        while True:
            with session_scope(engine) as session:
                more, gone = claims.claim(session, mailshot, token, settings.batch_size, clock())
            report.claimed += len(more) + gone
            report.killed += gone
            ledger.batch_claimed += len(more)
            if more or not gone:  # a claim of unsubscribed recipients only: claim again
                return more or None

    try:
        try:
            started = time.monotonic()
            with _SENDING_HERE_LOCK:
                _SENDING_HERE.add(stop)
                stop.halted = _terminating  # terminated between its claim and here
            try:
                refill = claim_more if keep_claiming is not None else None
                asyncio.run(send_claimed(transport, claimed, ledger, ctx, pacer, stop, refill))
            finally:
                report.seconds = time.monotonic() - started
                with _SENDING_HERE_LOCK:
                    _SENDING_HERE.discard(stop)
        finally:
            if pacer is not None:
                pacer.close()
    except ConfigurationError as exc:
        with session_scope(engine) as session:
            sendings.pause_if_processing(session, mailshot_id, f"paused: {exc}")
        log.error("sending %s paused: %s", mailshot_id, exc)
        report.stopped = f"paused: {exc}"
    finally:
        with session_scope(engine) as session:
            claims.unregister_worker(session, mailshot_id, token)  # releases what was not attempted
    return report


class _BatchStop:
    """Why the batch must stop now: the sending left ``processing``, the outside check says so (then
    the sending is paused with its reason, so nothing restarts it behind the operator's back), or its
    process is being terminated (:func:`stop_batches_here`)."""

    def __init__(self, engine: Engine, mailshot_id: int, outside: StopCheck | None) -> None:
        table = Mailshot.__table__  # type: ignore[attr-defined]
        self._status_of = select(table.c.status, table.c.status_reason).where(table.c.id == mailshot_id)
        self._engine = engine
        self._mailshot_id = mailshot_id
        self._outside = outside
        self.halted: str | None = None
        self.thread = threading.get_ident()  # the thread sending the batch

    def __call__(self) -> str | None:
        if self.halted:
            return self.halted
        with self._engine.connect() as conn:  # a read: never waits for the ledger's write lock
            row = conn.execute(self._status_of).one()
        if row.status != MailshotStatus.PROCESSING:
            return f"sending is {row.status}" + (f" ({row.status_reason})" if row.status_reason else "")
        reason = self._outside() if self._outside is not None else None
        if reason:
            with session_scope(self._engine) as session:
                sendings.pause_if_processing(session, self._mailshot_id, reason)
        return reason


# The batches sending in this process now, for stop_batches_here; once the process is being
# terminated, why (no new batch starts then).
_SENDING_HERE: set[_BatchStop] = set()
_SENDING_HERE_LOCK = threading.Lock()
_terminating: str | None = None


def stop_batches_here(reason: str, *, thread: int | None = None) -> None:
    """Stop the batches this process is sending (those of ``thread`` only, if given) before their next
    message, within STOP_POLL_SECONDS, what they had not attempted released for another worker;
    ``reason`` is their report's ``stopped``.  Without ``thread``: the process is being terminated
    (an orchestrator's SIGTERM), and no batch starts in it any more.

    Python waits for the batches' threads before it exits, and a paced batch would otherwise go on
    sending for minutes, until its end or the SIGKILL that leaves its messages in flight in doubt.
    The sending's status is not changed: a cancellation pauses it (the caller's decision); a process
    stopping for another reason leaves it to be resumed.
    """
    global _terminating
    with _SENDING_HERE_LOCK:
        if thread is None:
            _terminating = reason
        for stop in _SENDING_HERE:
            if thread is None or stop.thread == thread:
                stop.halted = reason


def send_batches(
    engine: Engine,
    settings: Settings,
    mailshot_id: int,
    *,
    clock: Clock = utcnow,
    run_id: str | None = None,
    outside_stop: StopCheck | None = None,
) -> BatchReport:
    """Batch after batch until nothing is due now or the sending stops: fast mode's worker.

    A fast-mode task runs in a process of its own, whose start (imports, task run, templates) costs far
    more than a batch's own set-up; looping here pays it once per worker instead of once per batch.
    A batch here claims more as it runs low, until nothing is due (its connections stay open from one
    claim to the next); another starts when a streamed materialisation brings more.  Each batch is its
    own worker in the database (claims, heartbeat, recovery).  Raises what :func:`send_batch` raises.
    """
    total = BatchReport()
    idle_since: float | None = None
    while True:
        report = send_batch(
            engine, settings, mailshot_id, clock=clock, run_id=run_id, outside_stop=outside_stop, keep_claiming=_always
        )
        total.add(report)
        if report.stopped:
            return total
        if report.claimed:
            idle_since = None
            continue
        idle_since = idle_since or time.monotonic()
        if time.monotonic() - idle_since > MATERIALISE_PATIENCE_SECONDS or not _materialising(engine, mailshot_id):
            return total  # the flow starts another worker if more becomes due
        time.sleep(MATERIALISE_POLL_SECONDS)  # caught up with a streamed materialisation: more is coming


def _always() -> bool:
    return True


def sends_in_one_process(engine: Engine, settings: Settings, mailshot_id: int) -> bool:
    """Whether fast mode should send this sending from one process rather than one per core.

    On SQLite, when messages are cheap to build (pre-encoded templates: text and ``{{ variable }}``
    only), the single write lock is the limit: two sending processes sent slower than one, at more
    CPU per message, and their start-up (imports) cost seconds of CPU on the way (bench/RESULTS.md,
    issue 16).  Templates that Jinja2 renders for every message are CPU-bound: processes pay off
    there, as on PostgreSQL (no single writer).  A cross-run connection cap keeps the pool too: its
    slots are shared between processes and runs.
    """
    if not is_sqlite(engine) or settings.max_connections is not None:
        return False
    return context_for(engine, settings, mailshot_id).builder.pre_encoded


HEAD_START_FIRST_PER_CONNECTION = 4


def send_head_start(
    engine: Engine,
    settings: Settings,
    mailshot_id: int,
    *,
    start_pool: Callable[[], None],
    pool_ready: Callable[[], bool],
    clock: Clock = utcnow,
    run_id: str | None = None,
    outside_stop: StopCheck | None = None,
) -> BatchReport:
    """Fast mode's first batches, sent by the run's own process while its worker processes start.

    A spawned worker imports Prefect and the flow before its first claim (seconds on 2 cores, measured
    in bench/RESULTS.md): the run's process has all of that loaded already, so it sends batch after
    batch itself until ``pool_ready()`` says a worker process has claimed, then leaves the sending to
    them.  The pool is started (``start_pool``) only once the first, small batch is sent: its
    processes' imports take both cores of a small machine, and the first message waited for them.
    Each batch is an ordinary one (its own worker row, claims and ledger), so every guarantee holds
    unchanged.  Raises what :func:`send_batch` raises.
    """
    total = BatchReport()
    # The first batch is small: claiming and building 2,000 messages while the pool's processes import
    # took ~0.4 s before the first message left (bench/RESULTS.md); a few per connection go at once.
    size = min(settings.batch_size, HEAD_START_FIRST_PER_CONNECTION * settings.smtp_connections)
    started = False

    def pool_not_ready() -> bool:
        return not pool_ready()

    while not started or not pool_ready():
        # After the first: one batch claiming more until the pool is ready (connections.Supply).
        report = send_batch(
            engine,
            settings,
            mailshot_id,
            clock=clock,
            run_id=run_id,
            outside_stop=outside_stop,
            size=size,
            keep_claiming=pool_not_ready if started else None,
        )
        size = settings.batch_size
        if not started and not report.stopped and report.claimed:
            start_pool()
            started = True
        total.add(report)
        if report.stopped or report.claimed == 0:
            break
    return total


# A worker that caught up with a streamed materialisation looks again this often (lifecycle.Materialiser
# keeps rows ahead of the claimers, so this is rare), and gives up after this long without a claim.
MATERIALISE_POLL_SECONDS = 0.05
MATERIALISE_PATIENCE_SECONDS = 10.0


def _materialising(engine: Engine, mailshot_id: int) -> bool:
    table = Mailshot.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:  # one short read
        return not conn.execute(select(table.c.materialised).where(table.c.id == mailshot_id)).scalar_one()
