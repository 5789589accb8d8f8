"""The ``mailshot`` command (Typer + Rich).

Every error a user can cause ends as one line ``error: <what and where>`` on stderr
and exit code 1, with nothing changed in the database (each command runs in one
transaction).  Prefect is imported only by the commands that run flows.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from mailshot_core.audience import subscribers
from mailshot_core.config import ConfigError, Settings, get_settings
from mailshot_core.errors import InvalidInput, MailshotError
from mailshot_core.sending import claims, sendings
from mailshot_core.store.db import get_engine, session_scope
from mailshot_core.store.models import MailshotStatus

app = typer.Typer(
    name="mailshot",
    help="Send newsletters in bulk, one personalised message per subscriber, with a per-recipient record.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
lists_app = typer.Typer(help="Mailing lists.", no_args_is_help=True)
subs_app = typer.Typer(help="Subscribers and subscriptions.", no_args_is_help=True)
app.add_typer(lists_app, name="lists")
app.add_typer(subs_app, name="subscribers")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _settings() -> Settings:
    return get_settings()


def _engine() -> Engine:
    settings = _settings()
    try:
        return get_engine(settings.database_url)
    except OperationalError as exc:
        raise MailshotError(f"cannot open the database {settings.database_url}: {exc.orig}") from None


@contextmanager
def _session() -> Iterator[Session]:
    with session_scope(_engine()) as session:
        yield session


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"{what} file {path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} file {path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InvalidInput(f"{what} file {path}: {exc.strerror}") from None


# --- lists ------------------------------------------------------------------------------------------


@lists_app.command("create")
def lists_create(
    name: str, title: Annotated[str, typer.Option(help="Human title (List-Id description).")] = ""
) -> None:
    """Create a mailing list NAME."""
    with _session() as session:
        mlist = subscribers.create_list(session, name, title)
        out.print(f"list {mlist.identifier} created")


@lists_app.command("list")
def lists_list() -> None:
    """Show the lists and their number of valid subscriptions."""
    with _session() as session:
        table = Table("list", "title", "subscribers")
        for mlist, n in subscribers.list_lists(session):
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
    with _session() as session:
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
    with _session() as session:
        sub, created = subscribers.add_subscriber(session, email, list_, nom, lang)
        out.print(f"{sub.email} {'subscribed to' if created else 'already subscribed to'} {list_}")


@subs_app.command("unsubscribe")
def subs_unsubscribe(
    email: str,
    list_: Annotated[str | None, typer.Option("--list", help="Only this list (default: all lists).")] = None,
) -> None:
    """Unsubscribe EMAIL from one list or from all."""
    with _session() as session:
        n = subscribers.unsubscribe(session, email, list_, reason="unsubscribed by the operator (CLI)")
        out.print(f"{email}: {n} subscription(s) ended")


@subs_app.command("show")
def subs_show(email: str) -> None:
    """Everything about EMAIL: lists, every sending and its outcome, feedback events, unsubscription."""
    with _session() as session:
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


# --- sendings ---------------------------------------------------------------------------------------


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
    settings = _settings()
    spec = sendings.NewMailshot(
        subject=subject,
        html=_read(html, "HTML"),
        text=_read(text, "text") if text else None,
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
    with _session() as session:
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
        served = ensure_run(_engine(), mailshot_id, start_at=start_at)
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

    msg = send_test(_engine(), _settings(), mailshot_id, email)
    out.print(f"test message sent to {msg.envelope_to} ({msg.message_id})")


def _status_dict(m: Any) -> dict[str, Any]:
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
    rows = sendings.status_rows(_engine(), mailshot_id)
    unknown: list[str] = []
    if mailshot_id is not None:
        with _session() as session:
            unknown = claims.unknown_recipients(session, mailshot_id)
    if as_json:
        data = [_status_dict(m) | ({"unknown_recipients": unknown} if mailshot_id is not None else {}) for m in rows]
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
    with _session() as session:
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
    with _session() as session:
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
    with _session() as session:
        n = claims.requeue_failed(session, mailshot_id, reason)
        status = sendings.get(session, mailshot_id).status
    hint = f"mailshot resume {mailshot_id}" if status == MailshotStatus.PAUSE else f"mailshot send {mailshot_id}"
    out.print(f"{n} failed recipient(s) queued again; then: {hint}")


@app.command("send")
def send(
    mailshot_id: int,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    fast: Annotated[
        bool,
        typer.Option(
            help="Fast mode: one batch worker per core at once, in separate processes (on Dask when "
            "MAILSHOT_DASK_ADDRESS is set); pacing still applies."
        ),
    ] = False,
) -> None:
    """Run the send-mailshot flow for sending ID now, in this process, with a progress bar."""
    engine = _engine()
    with _session() as session:  # fail fast, before starting Prefect, on an unknown id
        sendings.get(session, mailshot_id)
    import os

    from prefect import Flow

    from flows.send_mailshot import send_mailshot, send_mailshot_fast

    flow_fn: Flow[..., dict[str, Any]] = send_mailshot_fast if fast else send_mailshot
    if fast and get_settings().dask_address:
        from flows.send_mailshot_dask import send_mailshot_dask

        flow_fn = send_mailshot_dask

    result: dict[str, Any] = {}
    done = threading.Event()
    if progress:
        watcher = threading.Thread(target=_watch, args=(engine, mailshot_id, done), daemon=True)
        watcher.start()
    else:
        watcher = None
    try:
        result = flow_fn(mailshot_id, parallel=(os.cpu_count() or 2) if fast else 1)
    finally:
        done.set()
        if watcher is not None:
            watcher.join(timeout=5)
    out.print(
        f"sending {mailshot_id}: {result['status']} — {result['sent']} sent, {result['failed']} failed, "
        f"{result['nb_unknown']} in doubt, of {result['total']}"
    )


def _watch(engine: Engine, mailshot_id: int, done: threading.Event) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn(f"sending {mailshot_id}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    ) as bar:
        task = bar.add_task("send", total=None)
        while True:
            with Session(engine) as session:
                m = sendings.get(session, mailshot_id)
                bar.update(task, total=m.total or None, completed=m.current)
            if done.wait(0.5):
                with Session(engine) as session:
                    m = sendings.get(session, mailshot_id)
                    bar.update(task, total=m.total or None, completed=m.current)
                return


@app.command("serve")
def serve() -> None:
    """Serve every deployment (send-mailshot, send-test ...) in this process, for small sites."""
    from deployments.serve import serve_all

    serve_all()


@app.command("web")
def web(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve the web app with uvicorn (put it behind HTTPS): unsubscribe links /u/, open pixel /o/,
    click redirects /c/, ESP webhooks /webhooks/PROVIDER, follow-up pages /admin/."""
    import uvicorn

    from mailshot_core.web import server
    from mailshot_core.web.app import create_app

    settings = _settings()
    engine = _engine()
    app = create_app(settings, engine=engine, start_run=_run_starter(engine))
    # Proxy headers only from MAILSHOT_FORWARDED_ALLOW_IPS (server.py), so the login throttle's address is
    # the connection's unless a known proxy says otherwise.
    uvicorn.Server(server.config(app, settings, host=host, port=port, log_level="info")).run()


def _run_starter(engine: Engine) -> Callable[[int], object] | None:
    """The pages' Send and Resume start the sending's run at once when Prefect is reachable from here;
    without a Prefect API the dispatch-mailshots deployment starts it within its interval."""
    from flows.sending_runs import ensure_run, prefect_api_configured

    if not prefect_api_configured():
        return None
    return lambda mailshot_id: ensure_run(engine, mailshot_id)


@app.command("apply-feedback")
def apply_feedback() -> None:
    """Apply the stored ESP events now (what the apply-feedback flow does every minute)."""
    from mailshot_core.feedback.inbox import apply_all

    r = apply_all(_engine(), max_fail=_settings().max_fail)
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
    """Archive finished sendings: recipient rows deleted, counters kept, the most recent one never archived."""
    from mailshot_core.duration import DurationError, parse_duration
    from mailshot_core.sending import archive as purging

    try:
        age = parse_duration(older_than if older_than is not None else _settings().purge_after)
    except DurationError as exc:
        raise InvalidInput(f"--older-than: {exc}") from None
    report = purging.purge(_engine(), age, dry_run=dry_run)
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

    settings = _settings()
    target = url or (settings.legacy_url.get_secret_value() if settings.legacy_url else None)
    if not target:
        raise InvalidInput("--url: give the SPIP site's database URL (or set MAILSHOT_LEGACY_URL)")
    report = mapping.import_legacy(_engine(), target, source, prefix=prefix, dry_run=dry_run)
    for problem in report.problems:
        err.print(f"not imported or changed: {problem}", markup=False)
    out.print(report.summary(), markup=False)


# --- issue 5: bounce mail -------------------------------------------------------------------------------


@app.command("ingest-bounces")
def ingest_bounces() -> None:
    """Read the bounce mailbox now (what the ingest-bounces flow does every 10 minutes); then apply-feedback."""
    from mailshot_core.feedback.mailboxes import ingest_configured

    r = ingest_configured(_settings())
    for key, why in r.left:
        err.print(f"message {key} left in the mailbox: {why}", markup=False)
    out.print(f"{r.seen} message(s) read: {r.processed} processed, {r.events} new event(s), {len(r.left)} left")


@app.command("relay")
def relay(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 1025,
    out_dir: Annotated[Path, typer.Option(help="Where each received message is written.")] = Path("demo-out"),
) -> None:
    """A local test relay that accepts every message and writes it to disk (not for production)."""
    from mailshot_core.devtools.relay import main as relay_main

    raise typer.Exit(relay_main(["--port", str(port), "--out-dir", str(out_dir)]))


def _undecodable_argument(args: list[str]) -> str | None:
    """The first argument that is not UTF-8, described; None when all are.

    Python hands undecodable bytes of argv over as lone surrogates (PEP 383): they would only fail
    later, with a traceback, when the value reaches the database, a header or the terminal.
    """
    import os

    for position, arg in enumerate(args, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as exc:
            raw = os.fsencode(arg)
            shown = raw.decode("utf-8", "backslashreplace")
            return (
                f"argument {position} ({shown!r}) is not UTF-8 text: byte 0x{raw[len(os.fsencode(arg[: exc.start]))]:02x} "
                f"at character {exc.start + 1}; give it in UTF-8"
            )
    return None


def main() -> None:
    """Entry point: one clear line for every error a user can cause."""
    problem = _undecodable_argument(sys.argv[1:])
    if problem is not None:
        err.print(f"error: {problem}", markup=False)
        sys.exit(1)
    try:
        app(standalone_mode=False)
    except ConfigError as exc:
        for line in exc.problems:  # one line per bad setting
            err.print(f"error: {line}", markup=False)
        sys.exit(1)
    except MailshotError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(1)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
