"""`purge-stats` (daily): archive finished sendings older than MAILSHOT_PURGE_AFTER, forget unconfirmed
subscription requests whose link expired; report what it did."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from mailshot_core.config import get_settings
from mailshot_core.duration import parse_duration
from mailshot_core.sending import archive
from mailshot_core.sending.confirmations import expire_requests
from mailshot_core.store.db import get_engine


@flow(name="purge-stats", log_prints=False)
def purge_stats(older_than: str | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Archive finished sendings: recipient rows deleted, counters kept, the most recent one never archived;
    forget the subscription requests nobody confirmed in time.

    Args:
        older_than: Archive sendings ended longer ago than this ('12 months', '90d', '2w'). Empty: MAILSHOT_PURGE_AFTER.
        dry_run: Only report what would be archived.
    """
    settings = get_settings()
    engine = get_engine(settings.database_url)
    report = archive.purge(engine, parse_duration(older_than or settings.purge_after), dry_run=dry_run)
    get_run_logger().info(report.summary())
    expired = expire_requests(engine, settings, dry_run=dry_run)
    get_run_logger().info(expired)
    create_table_artifact(
        key="purge-stats",
        table=[
            {"sending": a.id, "was": a.status, "ended": str(a.ended_at or ""), "rows": a.recipients, **a.counters}
            for a in report.archived
        ]
        or [{"sending": "none", "was": "", "ended": "", "rows": 0}],
        description=f"{report.summary()} {expired}",
    )
    return {"archived": [a.id for a in report.archived], "dry_run": dry_run, "cutoff": report.cutoff.isoformat()}
