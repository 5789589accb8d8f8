"""`dispatch-mailshots` (every minute): expire late schedules, start due and orphaned sendings.

The decisions are mailshot_core.sending.dispatch's (database only); this flow adds what needs Prefect:
whether a sending's last flow run is still alive, and starting a `send-mailshot` deployment run.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from sqlalchemy.engine import Engine

from flows.run_records import record_dead_runs
from mailshot_core.config import get_settings
from mailshot_core.duration import parse_duration
from mailshot_core.sending import dispatch
from mailshot_core.store.db import get_engine, session_scope
from mailshot_core.store.models import utcnow

SEND_DEPLOYMENT = "send-mailshot/default"
# A run in one of these states will (still) work on its sending: starting another would be waste.
_ALIVE = {StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING}


def run_is_alive(flow_run_id: str | None) -> bool:
    if not flow_run_id:
        return False
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(flow_run_id))
    except (ObjectNotFound, ValueError):  # deleted, or recorded by another Prefect server
        return False
    return run.state is not None and run.state.type in _ALIVE


def start_sending_run(engine: Engine, mailshot_id: int, deployment: str = SEND_DEPLOYMENT) -> str:
    """Create a `send-mailshot` deployment run (not a subflow: it outlives the caller); record its id."""
    run: FlowRun = run_deployment(  # type: ignore[assignment]  # sync context: a FlowRun, not a coroutine
        deployment, parameters={"mailshot_id": mailshot_id}, timeout=0, as_subflow=False
    )
    with session_scope(engine) as session:
        dispatch.record_run(session, mailshot_id, str(run.id))
    return str(run.id)


@flow(name="dispatch-mailshots", log_prints=False)
def dispatch_mailshots(deployment: str = SEND_DEPLOYMENT) -> dict[str, Any]:
    """Start due scheduled sendings, resume sendings in progress that no live run serves, expire late ones.

    Args:
        deployment: The deployment that sends one sending (its `mailshot_id` parameter is set here).
    """
    logger = get_run_logger()
    settings = get_settings()
    engine = get_engine(settings.database_url)
    now = utcnow()
    with session_scope(engine) as session:
        expired = dispatch.expire_late(session, parse_duration(settings.start_expiry), now)
    for mailshot_id in expired:
        logger.warning("sending %s expired: not started within MAILSHOT_START_EXPIRY of its start time", mailshot_id)
    # Send runs that died without a word (kill -9, a lost machine) get their record here.
    record_dead_runs(engine, settings)
    with session_scope(engine) as session:
        todo = dispatch.candidates(session, now)
    started, running = [], []
    for candidate in todo:
        if run_is_alive(candidate.flow_run_id):
            running.append(candidate.id)
            continue
        run_id = start_sending_run(engine, candidate.id, deployment)
        started.append(candidate.id)
        logger.info("sending %s (%s): started run %s", candidate.id, candidate.status, run_id)
    return {"started": started, "running": running, "expired": expired}
