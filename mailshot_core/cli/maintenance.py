"""Feedback, bounces, purge and the SPIP import, by hand (the deployments run them on schedules)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mailshot_core.cli.common import (
    app,
    current_settings,
    err,
    open_engine,
    out,
)
from mailshot_core.errors import InvalidInput


@app.command("apply-feedback")
def apply_feedback() -> None:
    """Apply the stored ESP events now (what the apply-feedback flow does every minute)."""
    from mailshot_core.feedback.inbox import apply_all

    r = apply_all(open_engine(), max_fail=current_settings().max_fail)
    out.print(
        f"{r.applied} event(s) applied: {r.changed} recipient(s) changed, {r.unsubscribed} unsubscribed, "
        f"{r.unmatched} without a matching recipient, {r.deferred} waiting for a send in progress"
    )


# --- issue 7: purge, legacy import ----------------------------------------------------------------------


@app.command("purge")
def purge(
    older_than: Annotated[
        str | None,
        typer.Option(
            help="Archive sendings ended longer ago than this ('12 months', '90d'); default MAILSHOT_PURGE_AFTER."
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be archived.")] = False,
) -> None:
    """Archive finished sendings (recipient rows deleted, counters kept, the most recent one never archived),
    and forget the subscription requests nobody confirmed before their link expired."""
    from mailshot_core.duration import DurationError, parse_duration
    from mailshot_core.sending import archive as purging
    from mailshot_core.sending.confirmations import expire_requests

    try:
        age = parse_duration(older_than if older_than is not None else current_settings().purge_after)
    except DurationError as exc:
        raise InvalidInput(f"--older-than: {exc}") from None
    report = purging.purge(open_engine(), age, dry_run=dry_run)
    table = Table("id", "was", "ended", "recipient rows", "sent", "failed", "subject")
    for a in report.archived:
        ended = f"{a.ended_at:%Y-%m-%d}" if a.ended_at else ""
        table.add_row(
            str(a.id),
            a.status,
            ended,
            str(a.recipients),
            str(a.counters["sent"]),
            str(a.counters["failed"]),
            a.subject[:50],
        )
    if report.archived:
        out.print(table)
    if report.kept_latest is not None:
        out.print(f"sending {report.kept_latest} is the most recent finished sending: never archived")
    for mailshot_id in report.repaired:
        err.print(f"sending {mailshot_id}: counters differed from its recipient rows; the recount was kept")
    out.print(report.summary())
    out.print(expire_requests(open_engine(), current_settings(), dry_run=dry_run))


@app.command("import-legacy")
def import_legacy(
    url: Annotated[
        str | None,
        typer.Option(help="SPIP site's database: mysql://user:password@host/db (default MAILSHOT_LEGACY_URL)."),
    ] = None,
    source: Annotated[
        str, typer.Option(help="spip-listes, spip-lettres, mailshot (Mailshot + Mailsubscribers) or all.")
    ] = "all",
    prefix: Annotated[str, typer.Option(help="Table prefix of the SPIP site.")] = "spip_",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be imported; change nothing.")] = False,
) -> None:
    """Import subscribers, lists and sendings of a SPIP site (idempotent: a second run imports nothing twice)."""
    from mailshot_core.legacy import mapping

    settings = current_settings()
    target = url or (settings.legacy_url.get_secret_value() if settings.legacy_url else None)
    if not target:
        raise InvalidInput("--url: give the SPIP site's database URL (or set MAILSHOT_LEGACY_URL)")
    report = mapping.import_legacy(open_engine(), target, source, prefix=prefix, dry_run=dry_run)
    for problem in report.problems:
        err.print(f"not imported or changed: {problem}", markup=False)
    out.print(report.summary(), markup=False)


# --- issue 5: bounce mail -------------------------------------------------------------------------------


@app.command("ingest-bounces")
def ingest_bounces() -> None:
    """Read the bounce mailbox now (what the ingest-bounces flow does every 10 minutes); then apply-feedback."""
    from mailshot_core.feedback.mailboxes import ingest_configured

    r = ingest_configured(current_settings())
    for key, why in r.left:
        err.print(f"message {key} left in the mailbox: {why}", markup=False)
    out.print(f"{r.seen} message(s) read: {r.processed} processed, {r.events} new event(s), {len(r.left)} left")
