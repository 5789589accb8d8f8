"""`mailshot lists` and `mailshot subscribers`: who receives."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mailshot_core.audience import lists, subscribers
from mailshot_core.cli.common import (
    db_session,
    err,
    lists_app,
    out,
    subs_app,
)


@lists_app.command("create")
def lists_create(
    name: str, title: Annotated[str, typer.Option(help="Human title (List-Id description).")] = ""
) -> None:
    """Create a mailing list NAME."""
    with db_session() as session:
        mlist = lists.create_list(session, name, title)
        out.print(f"list {mlist.identifier} created")


@lists_app.command("list")
def lists_list() -> None:
    """Show the lists and their number of valid subscriptions."""
    with db_session() as session:
        table = Table("list", "title", "subscribers")
        for mlist, n in lists.list_lists(session):
            table.add_row(mlist.identifier, mlist.title, str(n))
        out.print(table)


# --- subscribers ------------------------------------------------------------------------------------


@subs_app.command("import")
def subs_import(
    file: Path,
    list_: Annotated[str, typer.Option("--list", help="List to subscribe the addresses to.")],
    strict: Annotated[bool, typer.Option(help="Refuse the whole file if any row is invalid.")] = False,
) -> None:
    """Import FILE.csv (columns: email, optional nom, lang); invalid rows are reported by line and skipped."""
    with db_session() as session:
        report = subscribers.import_csv(session, file, list_, strict=strict)
    for line, reason in report.errors:
        err.print(f"{file}, line {line}: {reason} (skipped)")
    out.print(
        f"{report.rows} rows: {report.new_subscriptions} subscribed to {list_} "
        f"({report.new_subscribers} new addresses), {report.already_subscribed} already subscribed, "
        f"{report.kept_unsubscribed} left unsubscribed, {len(report.errors)} invalid"
    )


@subs_app.command("add")
def subs_add(
    email: str,
    list_: Annotated[str, typer.Option("--list", help="List to subscribe to.")],
    nom: Annotated[str, typer.Option(help="Name (the `nom` variable).")] = "",
    lang: Annotated[str, typer.Option(help="Language code.")] = "",
) -> None:
    """Subscribe EMAIL to a list."""
    with db_session() as session:
        sub, created = subscribers.add_subscriber(session, email, list_, nom, lang)
        out.print(f"{sub.email} {'subscribed to' if created else 'already subscribed to'} {list_}")


@subs_app.command("unsubscribe")
def subs_unsubscribe(
    email: str,
    list_: Annotated[str | None, typer.Option("--list", help="Only this list (default: all lists).")] = None,
) -> None:
    """Unsubscribe EMAIL from one list or from all."""
    with db_session() as session:
        n = subscribers.unsubscribe(session, email, list_, reason="unsubscribed by the operator (CLI)")
        out.print(f"{email}: {n} subscription(s) ended")


@subs_app.command("show")
def subs_show(email: str) -> None:
    """Everything about EMAIL: lists, every sending and its outcome, feedback events, unsubscription."""
    with db_session() as session:
        h = subscribers.history(session, email)
    s = h.subscriber
    out.print(f"[bold]{s.email}[/bold]  nom={s.nom!r} lang={s.lang!r} status={s.status} since {s.created_at:%Y-%m-%d}")
    if s.unsubscribed_at:
        out.print(f"unsubscribed {s.unsubscribed_at:%Y-%m-%d %H:%M} UTC: {s.unsubscribe_reason}")
    table = Table("list", "subscription", "since", title="Lists")
    for identifier, status, when in h.subscriptions:
        table.add_row(identifier, status, f"{when:%Y-%m-%d}")
    out.print(table)
    table = Table("sending", "subject", "status", "tries", "last attempt", "last error", title="Sendings")
    for o in h.sendings:
        error = "(archived: detail purged)" if o.archived else o.last_error or ""
        last = f"{o.at:%Y-%m-%d %H:%M}" if o.at else ""
        table.add_row(str(o.mailshot_id), o.subject[:40], o.status, str(o.tries), last, error)
    out.print(table)
    # The id column: the MAX_FAIL reason cites events by id (fail_rule.describe).
    table = Table("id", "when", "source", "sending", "event", "detail", title="Feedback events")
    for e in h.events:
        table.add_row(
            str(e.id), f"{e.received_at:%Y-%m-%d %H:%M}", e.source, str(e.mailshot_id or ""), e.kind, e.detail or ""
        )
    out.print(table)
