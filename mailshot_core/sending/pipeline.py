"""The send pipeline for one batch: claim -> render -> hand over -> record.

A batch is its own worker in the database (claims, heartbeat, recovery): :func:`send_batch` claims,
hands the recipients to the connection loops (connections.py), whose every transition goes through
the ledger (ledger.py), and unregisters.  :func:`send_batches` is fast mode's worker: batch after batch.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.engine import Engine

from mailshot_core.config import Settings
from mailshot_core.sending import claims, sendings
from mailshot_core.sending.connections import send_claimed
from mailshot_core.sending.context import context_for
from mailshot_core.sending.ledger import BatchReport, Clock, Ledger
from mailshot_core.sending.pacing import Pacer
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import MailshotStatus, utcnow
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
) -> BatchReport:
    """Claim one batch of due recipients and send it; the sending's state is in the database.

    Raises :class:`TransportUnavailable` when the relay cannot be reached (the batch's claims are
    released first, no try consumed): the caller retries the batch later.  A configuration error
    pauses the sending and is reported in ``BatchReport.stopped``.
    """
    # Each batch is its own worker (its own claims, heartbeat and pid), so batches can run in parallel in
    # threads, processes or machines, and a batch whose process died is recovered on its own.
    token = claims.new_worker_token()
    with session_scope(engine) as session:
        mailshot = sendings.get(session, mailshot_id)
        if mailshot.status != MailshotStatus.PROCESSING:
            return BatchReport(stopped=f"sending is {mailshot.status}")
        claims.register_worker(session, mailshot_id, token, clock())
    with session_scope(engine) as session:
        claimed, killed = claims.claim(session, mailshot, token, settings.batch_size, clock())
    report = BatchReport(claimed=len(claimed) + killed, killed=killed)
    if not claimed:
        with session_scope(engine) as session:
            claims.unregister_worker(session, mailshot_id, token)
        return report
    ctx = context_for(engine, settings, mailshot_id)
    transport = transport or get_transport(mailshot.transport, settings)
    ledger = Ledger(engine, mailshot_id, token, settings.max_try, settings.retry_delay, clock, report)
    cadence = sendings.cadence(mailshot, settings)
    pacer = Pacer(engine, mailshot.transport, cadence, clock) if cadence.limited else None
    try:
        try:
            asyncio.run(send_claimed(transport, claimed, ledger, ctx, pacer))
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
            claims.unregister_worker(session, mailshot_id, token)  # releases what was not attempted
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
