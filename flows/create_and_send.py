"""`create-and-send`: the operator's form in the Prefect UI: create a sending, optionally send a test
first, then start it now or schedule it (its `send-mailshot/now` run is created at once, for its start
time: flows/sending_runs.py).

How Prefect 3.9.1's UI renders these parameters (checked in its bundle and in Chromium,
scripts/prefect_screenshots.py): a ``str`` is a ``<textarea>`` (one line high, resizable; Enter makes
a new line, so the HTML can be pasted as it is; ``format: json-string`` would be a JSON editor, wrong
for HTML), a ``Literal`` a drop-down list, ``list[str]`` one input per item with an "Add item"
button, ``datetime`` a date and time picker.  An optional parameter (``X | None``) is drawn as a
toggle between its type and "None" that must be clicked first, so the optional texts and numbers are
plain types whose empty value (``""``, ``0``) means "the default"; only ``start_at`` stays optional.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.exceptions import ObjectNotFound

from flows.sending_runs import SEND_NOW, ensure_run
from flows.sendings_artifact import publish_sendings
from mailshot_core.config import get_settings
from mailshot_core.errors import MailshotError
from mailshot_core.sending import sendings
from mailshot_core.sending.one_message import send_test
from mailshot_core.store.db import get_engine, session_scope
from mailshot_core.store.models import MailshotStatus

# The transports of mailshot_core.transports.AVAILABLE (a test keeps them equal), as a Literal so the
# run form shows a drop-down list; "default" is MAILSHOT_TRANSPORT of the machine that runs the flow.
TransportChoice = Literal["default", "smtp", "mailjet", "sparkpost", "mandrill", "brevo", "ses"]
TrackChoice = Literal["default", "on", "off"]


@flow(name="create-and-send", flow_run_name="create-and-send: {subject}", log_prints=False)
def create_and_send(
    subject: str,
    html: str,
    lists: list[str],
    text: str = "",
    start_at: datetime | None = None,
    test_address: str = "",
    transport: TransportChoice = "default",
    from_name: str = "",
    from_email: str = "",
    rate_per_day: int = 0,
    rate_per_hour: int = 0,
    rate_per_minute: int = 0,
    track: TrackChoice = "default",
) -> dict[str, Any]:
    """Create a sending and send it now, or at START_AT; with TEST_ADDRESS, a [TEST] message goes there first.

    Args:
        subject: Subject line; a template ({{ nom }}, {{ email }} ...).
        html: HTML body; a template, pasted as it is (several lines are fine). A plain-text part is generated from it unless TEXT is given.
        lists: Identifiers of the lists to send to (mailshot lists list); Add item for each.
        text: Plain-text body. Empty: generated from the HTML.
        start_at: When to start (UTC when no offset). None: now.
        test_address: Send a [TEST] message to this address first; the sending starts only if it went out (else it stays a draft). Empty: no test.
        transport: How the messages leave; default: MAILSHOT_TRANSPORT.
        from_name: Sender name. Empty: MAILSHOT_FROM_NAME.
        from_email: Sender address. Empty: MAILSHOT_FROM_EMAIL.
        rate_per_day: Messages per day, spread evenly. 0: MAILSHOT_RATE_PER_DAY.
        rate_per_hour: At most this many messages per hour. 0: MAILSHOT_RATE_PER_HOUR.
        rate_per_minute: At most this many messages per minute. 0: MAILSHOT_RATE_PER_MINUTE.
        track: Open pixel and click redirects in the HTML; default: as MAILSHOT_TRACKING says.
    """
    logger = get_run_logger()
    settings = get_settings()
    engine = get_engine(settings.database_url)
    spec = sendings.NewMailshot(
        subject=subject,
        html=html,
        text=text or None,
        lists=tuple(lists),
        # With a test address: a draft until the test went out, so nothing starts it before.
        start_at=None if test_address else start_at,
        transport=None if transport == "default" else transport,
        from_name=from_name or None,
        from_email=from_email or None,
        rate_per_day=rate_per_day or None,
        rate_per_hour=rate_per_hour or None,
        rate_per_minute=rate_per_minute or None,
        track=None if track == "default" else track == "on",
        send_now=not test_address,  # the form's meaning: send now, or at start_at
    )
    with session_scope(engine) as session:
        mailshot = sendings.create(session, settings, spec)
        mailshot_id = mailshot.id
    assert mailshot_id is not None
    test_id = None
    if test_address:
        try:
            test_id = send_test(engine, settings, mailshot_id, test_address).message_id
        except MailshotError as exc:
            publish_sendings(engine, settings)
            raise MailshotError(
                f"sending {mailshot_id} created as a draft and not started: {exc} "
                f"(send it later with control-mailshot/by-id, action 'send')"
            ) from None
        logger.info("sending %s: test message sent to %s (%s)", mailshot_id, test_address, test_id)
        with session_scope(engine) as session:
            if start_at is not None:
                sendings.schedule(session, mailshot_id, start_at)
            else:
                sendings.send_now(session, mailshot_id)
    with session_scope(engine) as session:
        mailshot = sendings.get(session, mailshot_id)
        status, when = mailshot.status, mailshot.start_at
    served = None
    try:
        served = ensure_run(engine, mailshot_id, start_at=when if status == MailshotStatus.INIT else None)
    except ObjectNotFound:
        logger.warning("sending %s created; no %s deployment: dispatch-mailshots will start it", mailshot_id, SEND_NOW)
    if served is not None and served.scheduled_for is not None:
        logger.info(
            "sending %s scheduled for %s UTC: run %s of %s waits for it", mailshot_id, when, served.run_id, SEND_NOW
        )
    elif served is not None:
        logger.info("sending %s created; run %s of %s sends it", mailshot_id, served.run_id, SEND_NOW)
    publish_sendings(engine, settings)
    return {
        "id": mailshot_id,
        "status": status,
        "send_run": served.run_id if served else None,
        "scheduled_for": served.scheduled_for.isoformat() if served and served.scheduled_for else None,
        "test_message_id": test_id,
    }
