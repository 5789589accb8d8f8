"""Prefect runs of sendings: one `send-mailshot/now` run serves a sending, now or at its start time.

Every path that starts a sending outside a run of its own (the dispatcher's tick, create-and-send,
control-mailshot, `mailshot create --send/--start-at`) calls :func:`ensure_run`:

- a scheduled sending gets a run *scheduled at its start time* (plus :data:`START_MARGIN`), so it
  starts within seconds of that time without a dispatcher tick every minute (an idle site then
  makes a few hundred flow runs a day instead of thousands: bench/idle_runs.py);
- the run's id is recorded in ``mailshot.flow_run_id`` by compare-and-set (sending/run_slot.py), so two
  callers racing (two dispatcher ticks, a tick and an operator) never both create one;
- a sending already served by a live run gets none; a run scheduled for another time (the sending
  was rescheduled, or is sent now) is deleted and replaced;
- each run is tagged ``mailshot:<id>``, so the Prefect UI filters a sending's runs by tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from sqlalchemy.engine import Engine

from flows.run_records import ALIVE, read_run
from mailshot_core.sending import run_slot
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import utcnow

SEND_NOW = "send-mailshot/now"
# A runner (`mailshot serve`) and a worker pick scheduled runs up to 10 s before their time (Runner
# prefetch_seconds and PREFECT_WORKER_PREFETCH_SECONDS, both 10 by default), and the send flow refuses
# to start a scheduled sending early.  So the run is scheduled this much after the sending's start
# time: picked up between the start time and 10 s after it (the runner polls every 10 s).
START_MARGIN = timedelta(seconds=10)
# Within this, a scheduled run's time is the one wanted (Prefect stores microseconds; we compare times).
_SAME_TIME = timedelta(seconds=1)


def tag(mailshot_id: int) -> str:
    return f"mailshot:{mailshot_id}"


@dataclass(frozen=True)
class Served:
    """Which run serves a sending after :func:`ensure_run`, and whether this call created it."""

    run_id: str | None
    created: bool
    scheduled_for: datetime | None = None  # None: as soon as a runner or worker picks it up


def is_alive(run: FlowRun | None) -> bool:
    """A run in a state where it will (still) work on its sending: starting another would be waste."""
    return run is not None and run.state is not None and run.state.type in ALIVE


def run_is_alive(flow_run_id: str | None, now: datetime | None = None) -> bool:
    """A live run, or a placeholder younger than its TTL (a run being created by another caller)."""
    fresh = run_slot.placeholder_is_fresh(flow_run_id or "", now or utcnow())
    if fresh is not None:
        return fresh
    return is_alive(read_run(flow_run_id))


def _scheduled_time(run: FlowRun) -> datetime | None:
    if run.state is None or run.state.type != StateType.SCHEDULED:
        return None
    return run.state.state_details.scheduled_time or run.expected_start_time


def _wrong_time(run: FlowRun, wanted: datetime | None, now: datetime) -> bool:
    """A run still waiting for a time other than the one wanted (None: as soon as possible)."""
    when = _scheduled_time(run)
    if when is None:
        return False  # started (pending, running...): it serves the sending whatever its time was
    if wanted is None:
        return when > now + START_MARGIN + _SAME_TIME
    return abs(when - wanted) > _SAME_TIME


def drop_waiting_run(flow_run_id: str | None) -> bool:
    """Delete the recorded run if it is still only scheduled (the sending was paused, cancelled or
    rescheduled).  Deleted, not cancelled: it never ran, and a cancellation of a send-mailshot run
    means "pause the sending" to its hook."""
    run = read_run(flow_run_id)
    if run is None or _scheduled_time(run) is None:
        return False
    with get_client(sync_client=True) as client:
        try:
            client.delete_flow_run(run.id)
        except ObjectNotFound:
            return False
    return True


def ensure_run(
    engine: Engine,
    mailshot_id: int,
    *,
    start_at: datetime | None = None,
    deployment: str = SEND_NOW,
    now: datetime | None = None,
) -> Served:
    """Make sure a run of ``deployment`` serves the sending: now, or for a sending scheduled at
    ``start_at``, then.  Raises ObjectNotFound when the deployment does not exist."""
    now = now or utcnow()
    wanted = start_at + START_MARGIN if start_at is not None and start_at > now else None
    with session_scope(engine) as session:
        seen = run_slot.current_run(session, mailshot_id)
    fresh = run_slot.placeholder_is_fresh(seen or "", now)
    if fresh:
        return Served(None, False)  # another caller is creating its run right now
    if fresh is None and seen:
        run = read_run(seen)
        if is_alive(run):
            assert run is not None
            if not _wrong_time(run, wanted, now):
                return Served(seen, False, _scheduled_time(run))
            drop_waiting_run(seen)
    with session_scope(engine) as session:
        token = run_slot.reserve(session, mailshot_id, seen, now)
    if token is None:
        return Served(None, False)  # another caller took the slot between our read and our write
    try:
        created: FlowRun = run_deployment(  # type: ignore[assignment]  # sync context: a FlowRun
            deployment,
            parameters={"mailshot_id": mailshot_id},
            scheduled_time=wanted,
            timeout=0,
            as_subflow=False,
            tags=["mailshot", tag(mailshot_id)],  # the deployment's tag is not inherited by the run
        )
    except BaseException:
        with session_scope(engine) as session:
            run_slot.release(session, mailshot_id, token, seen)
        raise
    with session_scope(engine) as session:
        run_slot.settle(session, mailshot_id, token, str(created.id))
    return Served(str(created.id), True, wanted)


def prefect_api_configured() -> bool:
    """Whether this process talks to a Prefect server (PREFECT_API_URL, from the environment or the
    active profile): the CLI then schedules runs itself instead of leaving them to the dispatcher."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)
