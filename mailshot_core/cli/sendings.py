"""Sendings: create (a draft, scheduled or started), test, status, pause/resume/cancel, requeue."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlmodel import Session

from mailshot_core.cli.common import (
    app,
    current_settings,
    db_session,
    err,
    open_engine,
    out,
    read_file,
)
from mailshot_core.errors import InvalidInput
from mailshot_core.sending import claims, sendings
from mailshot_core.store.models import MailshotStatus


def _parse_when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"--start-at: not an ISO 8601 date-time: {value!r} (e.g. 2026-12-01T08:00+01:00)") from None


@app.command("create")
def create(
    subject: Annotated[str, typer.Option(help="Subject (a template: {{ nom }} ...).")],
    html: Annotated[Path, typer.Option(help="HTML body file (Jinja2 template).")],
    list_: Annotated[list[str], typer.Option("--list", help="Recipient list; repeat for several.")],
    text: Annotated[Path | None, typer.Option(help="Text body file (default: generated from the HTML).")] = None,
    from_name: Annotated[str | None, typer.Option(help="Sender name (default MAILSHOT_FROM_NAME).")] = None,
    from_email: Annotated[str | None, typer.Option(help="Sender address (default MAILSHOT_FROM_EMAIL).")] = None,
    start_at: Annotated[
        str | None, typer.Option(help="Schedule: ISO 8601 date-time; without an offset it is UTC.")
    ] = None,
    transport: Annotated[str | None, typer.Option(help="Transport (default MAILSHOT_TRANSPORT).")] = None,
    rate_per_day: Annotated[
        int | None, typer.Option(help="Messages per day, spread evenly (default MAILSHOT_RATE_PER_DAY).")
    ] = None,
    rate_per_hour: Annotated[int | None, typer.Option(help="Cap per hour (default MAILSHOT_RATE_PER_HOUR).")] = None,
    rate_per_minute: Annotated[
        int | None, typer.Option(help="Cap per minute (default MAILSHOT_RATE_PER_MINUTE).")
    ] = None,
    track: Annotated[
        bool | None,
        typer.Option(
            "--track/--no-track", help="Open pixel and click redirects in the HTML (default: MAILSHOT_TRACKING)."
        ),
    ] = None,
    send_now: Annotated[
        bool,
        typer.Option(
            "--send",
            help="Start it at once instead of leaving a draft (a send-mailshot/now run when a Prefect API is configured).",
        ),
    ] = False,
) -> None:
    """Create a sending: a draft (test it, then `mailshot send ID`), or scheduled with --start-at, or started
    with --send; then, with a Prefect API configured, its send-mailshot/now run is created (for its start
    time).  Prints its id alone on the last line."""
    settings = current_settings()
    spec = sendings.NewMailshot(
        subject=subject,
        html=read_file(html, "HTML"),
        text=read_file(text, "text") if text else None,
        lists=tuple(list_),
        from_name=from_name,
        from_email=from_email,
        start_at=_parse_when(start_at),
        transport=transport,
        rate_per_day=rate_per_day,
        rate_per_hour=rate_per_hour,
        rate_per_minute=rate_per_minute,
        track=track,
        send_now=send_now,
    )
    with db_session() as session:
        m = sendings.create(session, settings, spec)
        mailshot_id, status, start = m.id, m.status, m.start_at
        err.print(f"sending {m.id} created ({m.status}) for lists {m.lists}")
        if m.status == MailshotStatus.DRAFT:
            err.print(
                f"a draft: nothing sends it until `mailshot send {m.id}` (try `mailshot test {m.id} ADDRESS` first)"
            )
    assert mailshot_id is not None
    if status in (MailshotStatus.INIT, MailshotStatus.PROCESSING):
        _start_run(mailshot_id, start if status == MailshotStatus.INIT else None)
    out.print(str(mailshot_id))


def _start_run(mailshot_id: int, start_at: datetime | None) -> None:
    """With a Prefect API configured, the sending's send-mailshot/now run is created now, for its start
    time (flows/sending_runs.py); without one, the dispatcher of the site's Prefect server does it."""
    from flows.sending_runs import SEND_NOW, ensure_run, prefect_api_configured

    if not prefect_api_configured():
        err.print("no Prefect API configured (PREFECT_API_URL): the dispatch-mailshots deployment will start it")
        return
    from prefect.exceptions import ObjectNotFound

    try:
        served = ensure_run(open_engine(), mailshot_id, start_at=start_at)
    except ObjectNotFound:
        err.print(f"no {SEND_NOW} deployment on the Prefect server: the dispatch-mailshots deployment will start it")
        return
    except Exception as exc:  # the sending exists either way: say so, do not fail the command
        err.print(f"Prefect run not created ({type(exc).__name__}: {exc}): dispatch-mailshots will start it")
        return
    when = f"scheduled for {served.scheduled_for:%Y-%m-%d %H:%M:%S} UTC" if served.scheduled_for else "to start now"
    err.print(f"Prefect run {served.run_id} of {SEND_NOW} {when} (tag mailshot:{mailshot_id})")


@app.command("test")
def test(mailshot_id: int, email: str) -> None:
    """Send one test message of sending ID to EMAIL (subject prefixed [TEST])."""
    from mailshot_core.sending.one_message import send_test

    msg = send_test(open_engine(), current_settings(), mailshot_id, email)
    out.print(f"test message sent to {msg.envelope_to} ({msg.message_id})")


def status_dict(m: Any) -> dict[str, Any]:
    return {
        "id": m.id,
        "status": m.status,
        **sendings.stored_counters(m),
        "cancelled": m.nb_kill,  # never sent (cancelled, or unsubscribed before their turn): not failures
        "nb_read_machine": m.nb_read_machine,
        "nb_clic_machine": m.nb_clic_machine,
        "track": m.track,
        "subject": m.subject,
        "reason": m.status_reason,
    }


@app.command("status")
def status(
    mailshot_id: Annotated[int | None, typer.Argument(help="Sending id (default: all sendings).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Status and counters of one sending (with its in-doubt recipients) or of all."""
    rows = sendings.status_rows(open_engine(), mailshot_id)
    unknown: list[str] = []
    if mailshot_id is not None:
        with db_session() as session:
            unknown = claims.unknown_recipients(session, mailshot_id)
    if as_json:
        data = [status_dict(m) | ({"unknown_recipients": unknown} if mailshot_id is not None else {}) for m in rows]
        out.print_json(json.dumps(data[0] if mailshot_id is not None else data, default=str))
        return
    table = Table()
    for name in ("id", "status", "total", "sent", "failed", "in doubt", "cancelled", "opened", "clicked", "unsub"):
        table.add_column(name, no_wrap=True, min_width=max(len(name), 4))  # numbers are never cut
    table.add_column("subject", no_wrap=True, overflow="ellipsis", max_width=24)
    for m in rows:
        table.add_row(
            str(m.id),
            m.status,
            str(m.total),
            str(m.sent),
            str(m.failed),
            str(m.nb_unknown),
            str(m.nb_kill),
            str(m.nb_read),
            str(m.nb_clic),
            str(m.nb_unsub),
            m.subject[:50],
        )
    out.print(table)
    if mailshot_id is not None and rows[0].status_reason:
        out.print(f"reason: {rows[0].status_reason}")
    if unknown:
        out.print(f"{len(unknown)} recipient(s) in doubt (in flight when a worker died; maybe delivered, not resent):")
        for email in unknown:
            out.print(f"  {email}")
        out.print(f"resend them with: mailshot resend-unknown {mailshot_id}")


def _transition(fn: Callable[[Session, int], Any], mailshot_id: int, verb: str) -> None:
    with db_session() as session:
        m = fn(session, mailshot_id)
        out.print(f"sending {mailshot_id} {verb} (status {m.status})")


@app.command("pause")
def pause(mailshot_id: int) -> None:
    """Pause a sending: takes effect before its next batch."""
    _transition(sendings.pause, mailshot_id, "paused")


@app.command("resume")
def resume(mailshot_id: int) -> None:
    """Resume a paused sending (then run `mailshot send ID`, or let the dispatcher do it)."""
    _transition(sendings.resume, mailshot_id, "resumed")


@app.command("cancel")
def cancel(mailshot_id: int) -> None:
    """Cancel a sending: recipients not yet sent to become `kill`."""
    _transition(sendings.cancel, mailshot_id, "cancelled")


@app.command("resend-unknown")
def resend_unknown(mailshot_id: int) -> None:
    """Queue again the recipients in doubt after a crash (they may receive the message twice)."""
    with db_session() as session:
        n = claims.resend_unknown(session, mailshot_id)
    out.print(f"{n} recipient(s) queued again; run: mailshot send {mailshot_id}")


@app.command("requeue")
def requeue(
    mailshot_id: int,
    failed: Annotated[bool, typer.Option("--failed", help="Queue the failed recipients again (tries reset).")] = False,
    reason: Annotated[str, typer.Option(help="Why (kept in each recipient's last error).")] = "",
) -> None:
    """Queue again the recipients that failed because of an operator's mistake (a wrong setting, a
    broken relay account), once it is fixed.  Bounced addresses are not requeued."""
    if not failed:
        raise InvalidInput("say what to requeue: --failed")
    with db_session() as session:
        n = claims.requeue_failed(session, mailshot_id, reason)
        status = sendings.get(session, mailshot_id).status
    hint = f"mailshot resume {mailshot_id}" if status == MailshotStatus.PAUSE else f"mailshot send {mailshot_id}"
    out.print(f"{n} failed recipient(s) queued again; then: {hint}")
