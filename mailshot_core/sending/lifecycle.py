"""A whole sending's life in a run: start (validate, recover, materialise), the next step, the end.

The flow (flows/send_mailshot.py) loops on :func:`next_step` between :func:`start_sending` and
:func:`end_sending`; pause and cancel are database states, seen at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.engine import Engine

from mailshot_core.config import Settings
from mailshot_core.errors import InvalidState
from mailshot_core.sending import claims, sendings
from mailshot_core.sending.context import context_for
from mailshot_core.sending.ledger import Clock
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import Mailshot, MailshotStatus, utcnow


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
    now = clock()
    with session_scope(engine) as session:
        # Locked first: two runs starting together (the dispatcher and an operator's `send`, fast-mode
        # workers) must not both see `materialised` false.  The second used to materialise again,
        # waiting on rows the first run's workers were updating while holding the sending's row those
        # workers needed for their counters: a deadlock on PostgreSQL (tests/sending/test_workers.py, under load).
        mailshot = sendings.get(session, mailshot_id, lock=True)
        if mailshot.status == MailshotStatus.DRAFT:  # a run of a draft is the operator saying "send"
            sendings.send_now(session, mailshot_id, now)
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
        released, in_doubt = claims.recover_dead_workers(
            session, mailshot_id, now, timedelta(seconds=settings.claim_lease)
        )
        if not mailshot.materialised:
            claims.materialise(session, mailshot)
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
        claims.recover_dead_workers(session, mailshot_id, now, timedelta(seconds=settings.claim_lease))
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
