"""`ingest-bounces`: bounce mailbox -> feedback events (then `apply-feedback` applies them).

Scheduled every 10 minutes (deployments/serve.py, prefect.yaml).  Reads the IMAP folder or Maildir
of MAILSHOT_BOUNCE_*, stores one feedback event per failed recipient and moves processed messages
away; what it could not process stays in the mailbox and is listed in the run's log.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger

from mailshot_core.config import get_settings
from mailshot_core.feedback.mailboxes import IngestReport, ingest_configured


@flow(name="ingest-bounces", log_prints=False)
def ingest_bounces() -> dict[str, Any]:
    """Read the bounce mailbox once; returns the counts and the messages left in it."""
    settings = get_settings()
    logger = get_run_logger()
    if not (settings.bounce_imap_host or settings.bounce_maildir):
        # Sites on an ESP get bounces by webhook: the schedule must not fail every 10 minutes for them.
        logger.info(
            "no bounce mailbox configured (MAILSHOT_BOUNCE_IMAP_HOST or MAILSHOT_BOUNCE_MAILDIR): nothing to do"
        )
        return asdict(IngestReport())
    report = ingest_configured(settings)
    logger.info(
        "%s message(s) read: %s processed, %s new event(s), %s left in the mailbox",
        report.seen,
        report.processed,
        report.events,
        len(report.left),
    )
    for key, why in report.left:
        logger.warning("message %s left in the mailbox: %s", key, why)
    return asdict(report)
