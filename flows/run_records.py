"""Every send run leaves a record in Prefect, whatever its end (issue 13).

The record lives in the mailshot database first (mailshot_core.sending.runs: the ledger adds to it as
messages go); this module writes it where operators and the data team read it: two table artifacts
attached to the flow run, keyed by sending so the Artifacts page keeps their history across runs.

- ``mailshot-<id>-run``: one row for the run (sent / failed / retried / in doubt *by this run*,
  started, ended, the sending's status at the end and why);
- ``mailshot-<id>-counters``: the sending's cumulative counters, with the names people read.

A run that ends on its own writes its record; a cancelled one from its ``on_cancellation`` hook; a
crashed one (``kill -9``: nothing of it runs any more) from the next run of the sending or the
dispatcher (:func:`record_dead_runs`), which ask Prefect whether each open run is still alive.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound
from sqlalchemy.engine import Engine

from mailshot_core.config import Settings
from mailshot_core.sending import claims, runs
from mailshot_core.sending.early_start import EARLY_RUN_PREFIX
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import as_utc, utcnow

log = logging.getLogger("mailshot.flows")
# A run in one of these states may still send: its record is not final yet.
ALIVE = {StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING}


def flow_run_uuid(run_id: str | None) -> UUID | None:
    """The Prefect flow run a record belongs to (None for local runs)."""
    try:
        return UUID(run_id) if run_id else None
    except ValueError:
        return None


def read_run(flow_run_id: str | None) -> FlowRun | None:
    """The recorded run, or None: no id, an id that is not a run (a placeholder), or a run this
    Prefect server does not know (deleted, or recorded against another server)."""
    run_uuid = flow_run_uuid(flow_run_id)
    if run_uuid is None:
        return None
    try:
        with get_client(sync_client=True) as client:
            return client.read_flow_run(run_uuid)
    except ObjectNotFound:
        return None


def run_state(run_id: str | None) -> StateType | None:
    """The Prefect state of a run; None when Prefect does not know it (deleted, another server)."""
    run = read_run(run_id)
    return run.state.type if run is not None and run.state is not None else None


def _table(client: Any, key: str, rows: list[dict[str, Any]], description: str, run: UUID | None) -> None:
    client.create_artifact(
        ArtifactCreate(
            key=key, type="table", data=json.dumps(rows, default=str), description=description, flow_run_id=run
        )
    )


def write_record(engine: Engine, run_id: str) -> None:
    """Write a closed run's record as its flow run's artifacts, once."""
    with session_scope(engine) as session:
        record = runs.record(session, run_id)
    mailshot_id = record.row["sending"]
    uuid = flow_run_uuid(run_id)
    with get_client(sync_client=True) as client:
        _table(
            client,
            f"mailshot-{mailshot_id}-run",
            [record.row],
            f"Run {run_id} of sending {mailshot_id}: {record.subject[:80]} ({record.row['sending status at the end']})",
            uuid,
        )
        _table(
            client,
            f"mailshot-{mailshot_id}-counters",
            [record.counters],
            f"Sending {mailshot_id} after run {run_id}: {record.subject[:80]}",
            uuid,
        )
    with session_scope(engine) as session:
        runs.mark_recorded(session, run_id)


def close_and_record(engine: Engine, run_id: str, reason: str | None = None) -> None:
    """Close the run's record (its first end wins) and write it unless it is written already: a
    cancelled run may end by itself and through its hook."""
    with session_scope(engine) as session:
        run = runs.close_run(session, run_id, reason=reason)
        done = run is None or run.recorded_at is not None
    if not done:
        write_record(engine, run_id)


def record_dead_runs(
    engine: Engine, settings: Settings, mailshot_id: int | None = None, *, skip: str | None = None
) -> int:
    """Close and record the runs that died without a word (crashed, killed), and write the records
    still missing; returns how many records were written.  Never raises: a record is not worth a
    sending."""
    written = 0
    try:
        lease = timedelta(seconds=settings.claim_lease)
        with session_scope(engine) as session:
            candidates = [
                (r.id, r.mailshot_id, r.started_at) for r in runs.open_runs(session, mailshot_id) if r.id != skip
            ]
        for run_id, mid, started_at in candidates:
            if run_id.startswith(EARLY_RUN_PREFIX):  # its flow takes it over within seconds, or never will
                if as_utc(started_at) > utcnow() - lease:
                    continue
                reason = "the command that sent it ended before its Prefect run took over"
            else:
                state = run_state(run_id)
                if state is None or state in ALIVE:
                    continue  # still running, or unknown to this Prefect server (its own process closes it)
                reason = f"the run ended {state.value.lower()} before closing its record"
            with session_scope(engine) as session:
                # Its workers are dead with it: their in-doubt messages go into its record first.
                claims.recover_dead_workers(session, mid, utcnow(), lease)
                runs.close_run(session, run_id, reason=reason)
        with session_scope(engine) as session:
            pending = [r.id for r in runs.unrecorded(session) if mailshot_id is None or r.mailshot_id == mailshot_id]
        for run_id in pending:
            write_record(engine, run_id)
            written += 1
    except Exception as exc:
        log.warning("could not write the records of earlier runs: %s", exc)
    return written
