"""Events applied on arrival: the web app hands each webhook's stored ids to one background thread.

ESP feedback must change recipients within a minute of receipt, while the apply-feedback deployment
runs only hourly (a Prefect flow run every minute made 1,440 runs a day on an idle site).  So the
webhook stores the events (inbox.store, the providers' short timeouts still apply: the answer does
not wait) and this thread applies those ids at once (inbox.apply_pending, the same transaction and
rules as the sweep, MAX_FAIL included).  Events about a row being handed over right now are deferred
by the inbox; they are tried again a few times within the minute, and whatever is still pending
(or was stored when the process stopped) is applied by the hourly sweep.

One thread for the whole app, not one per request: ids that arrive while it works are applied
together next, so a burst of webhooks makes a few transactions, not one contending writer each.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable

from sqlalchemy.engine import Engine

from mailshot_core.feedback.inbox import ApplyReport, apply_pending

log = logging.getLogger("mailshot.feedback.applier")

# Seconds before trying deferred events again: ~37 s in all, inside the minute promised.
RETRY_AFTER = (2.0, 5.0, 10.0, 20.0)
CHUNK = 500  # events per transaction, as apply_all


class Applier:
    def __init__(
        self,
        engine: Engine,
        *,
        max_fail: int | None,
        retry_after: tuple[float, ...] = RETRY_AFTER,
        clock: Callable[[], float] = time.monotonic,
        apply: Callable[..., ApplyReport] = apply_pending,  # tests wrap it to act between two attempts
    ) -> None:
        self._engine = engine
        self._apply = apply
        self._max_fail = max_fail
        self._retry_after = retry_after
        self._clock = clock
        self._due: list[tuple[float, int, tuple[int, ...]]] = []  # (when, attempt, ids), a heap
        self._cond = threading.Condition()
        self._busy = False
        self._thread: threading.Thread | None = None
        # What this applier did so far (applied: each event exactly once across all appliers and sweeps).
        self.report = ApplyReport()

    def submit(self, ids: Iterable[int]) -> None:
        """Apply these stored events as soon as possible (returns at once)."""
        batch = tuple(ids)
        if not batch:
            return
        with self._cond:
            heapq.heappush(self._due, (self._clock(), 0, batch))
            if self._thread is None:  # started on first use: an app that gets no webhook has no thread
                self._thread = threading.Thread(target=self._run, name="mailshot-feedback-applier", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    @property
    def applied(self) -> int:
        return self.report.applied

    def wait_idle(self, timeout: float) -> bool:
        """Until nothing is queued nor being applied (tests, shutdown); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._due and not self._busy, timeout)

    def _take_due(self) -> tuple[int, list[int]]:
        """Wait for due work; returns the highest attempt number among it and the ids, merged."""
        with self._cond:
            while True:
                now = self._clock()
                if self._due and self._due[0][0] <= now:
                    attempt = 0
                    ids: list[int] = []
                    while self._due and self._due[0][0] <= now:
                        _, tried, batch = heapq.heappop(self._due)
                        attempt = max(attempt, tried)
                        ids.extend(batch)
                    self._busy = True
                    return attempt, sorted(set(ids))
                self._cond.wait(self._due[0][0] - now if self._due else None)

    def _run(self) -> None:
        while True:
            attempt, ids = self._take_due()
            deferred: list[int] = []
            done = ApplyReport()
            try:
                for start in range(0, len(ids), CHUNK):
                    chunk = ids[start : start + CHUNK]
                    report = self._apply(self._engine, ids=chunk, limit=len(chunk), max_fail=self._max_fail)
                    done.add(report)
                    log.debug("applied %s of %s event(s) on arrival", report.applied, len(chunk))
                    if report.deferred:
                        deferred.extend(chunk)  # applying again skips the applied ones (applied_at)
            except Exception:  # the database is away: the hourly apply-feedback sweep applies them
                log.warning("feedback events %s..%s not applied on arrival", ids[0], ids[-1], exc_info=True)
            with self._cond:
                self.report.add(done)
                if deferred and attempt < len(self._retry_after):
                    heapq.heappush(
                        self._due, (self._clock() + self._retry_after[attempt], attempt + 1, tuple(deferred))
                    )
                self._busy = False
                self._cond.notify_all()
