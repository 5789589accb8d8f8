"""`send-mailshot`: start -> send batch after batch -> finish.  Reads like a table of contents.

Each batch is one task run (``MAILSHOT_BATCH_SIZE`` recipients, default 500): a task
run costs 6–14 ms and ~16 KB of Prefect history, a loopback SMTP send ~2.7 ms, so one
task per recipient would cost more than the mail (reference/prefect.md §1).  Every
fact lives in the mailshot database; this flow only decides what comes next, so a
run can die at any point and the next run carries on (DESIGN §3).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import Flow, Task, flow, get_client, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun, State, StateType, TaskRun
from prefect.concurrency.sync import concurrency
from prefect.exceptions import Pause, TerminationSignal
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from flows.run_records import close_and_record, flow_run_uuid, read_run, record_dead_runs
from mailshot_core.config import Settings, get_settings
from mailshot_core.errors import MailshotError
from mailshot_core.feedback import fail_rule
from mailshot_core.sending import claims, early_start, runs, sendings
from mailshot_core.sending.connections import StopCheck
from mailshot_core.sending.ledger import BatchReport
from mailshot_core.sending.lifecycle import Started, end_sending, next_step, start_sending, stream_ahead
from mailshot_core.sending.pipeline import (
    send_batch,
    send_batches,
    send_head_start,
    sends_in_one_process,
    stop_batches_here,
)
from mailshot_core.store.db import get_engine, session_scope
from mailshot_core.store.models import MailshotStatus, utcnow
from mailshot_core.transports.base import TransportUnavailable

# The flow looks at its batches, the progress and Prefect's controls at least this often (seconds):
# issue 13 asks for progress and for pause/cancel/suspend to take effect within 5 s.
TICK = 4.0
# What the sending's status says when a Prefect control paused it.  The prefixes are how a later run
# recognises a pause of its own making (a resumed suspension carries on by itself).
CANCELLED_IN_PREFECT = "paused: flow run cancelled in Prefect"
SUSPENDED_IN_PREFECT = "paused: flow run suspended in Prefect"
PAUSED_IN_PREFECT = "paused: flow run paused in Prefect"


def _run_name() -> str:
    params = flow_run.parameters
    mailshot_id = params.get("mailshot_id")
    try:
        settings = get_settings()
        with session_scope(get_engine(settings.database_url)) as session:
            subject = sendings.get(session, int(mailshot_id)).subject
        return f"mailshot-{mailshot_id}: {subject[:60]}"
    except Exception:  # naming must never stop a run; the id alone is enough
        return f"mailshot-{mailshot_id}"


def _relay_down(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a batch only when the transport could not be reached; anything else is not transient."""
    try:
        state.result()
    except TransportUnavailable:
        return True
    except Exception:
        return False
    return False


# Both batch tasks: retried only when the relay could not be reached, never cached.
_BATCH_TASK: dict[str, Any] = {
    "retries": 4,
    "retry_delay_seconds": [5.0, 15.0, 60.0, 180.0],
    "retry_jitter_factor": 0.2,
    "retry_condition_fn": _relay_down,
    "cache_policy": NO_CACHE,
}


def prefect_stop(run_id: str | None) -> StopCheck | None:
    """Prefect's controls, read from the run's state: why the sending must stop now, or None.

    A Cancel reaches the process as the runner's SIGTERM (_stopping_on_termination), but only where a
    runner or worker runs it, and a Suspend from the UI changes nothing in the process.  So the
    batches ask (every STOP_POLL_SECONDS, one GET) and the sending is paused with the reason, which
    the dispatcher respects.
    """
    if flow_run_uuid(run_id) is None:
        return None  # a run without Prefect (local id): nothing to ask

    def check() -> str | None:
        run = read_run(run_id)  # None for a run this API does not know (deleted): nothing to obey
        state = run.state if run is not None else None
        if state is None:
            return None
        if state.type in (StateType.CANCELLING, StateType.CANCELLED):
            return CANCELLED_IN_PREFECT
        if state.type == StateType.PAUSED:
            if state.state_details.pause_reschedule:
                return f"{SUSPENDED_IN_PREFECT} (resume the run there, or mailshot resume)"
            return f"{PAUSED_IN_PREFECT} (resume the run there, or mailshot resume)"
        if state.is_final():  # "Change state" in the UI while it sends: the operator wants it stopped
            return f"paused: flow run marked {state.name} in Prefect (mailshot resume to go on)"
        return None

    return check


def _log_batch(label: str, report: BatchReport) -> None:
    rate = report.sent / report.seconds if report.seconds > 0 else 0.0
    get_run_logger().info(
        "%s: %s sent, %s failed, %s retried later (%s throttled), %s deferred, %.1f msg/s%s",
        label,
        report.sent,
        report.failed,
        report.retried,
        report.throttled,
        report.deferred,
        rate,
        f"; stopped: {report.stopped}" if report.stopped else "",
    )


@task(name="send-batch", task_run_name="batch {number}", **_BATCH_TASK)
def send_batch_task(mailshot_id: int, number: int, transport: str = "smtp", run_id: str | None = None) -> BatchReport:
    with _connection_slots(transport) as settings:
        engine = get_engine(settings.database_url)
        report = send_batch(engine, settings, mailshot_id, run_id=run_id, outside_stop=prefect_stop(run_id))
    _log_batch(f"batch {number}", report)
    return report


_orphan_watch_started = False


def _watch_parent(parent: int) -> None:
    """End this process within a second once its parent is no longer ``parent``."""
    global _orphan_watch_started
    if _orphan_watch_started:
        return
    _orphan_watch_started = True

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="mailshot-orphan-watch", daemon=True).start()


def _die_with_the_run(flow_pid: int) -> None:
    """A fast-mode worker process ends when the run's process is gone (kill -9 of `mailshot send
    --fast`): it was seen sending on alone, and never exiting.  Its claims are recovered like any dead
    worker's (pid gone: claimed rows back to the queue, the one in flight in doubt).  Called by the
    task: on Dask the worker's parent is its nanny, not the run's process."""
    if os.getpid() == flow_pid:
        return  # in the run's own process (threads)
    _watch_parent(os.getppid())


def _pool_worker_dies_with_the_run(flow_pid: int) -> None:
    """The process pool's initializer: the same watch from the pool process's start, not its first
    task.  With the head start, a kill while the workers were still importing left them waiting for
    tasks for ever (tests/sending/test_crash.py); a run already gone is seen within a second."""
    _watch_parent(flow_pid)


@task(name="send-batches", task_run_name="worker {number}", **_BATCH_TASK)
def send_batches_task(
    mailshot_id: int, number: int, transport: str = "smtp", run_id: str | None = None, flow_pid: int = 0
) -> BatchReport:
    """Fast mode: one task per process, sending batch after batch (its start-up is paid once)."""
    if flow_pid:
        _die_with_the_run(flow_pid)
    with _connection_slots(transport) as settings:
        engine = get_engine(settings.database_url)
        report = send_batches(engine, settings, mailshot_id, run_id=run_id, outside_stop=prefect_stop(run_id))
    _log_batch(f"worker {number}", report)
    return report


def connection_limit_name(transport: str) -> str:
    return f"mailshot-{transport}-connections"


@contextmanager
def _connection_slots(transport: str) -> Iterator[Settings]:
    """Hold this task's connections in the cross-run cap (MAILSHOT_MAX_CONNECTIONS), if there is one.

    A Prefect global concurrency limit, acquired once per task (100 ms a call: never per message),
    strict so that a missing limit fails instead of silently not limiting.  The task then opens at most
    as many connections as it holds slots.
    """
    settings = get_settings()
    if settings.max_connections is None:
        yield settings
        return
    width = min(settings.smtp_connections, settings.max_connections)
    with concurrency(connection_limit_name(transport), occupy=width, strict=True):
        yield settings.model_copy(update={"smtp_connections": width})


def _ensure_connection_limit(settings: Settings, transport: str) -> None:
    """Create or resize the cross-run connection cap to MAILSHOT_MAX_CONNECTIONS."""
    if settings.max_connections is not None:
        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(connection_limit_name(transport), settings.max_connections)


def _pause_on_cancel(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """A Prefect cancellation of the run means "stop sending": the sending is paused, not lost, and
    the run's record is written.

    Prefect calls state hooks with the keywords ``flow``, ``flow_run`` and ``state`` (the runner that
    owns the cancellation does; the engine passes them in that order): the names are part of the API.
    """
    mailshot_id = flow_run.parameters.get("mailshot_id")
    if mailshot_id is None:
        return
    settings = get_settings()
    engine = get_engine(settings.database_url)
    with session_scope(engine) as session:
        sendings.pause_if_processing(session, int(mailshot_id), CANCELLED_IN_PREFECT)
    close_and_record(engine, str(flow_run.id), reason="cancelled in Prefect")


def _resume_own_pause(engine: Any, mailshot_id: int, run_id: str | None) -> None:
    """A suspended run that Prefect resumes starts again from the top: the pause it made is its own
    to lift (one of another run, of the operator or of the breaker is not)."""
    if run_id is None:
        return
    with session_scope(engine) as session:
        mailshot = sendings.get(session, mailshot_id, lock=True)
        reason = mailshot.status_reason or ""
        if (
            mailshot.status == MailshotStatus.PAUSE
            and mailshot.flow_run_id == run_id
            and reason.startswith((SUSPENDED_IN_PREFECT, PAUSED_IN_PREFECT))
        ):
            sendings.set_status(session, mailshot, MailshotStatus.PROCESSING)


def _tag_run(run_id: str | None, mailshot_id: int) -> None:
    """Send runs carry ``mailshot:<id>``, however they were started (UI, CLI, dispatcher)."""
    uuid = flow_run_uuid(run_id)
    if uuid is None:
        return
    tag = f"mailshot:{mailshot_id}"
    try:
        with get_client(sync_client=True) as client:
            tags = list(client.read_flow_run(uuid).tags)
            if tag not in tags:
                client.update_flow_run(uuid, tags=[*tags, tag])
    except Exception as exc:  # a tag is worth a log line, not a sending
        get_run_logger().debug("could not tag run %s: %s", run_id, exc)


@flow(
    name="send-mailshot",
    flow_run_name=_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]
    on_cancellation=[_pause_on_cancel],  # type: ignore[list-item]
    log_prints=False,
    persist_result=True,  # the returned counters (this run's included) stay readable in the run's page
)
def send_mailshot(mailshot_id: int, parallel: int = 1) -> dict[str, Any]:
    """Send sending MAILSHOT_ID to every recipient not yet served; resumable at any point.

    A draft starts (the run is the operator saying "send").  ``parallel`` batches run at once (each
    with MAILSHOT_SMTP_CONNECTIONS connections).  With ``parallel`` > 1 each task is a worker looping
    over batches until nothing is due; the `fast` deployment runs them in separate processes.

    Prefect's controls act on the sending: Cancel pauses it (the dispatcher leaves it paused),
    Suspend/Pause pause it and end (or hold) the run, Resume carries on where it stopped.

    Args:
        mailshot_id: The sending to send (the `mailshot-sendings` artifact and `mailshot status` list them).
        parallel: How many batches (fast mode: batch workers) run at once.
    """
    settings = get_settings()
    engine = get_engine(settings.database_url)
    run_id = str(flow_run.id) if flow_run.id else runs.local_run_id()
    _tag_run(run_id, mailshot_id)
    record_dead_runs(engine, settings, mailshot_id, skip=run_id)  # earlier runs of it that crashed
    _resume_own_pause(engine, mailshot_id, run_id)
    since = utcnow()  # the circuit breaker judges this run's attempts only (fail_rule.breaker)
    with session_scope(engine) as session:
        runs.open_run(session, run_id, sendings.get(session, mailshot_id))
    with _stopping_on_termination(engine, mailshot_id, run_id):
        # What `mailshot send` sent while this run started is this run's (its attempts included).
        sent_early, early_since = early_start.take_over(engine, mailshot_id, run_id)
        since = min(since, early_since or since)
        try:
            # Streamed: the first batch is claimable as soon as the first chunk is in (issue 16).
            stream = stream_ahead(settings, parallel)
            started = start_sending(engine, settings, mailshot_id, run_id=run_id, stream=stream)
        except MailshotError as exc:  # e.g. paused or ended: the run fails, with its record saying why
            close_and_record(engine, run_id, reason=str(exc))
            raise
        try:
            return _send(_Run(engine, settings, mailshot_id, parallel, run_id, started, since, sent_early))
        finally:
            if started.materialiser is not None:
                started.materialiser.stop()


@contextmanager
def _stopping_on_termination(engine: Any, mailshot_id: int, run_id: str) -> Iterator[None]:
    """Around what may send: Prefect's TerminationSignal (the runner's SIGTERM) stops it first."""
    try:
        yield
    except TerminationSignal as exc:
        if not getattr(exc, "sending_stopped", False):  # once, when guards nest
            _stop_on_termination(engine, mailshot_id, run_id)
            exc.sending_stopped = True  # type: ignore[attr-defined]
        raise


def _stop_on_termination(engine: Any, mailshot_id: int, run_id: str) -> None:
    """The runner's SIGTERM (a Cancel, or the worker or machine stopping): stop sending now.

    The batches in flight are told to stop (their threads would keep the dying process sending), and a
    cancellation pauses the sending at once, which also stops its batches in other processes: the
    runner runs the on_cancellation hook only once this process has exited.  A SIGTERM for another
    reason leaves the sending ``processing``, for the next run or the dispatcher to resume.
    """
    reason: str | None = None
    check = prefect_stop(run_id)
    try:
        reason = check() if check is not None else None
    except Exception as exc:  # the API may be out of reach: the batches still stop
        get_run_logger().warning("could not read the run's state while terminating: %s", exc)
    if reason:
        with session_scope(engine) as session:
            sendings.pause_if_processing(session, mailshot_id, reason)
    stop_batches_here(reason or "the run's process was terminated")


@dataclass(frozen=True)
class _Run:
    """One run of a sending, as its sending loop sees it."""

    engine: Any
    settings: Settings
    mailshot_id: int
    parallel: int
    run_id: str
    started: Started
    since: datetime  # the circuit breaker judges this run's attempts only (fail_rule.breaker)
    sent_early: BatchReport  # what `mailshot send` sent before this run took over, counted as its own


def _send(run: _Run) -> dict[str, Any]:
    """The sending loop of :func:`send_mailshot`, from the started sending to its result."""
    logger = get_run_logger()
    outside = prefect_stop(run.run_id)
    _ensure_connection_limit(run.settings, run.started.transport)
    # Fast mode on SQLite with pre-encoded templates: one worker, in a thread of this process (one
    # SQLite writer sends faster than two, and no process starts: pipeline.sends_in_one_process).
    alone = run.parallel > 1 and sends_in_one_process(run.engine, run.settings, run.mailshot_id)
    if alone:
        logger.info("sending %s: %s recipients so far, sent by this process", run.mailshot_id, run.started.total)
        own_thread: ThreadPoolTaskRunner[BatchReport] = ThreadPoolTaskRunner(max_workers=1)
        # The runner's exit waits for its thread: a SIGTERM must stop that thread's batches first.
        with own_thread, _stopping_on_termination(run.engine, run.mailshot_id, run.run_id):
            return _send_loop(run, outside, own_thread)
    logger.info(
        "sending %s: %s recipients so far, %s batch(es) at a time", run.mailshot_id, run.started.total, run.parallel
    )
    return _send_loop(run, outside, None)


def _send_loop(
    run: _Run, outside: StopCheck | None, own_thread: ThreadPoolTaskRunner[BatchReport] | None
) -> dict[str, Any]:
    """Batches until done or stopped, then the end.  ``own_thread``: fast mode's one worker runs there
    instead of in the flow's process pool."""
    engine, settings, mailshot_id, run_id, started = run.engine, run.settings, run.mailshot_id, run.run_id, run.started
    logger = get_run_logger()
    workers = 1 if own_thread is not None else max(1, run.parallel)

    def submit_worker(n: int) -> PrefectFuture[BatchReport]:
        params: dict[str, Any] = {
            "mailshot_id": mailshot_id,
            "number": n,
            "transport": started.transport,
            "run_id": run_id,
            "flow_pid": os.getpid(),
        }
        if own_thread is not None:
            return own_thread.submit(send_batches_task, params)
        future: PrefectFuture[BatchReport] = send_batches_task.submit(**params)
        return future

    if started.in_doubt:
        logger.warning(
            "%s message(s) were in flight when a previous worker died: marked 'unknown', not resent "
            "(mailshot status %s lists them; mailshot resend-unknown %s resends them)",
            started.in_doubt,
            mailshot_id,
            mailshot_id,
        )
    progress_id: UUID = create_progress_artifact(
        progress=0.0, key=f"mailshot-{mailshot_id}-progress", description=f"Sending {mailshot_id}: done/total"
    )  # type: ignore[assignment]

    totals = run.sent_early
    finished = False
    number = 0
    running: list[PrefectFuture[BatchReport]] = []
    stop_reason: str | None = None
    head_started = False
    while True:
        if started.materialiser is not None:
            started.materialiser.check()  # a failed materialisation fails the run, never waits for ever
        # Collect finished batches first: their results decide whether to go on.
        for future in [f for f in running if f.state.is_final()]:
            running.remove(future)
            totals.add(future.result())
        if totals.stopped and totals.stopped.startswith(PAUSED_IN_PREFECT):
            totals.stopped = None  # a pause that keeps the run: _outside_reason waits for Resume
        if totals.stopped:
            stop_reason = totals.stopped
            logger.info("sending %s stopped: %s", mailshot_id, totals.stopped)
            break
        reason = _outside_reason(outside, engine, mailshot_id)
        if reason:
            stop_reason = reason
            break
        with session_scope(engine) as session:  # pauses the sending: next_step then says "stopped"
            fail_rule.breaker(session, mailshot_id, run.since, settings.max_fail_ratio)
        step = next_step(engine, settings, mailshot_id)
        if step.action == "send" and run.parallel > 1 and not head_started and own_thread is None:
            head_started = True

            def start_pool() -> None:
                for n in range(1, run.parallel + 1):
                    running.append(submit_worker(n))

            totals.add(_head_start(engine, settings, mailshot_id, run_id, start_pool))
            number = len(running)
            continue
        if step.action == "send" and len(running) < workers:
            number += 1
            if run.parallel > 1:
                running.append(submit_worker(number))
            else:
                running.append(send_batch_task.submit(mailshot_id, number, started.transport, run_id))
            if len(running) < workers:
                continue  # fill the pool first: fast mode's workers start together
        elif step.action == "stopped":
            stop_reason = step.reason
            logger.info("sending %s: %s", mailshot_id, step.reason)
            break
        elif step.action == "done" and not running:
            finished = True
            break
        # Batches in flight, retries not due yet, or other workers finishing: look again soon.
        if running:
            running[0].wait(timeout=TICK)
        elif step.action == "wait":
            time.sleep(min(step.seconds, TICK))
        _update_progress(engine, mailshot_id, progress_id)
    for future in running:  # a pause or cancel stops the batches in flight within seconds
        totals.add(future.result())
    mailshot = end_sending(engine, mailshot_id, finished=finished)
    with session_scope(engine) as session:  # this sending's SMTP-time failures (feedback events: apply-feedback)
        unsubscribed = fail_rule.check_sending(session, mailshot_id, settings.max_fail)
    if unsubscribed:
        logger.info("%s address(es) unsubscribed by the MAILSHOT_MAX_FAIL rule", unsubscribed)
    _update_progress(engine, mailshot_id, progress_id)
    close_and_record(engine, run_id, reason=None if finished else stop_reason)
    logger.info(
        "sending %s %s: %s sent, %s failed, %s in doubt, %s not sent of %s (this run: %s sent, %s failed)",
        mailshot_id,
        mailshot.status,
        mailshot.sent,
        mailshot.failed,
        mailshot.nb_unknown,
        mailshot.nb_kill,
        mailshot.total,
        totals.sent,
        totals.failed,
    )
    result = {
        "id": mailshot_id,
        "status": mailshot.status,
        **sendings.stored_counters(mailshot),
        "this_run": asdict(totals),
    }
    if stop_reason and stop_reason.startswith(SUSPENDED_IN_PREFECT):
        _end_suspended(run_id)
    return result


def _head_start(
    engine: Any, settings: Settings, mailshot_id: int, run_id: str, start_pool: Callable[[], None]
) -> BatchReport:
    """Fast mode: this process sends while its worker processes start (pipeline.send_head_start); the
    pool is started by ``start_pool`` after the first small batch (or by the sending loop if not).

    Not with a cross-run connection cap: the workers would wait for the slots this process holds.  A
    relay that cannot be reached is left to the workers' batch tasks, which retry it.
    """
    if settings.max_connections is not None:
        return BatchReport()
    pid = os.getpid()

    def pool_ready() -> bool:
        with session_scope(engine) as session:
            return claims.workers_besides(session, mailshot_id, pid) > 0

    try:
        report = send_head_start(
            engine,
            settings,
            mailshot_id,
            start_pool=start_pool,
            pool_ready=pool_ready,
            run_id=run_id,
            outside_stop=prefect_stop(run_id),
        )
    except TransportUnavailable as exc:
        get_run_logger().warning("head start of sending %s: %s (the workers retry)", mailshot_id, exc)
        return BatchReport()
    _log_batch("head start", report)
    return report


def _outside_reason(outside: StopCheck | None, engine: Any, mailshot_id: int) -> str | None:
    """Prefect's controls seen between batches (the batches see them while they send): a reason
    pauses the sending.  A pause of the run that keeps its process (Prefect's pause) waits here for
    Resume, then goes on; a suspension or a cancellation ends the run."""
    if outside is None:
        return None
    try:
        reason = outside()
    except Exception as exc:  # the API may be briefly unreachable: the database still rules
        get_run_logger().debug("could not read the run's state: %s", exc)
        return None
    if not reason:
        _lift_prefect_pause(engine, mailshot_id)  # resumed in Prefect while a batch was stopping
        return None
    with session_scope(engine) as session:
        sendings.pause_if_processing(session, mailshot_id, reason)
    if not reason.startswith(PAUSED_IN_PREFECT):
        return reason
    get_run_logger().info("sending %s paused with its run: waiting for Resume in Prefect", mailshot_id)
    while (reason := outside()) and reason.startswith(PAUSED_IN_PREFECT):
        time.sleep(TICK)
    if reason:  # cancelled or suspended meanwhile
        return reason
    _lift_prefect_pause(engine, mailshot_id)  # resumed in Prefect: the sending goes on with its run
    return None


def _lift_prefect_pause(engine: Any, mailshot_id: int) -> None:
    with session_scope(engine) as session:
        mailshot = sendings.get(session, mailshot_id)
        if mailshot.status != MailshotStatus.PAUSE or not (mailshot.status_reason or "").startswith(PAUSED_IN_PREFECT):
            return
        sendings.set_status(session, sendings.get(session, mailshot_id, lock=True), MailshotStatus.PROCESSING)


def _end_suspended(run_id: str) -> None:
    """Leave the run Suspended, so Prefect's Resume reschedules it (the next start resumes the sending):
    returning would turn it Completed and lose the Resume button."""
    uuid = flow_run_uuid(run_id)
    assert uuid is not None
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(uuid).state
    if state is not None and state.is_paused():
        raise Pause(state=state)


# Fast mode: batches in separate processes, one per core (the GIL would keep threads on one core); on
# SQLite with pre-encoded templates one worker in this process instead (_send, pipeline.sends_in_one_process).
send_mailshot_fast = send_mailshot.with_options(
    task_runner=ProcessPoolTaskRunner(  # type: ignore[arg-type]
        max_workers=os.cpu_count() or 2, initializer=_pool_worker_dies_with_the_run, initargs=(os.getpid(),)
    ),
)


def _update_progress(engine: Any, mailshot_id: int, progress_id: UUID) -> None:
    """The progress bar: done (accepted, failed, in doubt or not sent) of total."""
    with session_scope(engine) as session:
        m = sendings.get(session, mailshot_id)
        done = 100.0 * m.current / m.total if m.total else 100.0
    update_progress_artifact(progress_id, progress=done)
