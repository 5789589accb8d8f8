"""Per-run records: what each run of a sending did, whatever its end (the data team's history).

A run is opened when it starts (:func:`open_run`); the ledger adds what its batches did in the same
transaction as the recipient rows (:func:`run_counters_sql`), so a record is never behind the
ledger, even after a kill; crash recovery adds the run's in-doubt messages (claims.py); the run
closes itself (:func:`close_run`), or whoever finds it dead does.  :func:`unrecorded` lists the
closed runs whose record has not been written where operators read it yet (a Prefect artifact: the
flows write it and call :func:`mark_recorded`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from mailshot_core.sending import sendings
from mailshot_core.store.models import Mailshot, SendRun, utcnow

# The run's counters the ledger moves, in this order (see ledger.py).
RUN_COUNTERS = ("sent", "failed", "throttled", "retried")


def local_run_id() -> str:
    """An id for a run without a Prefect flow run (tests, scripts)."""
    return f"local-{uuid.uuid4()}"


def open_run(session: Session, run_id: str, mailshot: Mailshot, now: datetime | None = None) -> SendRun:
    """Start (or, for a Prefect retry or a resumed suspension of the same run, reopen) a run's record."""
    assert mailshot.id is not None
    run = session.get(SendRun, run_id)
    if run is None:
        run = SendRun(id=run_id, mailshot_id=mailshot.id, transport=mailshot.transport, started_at=now or utcnow())
    else:  # the same flow run again: its record goes on, and is written again when it ends
        run.ended_at = run.final_status = run.end_reason = run.recorded_at = None
    session.add(run)
    session.flush()
    return run


def adopt(session: Session, earlier: str, into: str) -> None:
    """Merge the record of ``earlier`` (the first batches a command sent while its run started:
    early_start.py) into the run ``into``: one run, one record, from the first message on."""
    early = session.get(SendRun, earlier)
    run = session.get(SendRun, into)
    if early is None or run is None:
        return
    for name in (*RUN_COUNTERS, "in_doubt"):
        setattr(run, name, getattr(run, name) + getattr(early, name))
    run.started_at = min(run.started_at, early.started_at)
    session.add(run)
    session.delete(early)
    session.flush()


def run_counters_sql(placeholder: str) -> str:
    """The ledger's statement adding to a run's counters (driver SQL; names are constants)."""
    changes = ", ".join(f"{name} = {name} + {placeholder}" for name in RUN_COUNTERS)
    return f"UPDATE send_run SET {changes} WHERE id = {placeholder}"


def add_in_doubt(session: Session, run_id: str | None, n: int) -> None:
    if run_id and n:
        session.execute(update(SendRun).where(col(SendRun.id) == run_id).values(in_doubt=SendRun.in_doubt + n))


def close_run(
    session: Session, run_id: str, *, reason: str | None = None, now: datetime | None = None
) -> SendRun | None:
    """End a run's record with its sending's status now; a run already closed keeps its first end."""
    run = session.get(SendRun, run_id)
    if run is None or run.ended_at is not None:
        return run
    mailshot = sendings.get(session, run.mailshot_id)
    run.ended_at = now or utcnow()
    run.final_status = mailshot.status
    run.end_reason = reason or mailshot.status_reason
    session.add(run)
    session.flush()
    return run


def open_runs(session: Session, mailshot_id: int | None = None) -> list[SendRun]:
    """Runs not closed yet (running, or dead without anyone noticing)."""
    query = select(SendRun).where(col(SendRun.ended_at).is_(None))
    if mailshot_id is not None:
        query = query.where(SendRun.mailshot_id == mailshot_id)
    return list(session.exec(query.order_by(col(SendRun.started_at))).all())


def unrecorded(session: Session, limit: int = 50) -> list[SendRun]:
    """Closed runs whose record is not written yet, oldest first."""
    query = (
        select(SendRun)
        .where(col(SendRun.ended_at).is_not(None), col(SendRun.recorded_at).is_(None))
        .order_by(col(SendRun.ended_at))
        .limit(limit)
    )
    return list(session.exec(query).all())


def mark_recorded(session: Session, run_id: str, now: datetime | None = None) -> None:
    session.execute(update(SendRun).where(col(SendRun.id) == run_id).values(recorded_at=now or utcnow()))


@dataclass(frozen=True)
class RunRecord:
    """One run's row and its sending's cumulative counters, with the names people read."""

    row: dict[str, Any]
    counters: dict[str, int]
    subject: str


def record(session: Session, run_id: str) -> RunRecord:
    run = session.get(SendRun, run_id)
    if run is None:
        raise LookupError(f"no record of run {run_id}")
    mailshot = sendings.get(session, run.mailshot_id)
    row = {
        "run": run.id,
        "sending": run.mailshot_id,
        "subject": mailshot.subject,
        "lists": ", ".join(sendings.list_identifiers(mailshot)),
        "transport": run.transport,
        "started": run.started_at.isoformat(timespec="seconds"),
        "ended": run.ended_at.isoformat(timespec="seconds") if run.ended_at else "",
        "sent by this run": run.sent,
        "failed by this run": run.failed,
        "retried later": run.retried,
        "of which throttled": run.throttled,
        "in doubt": run.in_doubt,
        "sending status at the end": run.final_status or mailshot.status,
        "why": run.end_reason or "",
    }
    counters = {sendings.COUNTER_LABELS[name]: value for name, value in sendings.stored_counters(mailshot).items()}
    return RunRecord(row, counters, mailshot.subject)
