"""`dispatch-mailshots` (every 10 minutes): expire late schedules, make sure every sending that should
be sending has a run, publish the sendings table.

Scheduled sendings do not wait for this tick: whoever schedules one (create-and-send, control-mailshot,
`mailshot create --start-at`) creates its `send-mailshot/now` run for its start time at once.  The
tick is the safety net: it gives a run to a due or in-progress sending that no live run serves (its
run crashed, or it was started where no Prefect API was reachable: the follow-up pages' Send and
Resume, `mailshot resume`) and to a scheduled one that has none, and cancels schedules missed by more
than MAILSHOT_START_EXPIRY.

Two ticks may run at once (no deployment concurrency limit: a tick left in Submitting by a stopping
server held the limit's slot for its 300 s lease, and every tick in between was cancelled): each
sending's run slot is taken by compare-and-set in the database (sending/run_slot.py), so they never both
start a run for one sending.  The decisions are mailshot_core.sending.dispatch's and run_slot.py's.
A quiet tick logs at DEBUG only.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.run_records import record_dead_runs
from flows.sending_runs import SEND_NOW, ensure_run
from flows.sendings_artifact import publish_sendings
from mailshot_core.config import get_settings
from mailshot_core.duration import parse_duration
from mailshot_core.sending import dispatch, run_slot
from mailshot_core.store.db import get_engine, session_scope
from mailshot_core.store.models import utcnow


@flow(name="dispatch-mailshots", log_prints=False)
def dispatch_mailshots(deployment: str = SEND_NOW) -> dict[str, Any]:
    """Give a run to every sending that should have one; expire late schedules; publish the sendings table.

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
        due = dispatch.candidates(session, now)
        later = run_slot.upcoming(session, now)
    started, running, scheduled = [], [], []
    for candidate in due:
        served = ensure_run(engine, candidate.id, deployment=deployment, now=now)
        if served.created:
            started.append(candidate.id)
            logger.info("sending %s (%s): started run %s", candidate.id, candidate.status, served.run_id)
        else:
            running.append(candidate.id)
    for sending in later:
        served = ensure_run(engine, sending.id, start_at=sending.start_at, deployment=deployment, now=now)
        if served.created:
            scheduled.append(sending.id)
            logger.info("sending %s: run %s scheduled for %s UTC", sending.id, served.run_id, served.scheduled_for)
    published = publish_sendings(engine, settings)
    logger.debug(
        "started %s, scheduled %s, already served %s, expired %s; sendings table %s",
        started,
        scheduled,
        running,
        expired,
        "updated" if published else "unchanged",
    )
    return {"started": started, "running": running, "scheduled": scheduled, "expired": expired}
