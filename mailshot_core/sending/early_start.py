"""`mailshot send`'s first batches, sent while its Prefect run starts (issue 16).

Before the send-mailshot flow sends anything, the command imports Prefect and the flow, and Prefect's
engine creates the run on its server — a server the command may first have to start itself
(flows/ephemeral.py: ~4 s to its first answer on 2 cores).  The relay could be busy meanwhile: an
:class:`EarlyStart` sends from a thread of the command, batch after batch (pipeline.send_head_start:
each an ordinary batch with its own worker row, claims and ledger, so every guarantee holds), under a
run record of its own, the sending's run slot holding run_slot's placeholder ("a run is being
created").  The flow, once it runs in the same process, takes it over (:func:`take_over`): the thread
ends after the batch in flight (halted after HANDOVER_SECONDS), its record is merged into the flow
run's (runs.adopt), which is the one operators read, and its attempts count as the run's.

Only for sendings that go as fast as the relay allows: a paced sending gains nothing from a few
seconds, and a cross-run connection cap (MAILSHOT_MAX_CONNECTIONS) is Prefect's to enforce.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from sqlalchemy.engine import Engine

from mailshot_core.config import Settings
from mailshot_core.errors import MailshotError
from mailshot_core.sending import run_slot, runs, sendings
from mailshot_core.sending.ledger import BatchReport
from mailshot_core.sending.lifecycle import Started, start_sending, stream_ahead
from mailshot_core.sending.pipeline import send_head_start, stop_batches_here
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import MailshotStatus, utcnow

log = logging.getLogger("mailshot.sending")

# An early start's run id begins so (the rest is a local run id): record_dead_runs closes the record of
# one whose command died before its flow took over.
EARLY_RUN_PREFIX = "early-"

# How long the run waits for the early batch in flight to end by itself before halting it.
HANDOVER_SECONDS = 5.0

# The early starts of this process, by sending, until their flow takes them over.
_WAITING: dict[int, EarlyStart] = {}
_WAITING_LOCK = threading.Lock()


class EarlyStart:
    """``early = EarlyStart(...); early.start()``, then the flow's :func:`take_over` (or, when no flow
    ran, :meth:`abandon`)."""

    def __init__(self, engine: Engine, settings: Settings, mailshot_id: int, *, parallel: int) -> None:
        self._engine, self._settings, self._mailshot_id = engine, settings, mailshot_id
        self._ahead = stream_ahead(settings, parallel)
        self.run_id = EARLY_RUN_PREFIX + runs.local_run_id()
        self._handed_over = threading.Event()
        self._opened = False
        self.report = BatchReport()  # what it sent
        self.began = utcnow()  # its attempts from here count for the run's circuit breaker (fail_rule.breaker)
        self._thread = threading.Thread(target=self._run, name=f"mailshot-{mailshot_id}-early", daemon=True)

    def start(self) -> bool:
        """Start sending, if this sending goes out at full speed now; whether it started."""
        if self._settings.max_connections is not None:
            return False
        with session_scope(self._engine) as session:
            mailshot = sendings.get(session, self._mailshot_id)
            if sendings.cadence(mailshot, self._settings).limited:
                return False
            if mailshot.status not in (MailshotStatus.PROCESSING, MailshotStatus.DRAFT):
                return False  # paused, ended, scheduled...: the flow says why, in its run
        with _WAITING_LOCK:
            if self._mailshot_id in _WAITING:
                return False
            _WAITING[self._mailshot_id] = self
        self._thread.start()
        return True

    def _run(self) -> None:
        started: Started | None = None
        try:
            # The sending's run slot (mailshot.flow_run_id) says "a run is being created" (run_slot's
            # placeholder, until the flow writes its id): an `early-` id there would look like a dead run
            # to the dispatcher and the pages, which would start another.
            started = start_sending(
                self._engine,
                self._settings,
                self._mailshot_id,
                run_id=run_slot.placeholder(self.began),
                stream=self._ahead,
            )
            with session_scope(self._engine) as session:
                runs.open_run(session, self.run_id, sendings.get(session, self._mailshot_id))
            self._opened = True
            self.report = send_head_start(
                self._engine,
                self._settings,
                self._mailshot_id,
                start_pool=lambda: None,
                pool_ready=self._handed_over.is_set,
                run_id=self.run_id,
            )
            log.info("sending %s: %s sent before its run started", self._mailshot_id, self.report.sent)
        except (MailshotError, OSError) as exc:  # the flow meets it again, and says so in its run
            log.info("sending %s: not started early: %s", self._mailshot_id, exc)
        except Exception:
            log.exception("sending %s: the early start failed (its run sends everything)", self._mailshot_id)
        finally:
            if started is not None and started.materialiser is not None:
                started.materialiser.stop()  # the run's own start goes on from the last chunk

    def hand_over(self) -> str | None:
        """End the thread after its batch in flight (halted if that takes more than HANDOVER_SECONDS: a
        throttling relay can hold it for minutes); the run id of what it sent, if it opened one."""
        self._handed_over.set()
        self._thread.join(HANDOVER_SECONDS)
        if self._thread.is_alive():
            stop_batches_here("handed over to its run", thread=self._thread.ident)
            self._thread.join()
        self.report.stopped = None  # the run decides whether to stop, from the sending's state now
        with _WAITING_LOCK:
            _WAITING.pop(self._mailshot_id, None)
        return self.run_id if self._opened else None

    def abandon(self, reason: str) -> None:
        """No flow took over (it could not start, or the command was interrupted): stop, close the record."""
        with _WAITING_LOCK:
            if _WAITING.get(self._mailshot_id) is not self:
                return
        run_id = self.hand_over()
        if run_id is not None:
            with session_scope(self._engine) as session:
                runs.close_run(session, run_id, reason=reason)


def take_over(engine: Engine, mailshot_id: int, run_id: str) -> tuple[BatchReport, datetime | None]:
    """The flow run ``run_id`` (its record open) takes over this process's early start of the sending,
    if there is one: the early batches end, and their record becomes part of the run's.  Returns what
    they sent (the run's own figures start from it) and when they began (None without an early start)."""
    with _WAITING_LOCK:
        early = _WAITING.get(mailshot_id)
    if early is None:
        return BatchReport(), None
    early_run = early.hand_over()
    if early_run is not None:
        with session_scope(engine) as session:
            runs.adopt(session, early_run, run_id)
    return early.report, early.began
