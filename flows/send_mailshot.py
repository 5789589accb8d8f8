"""`send-mailshot`: start -> send batch after batch -> finish.  Reads like a table of contents.

Each batch is one task run (``MAILSHOT_BATCH_SIZE`` recipients, default 500): a task
run costs 6–14 ms and ~16 KB of Prefect history, a loopback SMTP send ~2.7 ms, so one
task per recipient would cost more than the mail (reference/prefect.md §1).  Every
fact lives in the mailshot database; this flow only decides what comes next, so a
run can die at any point and the next run carries on (DESIGN §3).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any
from uuid import UUID

from prefect import Flow, Task, flow, get_client, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun, State, TaskRun
from prefect.concurrency.sync import concurrency
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from mailshot_core.config import Settings, get_settings
from mailshot_core.feedback import fail_rule
from mailshot_core.sending import sendings
from mailshot_core.sending.ledger import BatchReport
from mailshot_core.sending.lifecycle import end_sending, next_step, start_sending
from mailshot_core.sending.pipeline import send_batch, send_batches
from mailshot_core.store.db import get_engine, session_scope
from mailshot_core.store.models import Mailshot, MailshotStatus, utcnow
from mailshot_core.transports.base import TransportUnavailable

# Waiting for retries is done in slices so that pause/cancel are seen within this many seconds.
MAX_WAIT_SLICE = 30.0


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


@task(name="send-batch", task_run_name="batch {number}", **_BATCH_TASK)
def send_batch_task(mailshot_id: int, number: int, transport: str = "smtp") -> BatchReport:
    with _connection_slots(transport) as settings:
        return send_batch(get_engine(settings.database_url), settings, mailshot_id)


@task(name="send-batches", task_run_name="worker {number}", **_BATCH_TASK)
def send_batches_task(mailshot_id: int, number: int, transport: str = "smtp") -> BatchReport:
    """Fast mode: one task per process, sending batch after batch (its start-up is paid once)."""
    with _connection_slots(transport) as settings:
        return send_batches(get_engine(settings.database_url), settings, mailshot_id)


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


def _pause_on_cancel(flow: Flow[..., Any], run: FlowRun, state: State[Any]) -> None:
    """A Prefect cancellation of the run means "stop sending": the sending is paused, not lost."""
    mailshot_id = run.parameters.get("mailshot_id")
    if mailshot_id is None:
        return
    settings = get_settings()
    with session_scope(get_engine(settings.database_url)) as session:
        mailshot = sendings.get(session, int(mailshot_id))
        if mailshot.status == MailshotStatus.PROCESSING:
            sendings.set_status(session, mailshot, MailshotStatus.PAUSE, "paused: flow run cancelled in Prefect")


def _counters_table(mailshot: Mailshot) -> list[dict[str, Any]]:
    return [{"counter": name, "value": value} for name, value in sendings.stored_counters(mailshot).items()]


@flow(
    name="send-mailshot",
    flow_run_name=_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=4),  # type: ignore[arg-type]
    on_cancellation=[_pause_on_cancel],  # type: ignore[list-item]
    log_prints=False,
)
def send_mailshot(mailshot_id: int, parallel: int = 1) -> dict[str, Any]:
    """Send sending MAILSHOT_ID to every recipient not yet served; resumable at any point.

    ``parallel`` batches run at once (each with MAILSHOT_SMTP_CONNECTIONS connections).  With
    ``parallel`` > 1 each task is a worker looping over batches until nothing is due; the `fast`
    deployment runs them in separate processes to use every core.

    Args:
        mailshot_id: The sending to send (`mailshot status` lists them; create-and-send creates one).
        parallel: How many batches (fast mode: batch workers) run at once.
    """
    logger = get_run_logger()
    settings = get_settings()
    engine = get_engine(settings.database_url)
    run_id = str(flow_run.id) if flow_run.id else None

    since = utcnow()  # the circuit breaker judges this run's attempts only (fail_rule.breaker)
    started = start_sending(engine, settings, mailshot_id, run_id=run_id)
    _ensure_connection_limit(settings, started.transport)
    logger.info("sending %s: %s recipients, %s batch(es) at a time", mailshot_id, started.total, parallel)
    if started.in_doubt:
        logger.warning(
            "%s message(s) were in flight when a previous worker died: marked 'unknown', not resent "
            "(mailshot status %s lists them; mailshot resend-unknown %s resends them)",
            started.in_doubt,
            mailshot_id,
            mailshot_id,
        )
    progress_id: UUID = create_progress_artifact(
        progress=0.0, key=f"mailshot-{mailshot_id}-progress", description=f"Sending {mailshot_id}: accepted/total"
    )  # type: ignore[assignment]

    totals = BatchReport()
    finished = False
    number = 0
    running: list[PrefectFuture[BatchReport]] = []
    while True:
        # Collect finished batches first: their results decide whether to go on.
        for future in [f for f in running if f.state.is_final()] if running else []:
            running.remove(future)
            totals.add(future.result())
        if totals.stopped:
            logger.error("sending %s stopped: %s", mailshot_id, totals.stopped)
            break
        with session_scope(engine) as session:  # pauses the sending: next_step then says "stopped"
            fail_rule.breaker(session, mailshot_id, since, settings.max_fail_ratio)
        step = next_step(engine, settings, mailshot_id)
        if step.action == "send" and len(running) < max(1, parallel):
            number += 1
            worker = send_batches_task if parallel > 1 else send_batch_task
            running.append(worker.submit(mailshot_id, number, started.transport))
            if parallel <= 1:
                running[-1].wait()
            _update_progress(engine, mailshot_id, progress_id)
        elif step.action in ("send", "wait") or (step.action == "done" and running):
            if running:  # batches take about the same time: waiting on the oldest is waiting on the first
                running[0].wait(timeout=min(step.seconds or 1.0, MAX_WAIT_SLICE))
            else:
                time.sleep(min(step.seconds, MAX_WAIT_SLICE))
            _update_progress(engine, mailshot_id, progress_id)
        elif step.action == "stopped":
            logger.info("sending %s: %s", mailshot_id, step.reason)
            break
        else:
            finished = True
            break
    for future in running:  # a pause or cancel lets the batches in flight finish
        totals.add(future.result())
    mailshot = end_sending(engine, mailshot_id, finished=finished)
    with session_scope(engine) as session:  # this sending's SMTP-time failures (feedback events: apply-feedback)
        unsubscribed = fail_rule.check_sending(session, mailshot_id, settings.max_fail)
    if unsubscribed:
        logger.info("%s address(es) unsubscribed by the MAILSHOT_MAX_FAIL rule", unsubscribed)
    _update_progress(engine, mailshot_id, progress_id)
    create_table_artifact(
        key=f"mailshot-{mailshot_id}-counters",
        table=_counters_table(mailshot),
        description=f"Sending {mailshot_id} ({mailshot.status}): {mailshot.subject[:80]}",
    )
    logger.info(
        "sending %s %s: %s sent, %s failed, %s in doubt of %s",
        mailshot_id,
        mailshot.status,
        mailshot.sent,
        mailshot.failed,
        mailshot.nb_unknown,
        mailshot.total,
    )
    return {
        "id": mailshot_id,
        "status": mailshot.status,
        **sendings.stored_counters(mailshot),
        "this_run": asdict(totals),
    }


# Fast mode: batches in separate processes, one per core (the GIL would keep threads on one core).
send_mailshot_fast = send_mailshot.with_options(
    task_runner=ProcessPoolTaskRunner(max_workers=os.cpu_count() or 2),  # type: ignore[arg-type]
)


def _update_progress(engine: Any, mailshot_id: int, progress_id: UUID) -> None:
    with session_scope(engine) as session:
        m = sendings.get(session, mailshot_id)
        done = 100.0 * m.current / m.total if m.total else 100.0
    update_progress_artifact(progress_id, progress=done)
