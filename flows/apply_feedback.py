"""`apply-feedback`: apply the inbox of ESP events (statuses, counters, unsubscriptions).

An hourly sweep (deployments/serve.py, prefect.yaml): the web app applies each webhook's events on
arrival (feedback/applier.py) and ingest-bounces applies what it stored; this run applies what is
left (events deferred while their recipient was being handed over, or stored while the web app
stopped).  Callable at any time: applying is idempotent and concurrent runs share the inbox without
applying an event twice (feedback/inbox.py).  A run with nothing to apply logs at DEBUG only.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger

from mailshot_core.config import get_settings
from mailshot_core.feedback.inbox import apply_all
from mailshot_core.store.db import get_engine


@flow(name="apply-feedback", log_prints=False)
def apply_feedback() -> dict[str, Any]:
    """Apply every pending feedback event; returns the counts."""
    settings = get_settings()
    report = apply_all(get_engine(settings.database_url), max_fail=settings.max_fail)
    logger = get_run_logger()
    (logger.info if report.applied or report.deferred else logger.debug)(
        "%s event(s) applied, %s recipient(s) changed, %s unsubscribed, %s unmatched, %s deferred",
        report.applied,
        report.changed,
        report.unsubscribed,
        report.unmatched,
        report.deferred,
    )
    return asdict(report)
