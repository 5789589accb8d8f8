"""`mailshot lists` and `mailshot subscribers`: who receives."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mailshot_core.audience import lists, subscribers, subscriptions
from mailshot_core.cli.common import (
    db_session,
    err,
    lists_app,
    out,
    read_file,
    subs_app,
)
from mailshot_core.errors import InvalidInput

# The fields `lists create` and `lists update` share (None: not given, so unchanged by update).
Description = Annotated[str | None, typer.Option(help="What the list is about (shown on the subscribe page).")]
Open = Annotated[
    bool | None, typer.Option("--open/--closed", help="Open: visitors may subscribe themselves (default closed).")
]
FromName = Annotated[str | None, typer.Option(help="Sender name of its sendings ('' removes it).")]
FromEmail = Annotated[
    str | None,
    typer.Option(help="Sender address of its sendings, when it is their first list with one ('' removes it)."),
]
DoubleOptin = Annotated[
    bool | None,
    typer.Option(
        "--double-optin/--single-optin",
        help="A visitor's subscription waits for the emailed link (default), or counts at once.",
    ),
]
Lang = Annotated[str | None, typer.Option(help="Language of its confirmation message (en, fr, es, de, it).")]
ConfirmSubject = Annotated[
    str | None, typer.Option(help="Subject of its confirmation message (a template; '' = the default).")
]
ConfirmText = Annotated[
    Path | None,
    typer.Option(help="File with its confirmation message's text: a template with {{ url_confirm }}."),
]


def _fields(**given: object) -> dict[str, object]:
    text = given.pop("confirm_text")
    if isinstance(text, Path):
        given["confirm_text"] = read_file(text, "confirmation text")
    return {name: value for name, value in given.items() if value is not None}


@lists_app.command("create")
def lists_create(
    name: str,
    title: Annotated[str, typer.Option(help="Human title (List-Id description, pages).")] = "",
    description: Description = None,
    open_: Open = None,
    from_name: FromName = None,
    from_email: FromEmail = None,
    double_optin: DoubleOptin = None,
    lang: Lang = None,
    confirm_subject: ConfirmSubject = None,
    confirm_text: ConfirmText = None,
) -> None:
    """Create a mailing list NAME (closed, double opt-in, no sender of its own unless told)."""
    fields = _fields(
        description=description,
        open=open_,
        from_name=from_name,
        from_email=from_email,
        double_optin=double_optin,
        lang=lang,
        confirm_subject=confirm_subject,
        confirm_text=confirm_text,
    )
    with db_session() as session:
        mlist = lists.create_list(session, name, title, **fields)
        out.print(f"list {mlist.identifier} created ({'open' if mlist.open else 'closed'})")


@lists_app.command("update")
def lists_update(
    name: str,
    title: Annotated[str | None, typer.Option(help="Human title.")] = None,
    description: Description = None,
    open_: Open = None,
    from_name: FromName = None,
    from_email: FromEmail = None,
    double_optin: DoubleOptin = None,
    lang: Lang = None,
    confirm_subject: ConfirmSubject = None,
    confirm_text: ConfirmText = None,
) -> None:
    """Change the given fields of list NAME; the others stay as they are."""
    fields = _fields(
        title=title,
        description=description,
        open=open_,
        from_name=from_name,
        from_email=from_email,
        double_optin=double_optin,
        lang=lang,
        confirm_subject=confirm_subject,
        confirm_text=confirm_text,
    )
    if not fields:
        raise InvalidInput("nothing to change: give at least one option (see mailshot lists update --help)")
    with db_session() as session:
        mlist = lists.update_list(session, name, **fields)
        out.print(f"list {mlist.identifier} updated: {', '.join(sorted(fields))}")


@lists_app.command("list")
def lists_list() -> None:
    """Show the lists: open or closed, sender, double opt-in, valid and pending subscriptions."""
    with db_session() as session:
        pending = lists.pending_counts(session)
        table = Table("list", "title", "public", "sender", "opt-in", "subscribers", "pending")
        for mlist, n in lists.list_lists(session):
            sender = f"{mlist.from_name} <{mlist.from_email}>" if mlist.from_email else ""
            table.add_row(
                mlist.identifier,
                mlist.title,
                "open" if mlist.open else "closed",
                sender,
                "double" if mlist.double_optin else "single",
                str(n),
                str(pending.get(mlist.id or 0, 0)),
            )
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
        sub, created = subscriptions.add_subscriber(session, email, list_, nom, lang)
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
    """Everything about EMAIL: lists (pending ones too), the opt-in trail, every sending and its outcome,
    feedback events, unsubscription."""
    with db_session() as session:
        h = subscribers.history(session, email)
        trail = subscriptions.trail(session, h.subscriber.id or 0)
    s = h.subscriber
    out.print(f"[bold]{s.email}[/bold]  nom={s.nom!r} lang={s.lang!r} status={s.status} since {s.created_at:%Y-%m-%d}")
    if s.unsubscribed_at:
        out.print(f"unsubscribed {s.unsubscribed_at:%Y-%m-%d %H:%M} UTC: {s.unsubscribe_reason}")
    table = Table("list", "subscription", "since", title="Lists")
    for identifier, status, when in h.subscriptions:
        table.add_row(identifier, status, f"{when:%Y-%m-%d}")
    out.print(table)
    # The consent record: who asked for what, from where, and when the link was followed ("confirmed").
    table = Table("when", "what", "list", "source", "client", "detail", title="Opt-in trail")
    for t in trail:
        table.add_row(f"{t.at:%Y-%m-%d %H:%M}", t.action, t.list, t.source, t.client or "", t.detail or "")
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
