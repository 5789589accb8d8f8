"""A whole sending's life in a run: start (validate, recover, materialise), the next step, the end.

The flow (flows/send_mailshot.py) loops on :func:`next_step` between :func:`start_sending` and
:func:`end_sending`; pause and cancel are database states, seen at every step.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailshot_core.config import Settings
from mailshot_core.errors import InvalidState
from mailshot_core.sending import claims, sendings
from mailshot_core.sending.context import context_for
from mailshot_core.sending.ledger import Clock
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import Mailshot, MailshotStatus, utcnow

log = logging.getLogger("mailshot.sending")

# A streamed materialisation's chunk: 10,000 rows hold SQLite's write lock for ~70 ms (1,000,000 in
# 6.9 s, bench/RESULTS.md), short enough for the ledger's commits to wait, long enough to keep ahead.
CHUNK = 10_000
# How often a claimer looks again while recipients are still being materialised.
LOOK_AHEAD_SECONDS = 0.05
# How often the materialiser looks whether the claimers are catching up: a scan of up to `ahead` index
# entries, which every 50 ms took ~7 % of a fast sending's CPU (py-spy, issue 16).  At 0.25 s a sender
# at 10,000 msg/s uses 2,500 of the >= 10,000 rows kept ahead between two looks.
MATERIALISER_POLL_SECONDS = 0.25


class Materialiser:
    """Materialises the rest of a sending's recipients in a thread, chunk after chunk, keeping at least
    ``ahead`` never-claimed rows in front of the claimers (issue 16: the first batch leaves before the
    last subscriber is read).

    Each chunk is its own transaction, taken on the sending's locked row: it stops when the sending
    leaves ``processing`` (a cancel between chunks gets no new ``todo`` rows) or when the audience is
    exhausted (the sending is then marked materialised).  Killed with its process, it leaves the
    sending unmaterialised: the next run's :func:`start_sending` goes on from the last chunk committed.
    """

    def __init__(self, engine: Engine, mailshot_id: int, after: int, ahead: int, chunk: int = CHUNK) -> None:
        self._engine, self._mailshot_id, self._after = engine, mailshot_id, after
        self._ahead, self._chunk = max(ahead, chunk), chunk
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"mailshot-{mailshot_id}-materialise", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        after: int | None = self._after
        try:
            while after is not None and not self._stop.is_set():
                with self._engine.connect() as conn:  # one short read
                    enough = claims.unclaimed_at_least(Session(bind=conn), self._mailshot_id, self._ahead)
                if enough:
                    self._stop.wait(MATERIALISER_POLL_SECONDS)
                    continue
                with session_scope(self._engine) as session:
                    mailshot = sendings.get(session, self._mailshot_id, lock=True)
                    if mailshot.status != MailshotStatus.PROCESSING or mailshot.materialised:
                        return
                    after = claims.materialise_next(session, mailshot, after, self._chunk)
        except BaseException as exc:  # re-raised in the run by check(): never lost in a thread
            self.error = exc
            log.error("sending %s: materialising its recipients failed: %s", self._mailshot_id, exc)

    def check(self) -> None:
        """Raise what stopped the thread, if anything did (the run must not wait for it for ever)."""
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def ended(self, timeout: float) -> bool:
        """Whether the thread ended by itself (audience exhausted, sending stopped) within ``timeout``."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


def stream_ahead(settings: Settings, parallel: int) -> int:
    """How many never-claimed recipients a streamed materialisation keeps ahead of ``parallel`` workers:
    two rounds of batches."""
    return 2 * settings.batch_size * max(1, parallel)


@dataclass(frozen=True)
class Started:
    total: int  # recipients so far (all of them unless ``materialiser`` is still adding)
    transport: str
    released: int  # claims of dead workers put back in the queue
    in_doubt: int  # messages of dead workers whose fate is unknown
    materialiser: Materialiser | None = None  # streaming: the rest of the recipients, being added


def start_sending(
    engine: Engine,
    settings: Settings,
    mailshot_id: int,
    *,
    run_id: str | None = None,
    clock: Clock = utcnow,
    stream: int = 0,
) -> Started:
    """Open a sending: validate, start, recover dead claims, materialise once.

    ``stream``: when > 0, only the first chunk of recipients is materialised here and the returned
    ``Started.materialiser`` (already running) adds the rest, keeping ``stream`` unclaimed recipients
    ahead of the workers; the caller stops it when the run ends.  Raises InvalidState when the sending
    cannot be sent now (paused, ended, cancelled, scheduled).
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
        after: int | None = None
        if not mailshot.materialised and stream:
            after = claims.materialise_next(session, mailshot, claims.materialised_up_to(session, mailshot_id), CHUNK)
            session.refresh(mailshot)
        elif not mailshot.materialised:
            claims.materialise(session, mailshot)
        total, transport = mailshot.total, mailshot.transport
    # Validate the templates and settings before the first batch (errors surface here, not mid-way).
    context_for(engine, settings, mailshot_id)
    materialiser = None
    if after is not None:
        materialiser = Materialiser(engine, mailshot_id, after, stream)
        materialiser.start()
    return Started(total, transport, released, in_doubt, materialiser)


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
    if p.materialising:
        return Step("wait", seconds=LOOK_AHEAD_SECONDS, reason="recipients are still being materialised")
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
