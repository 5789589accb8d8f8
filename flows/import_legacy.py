"""`import-legacy` (on demand): a SPIP site's subscribers, lists and sendings into this database."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from mailshot_core.config import get_settings
from mailshot_core.errors import InvalidInput
from mailshot_core.legacy import mapping
from mailshot_core.store.db import get_engine


@flow(name="import-legacy", log_prints=False)
def import_legacy(
    url: str = "",
    source: Literal["all", "spip-listes", "spip-lettres", "mailshot"] = "all",
    prefix: str = "spip_",
    dry_run: bool = False,
) -> dict[str, Any]:
    """Import a SPIP site (SPIP-Listes, SPIP-Lettres, Mailshot + Mailsubscribers); a second run imports nothing twice.

    Args:
        url: The SPIP site's database, mysql://user:password@host/db. Empty: MAILSHOT_LEGACY_URL (keeps the password out of the run history).
        source: Which plugin's data to import, or all those found.
        prefix: The site's table prefix.
        dry_run: Only report what would be imported.
    """
    logger = get_run_logger()
    settings = get_settings()
    target = url or (settings.legacy_url.get_secret_value() if settings.legacy_url else "")
    if not target:
        raise InvalidInput("no database URL: give the url parameter or set MAILSHOT_LEGACY_URL")
    report = mapping.import_legacy(get_engine(settings.database_url), target, source, prefix=prefix, dry_run=dry_run)
    for problem in report.problems:
        logger.warning("not imported or changed: %s", problem)
    logger.info(report.summary())
    create_table_artifact(
        key="import-legacy",
        table=[{"table": p.table, "id": p.row_id, "reason": p.reason} for p in report.problems]
        or [{"table": "", "id": "", "reason": "every row imported"}],
        description=report.summary(),
    )
    return {"created": dict(report.created), "existing": dict(report.existing), "problems": len(report.problems)}
