"""`apply-feedback`: apply the inbox of ESP events (statuses, counters, unsubscriptions).

Scheduled every minute (deployments/serve.py, prefect.yaml) and callable at any time: applying is
idempotent and concurrent runs share the inbox without applying an event twice (feedback.py).
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
    get_run_logger().info(
        "%s event(s) applied, %s recipient(s) changed, %s unsubscribed, %s unmatched, %s deferred",
        report.applied,
        report.changed,
        report.unsubscribed,
        report.unmatched,
        report.deferred,
    )
    return asdict(report)
