"""`control-mailshot` (deployment `control-mailshot/by-id`): send, pause, resume or cancel a sending
from the Prefect UI, by its id (the sendings table artifact lists them).

The same rules as the CLI (`mailshot pause/resume/cancel`) and the follow-up pages: the status
machine of mailshot_core.sending.sendings decides what is allowed, and a refusal fails the run with
the reason.  `send` and `resume` then start a `send-mailshot/now` run at once (tagged
``mailshot:<id>``); `pause` and `cancel` delete a run still only waiting for its start time (a run
in progress sees the new status before its next batch).
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from sqlmodel import Session

from flows.sending_runs import drop_waiting_run, ensure_run
from flows.sendings_artifact import publish_sendings
from mailshot_core.config import get_settings
from mailshot_core.sending import run_slot, sendings
from mailshot_core.store.db import get_engine, session_scope

Action = Literal["send", "pause", "resume", "cancel"]


@flow(name="control-mailshot", flow_run_name="{action} sending {mailshot_id}", log_prints=False)
def control_mailshot(mailshot_id: int, action: Action) -> dict[str, Any]:
    """Send (a draft or a scheduled sending, now), pause, resume or cancel sending MAILSHOT_ID.

    Args:
        mailshot_id: The sending (its id is in the mailshot-sendings artifact, or `mailshot status`).
        action: send: start a draft or a scheduled sending now; pause: stop before the next batch; resume: go on after a pause; cancel: recipients not sent yet never will be.
    """
    logger = get_run_logger()
    settings = get_settings()
    engine = get_engine(settings.database_url)
    with session_scope(engine) as session:
        if action == "send":
            mailshot = sendings.send_now(session, mailshot_id)
        elif action == "pause":
            mailshot = sendings.pause(session, mailshot_id, "paused by the operator (Prefect)")
        elif action == "resume":
            mailshot = sendings.resume(session, mailshot_id)
        else:
            mailshot = sendings.cancel(session, mailshot_id)
        status = mailshot.status
    run_id, dropped = None, False
    if action in ("send", "resume"):
        served = ensure_run(engine, mailshot_id)
        run_id = served.run_id
        logger.info(
            "sending %s %s: %s run %s",
            mailshot_id,
            status,
            "started" if served.created else "already served by",
            run_id or "(being created by another run)",
        )
    else:
        with Session(engine) as session:
            dropped = drop_waiting_run(run_slot.current_run(session, mailshot_id))
        logger.info(
            "sending %s %s%s", mailshot_id, status, " (its run waiting for the start time deleted)" if dropped else ""
        )
    publish_sendings(engine, settings)
    return {"id": mailshot_id, "action": action, "status": status, "send_run": run_id, "dropped_waiting_run": dropped}
