"""`ingest-bounces`: bounce mailbox -> feedback events (then `apply-feedback` applies them).

Scheduled every 10 minutes (deployments/serve.py, prefect.yaml).  Reads the IMAP folder or Maildir
of MAILSHOT_BOUNCE_*, stores one feedback event per failed recipient and moves processed messages
away; what it could not process stays in the mailbox and is listed in the run's log.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger

from mailshot_core.bounce_sources import ingest_configured
from mailshot_core.config import get_settings


@flow(name="ingest-bounces", log_prints=False)
def ingest_bounces() -> dict[str, Any]:
    """Read the bounce mailbox once; returns the counts and the messages left in it."""
    settings = get_settings()
    logger = get_run_logger()
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
