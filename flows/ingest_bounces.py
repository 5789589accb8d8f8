"""`ingest-bounces`: bounce mailbox -> feedback events, applied at once.

Scheduled every 15 minutes (deployments/serve.py, prefect.yaml).  Reads the IMAP folder or Maildir
of MAILSHOT_BOUNCE_*, stores one feedback event per failed recipient and moves processed messages
away, then applies the inbox (not waiting for the hourly apply-feedback sweep); what it could not
process stays in the mailbox and is listed in the run's log.  A run that finds nothing (or no
mailbox configured) logs at DEBUG only.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger

from mailshot_core.config import get_settings
from mailshot_core.feedback.inbox import apply_all
from mailshot_core.feedback.mailboxes import IngestReport, ingest_configured
from mailshot_core.store.db import get_engine


@flow(name="ingest-bounces", log_prints=False)
def ingest_bounces() -> dict[str, Any]:
    """Read the bounce mailbox once and apply what it found; returns the counts and the messages left in it."""
    settings = get_settings()
    logger = get_run_logger()
    if not (settings.bounce_imap_host or settings.bounce_maildir):
        # Sites on an ESP get bounces by webhook: the schedule must neither fail nor talk every 15 minutes.
        logger.debug(
            "no bounce mailbox configured (MAILSHOT_BOUNCE_IMAP_HOST or MAILSHOT_BOUNCE_MAILDIR): nothing to do"
        )
        return asdict(IngestReport())
    report = ingest_configured(settings)
    (logger.info if report.seen else logger.debug)(
        "%s message(s) read: %s processed, %s new event(s), %s left in the mailbox",
        report.seen,
        report.processed,
        report.events,
        len(report.left),
    )
    for key, why in report.left:
        logger.warning("message %s left in the mailbox: %s", key, why)
    result = asdict(report)
    if report.events:
        applied = apply_all(get_engine(settings.database_url), max_fail=settings.max_fail)
        logger.info("%s event(s) applied, %s recipient(s) changed", applied.applied, applied.changed)
        result["applied"] = applied.applied
    return result
