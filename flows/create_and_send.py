"""`create-and-send`: the operator's form in the Prefect UI: create a sending, then start (or schedule) it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.exceptions import ObjectNotFound

from flows.dispatch_mailshots import SEND_DEPLOYMENT, start_sending_run
from mailshot_core.config import get_settings
from mailshot_core.sending import sendings
from mailshot_core.store.db import get_engine, session_scope
from mailshot_core.store.models import MailshotStatus


@flow(name="create-and-send", flow_run_name="create-and-send: {subject}", log_prints=False)
def create_and_send(
    subject: str,
    html: str,
    lists: list[str],
    text: str | None = None,
    start_at: datetime | None = None,
    from_name: str | None = None,
    from_email: str | None = None,
    rate_per_day: int | None = None,
    track: bool | None = None,
) -> dict[str, Any]:
    """Create a sending and start it now, or at START_AT (dispatch-mailshots starts scheduled ones).

    Args:
        subject: Subject line; a template ({{ nom }}, {{ email }} ...).
        html: HTML body; a template. A plain-text part is generated from it unless TEXT is given.
        lists: Identifiers of the lists to send to (mailshot lists list).
        text: Plain-text body (default: generated from the HTML).
        start_at: When to start (ISO 8601; UTC when no offset). Empty: now.
        from_name: Sender name (default MAILSHOT_FROM_NAME).
        from_email: Sender address (default MAILSHOT_FROM_EMAIL).
        rate_per_day: Messages per day, spread evenly (default MAILSHOT_RATE_PER_DAY).
        track: Open pixel and click redirects in the HTML (default: as MAILSHOT_TRACKING says).
    """
    logger = get_run_logger()
    settings = get_settings()
    engine = get_engine(settings.database_url)
    spec = sendings.NewMailshot(
        subject=subject,
        html=html,
        text=text,
        lists=tuple(lists),
        start_at=start_at,
        from_name=from_name,
        from_email=from_email,
        rate_per_day=rate_per_day,
        track=track,
        send_now=True,  # the form's meaning: send now, or at start_at
    )
    with session_scope(engine) as session:
        mailshot = sendings.create(session, settings, spec)
        mailshot_id, status = mailshot.id, mailshot.status
    assert mailshot_id is not None
    run_id = None
    if status == MailshotStatus.PROCESSING:
        try:
            run_id = start_sending_run(engine, mailshot_id)
            logger.info("sending %s created; run %s of %s sends it", mailshot_id, run_id, SEND_DEPLOYMENT)
        except ObjectNotFound:
            logger.warning(
                "sending %s created; no %s deployment: dispatch-mailshots will start it", mailshot_id, SEND_DEPLOYMENT
            )
    else:
        logger.info("sending %s scheduled for %s UTC; dispatch-mailshots starts it then", mailshot_id, start_at)
    return {"id": mailshot_id, "status": status, "send_run": run_id}
