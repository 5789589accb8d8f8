"""Long-running commands: send a sending in this process, serve the deployments, the web app, the dev relay."""

from __future__ import annotations

import os
import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailshot_core.cli.common import (
    app,
    current_settings,
    db_session,
    err,
    open_engine,
    out,
)
from mailshot_core.sending import sendings

if TYPE_CHECKING:  # fastapi only for the `web` command, prefect only for `send`
    from flows.ephemeral import SharedServer
    from mailshot_core.web.context import RunStarter


@app.command("send")
def send(
    mailshot_id: int,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    fast: Annotated[
        bool,
        typer.Option(
            help="Fast mode: one batch worker per core at once, in separate processes (on Dask when "
            "MAILSHOT_DASK_ADDRESS is set; on SQLite with templates of text and {{ variable }} only, one "
            "worker in this process, faster there); pacing still applies."
        ),
    ] = False,
) -> None:
    """Run the send-mailshot flow for sending ID now, in this process, with a progress bar."""
    engine = open_engine()
    with db_session() as session:  # fail fast, before starting Prefect, on an unknown id
        sendings.get(session, mailshot_id)
    from mailshot_core.sending.early_start import EarlyStart

    # The first batches go while Prefect is imported and its run starts (early_start.py, issue 16).
    parallel = (os.cpu_count() or 2) if fast else 1
    early = EarlyStart(engine, current_settings(), mailshot_id, parallel=parallel)
    early.start()
    try:
        from flows.ephemeral import SharedServer

        # Without PREFECT_API_URL, one Prefect server for the run and its workers, booting in its own
        # process meanwhile.
        with SharedServer() as server:
            result = _run_flow(engine, mailshot_id, fast, parallel, progress, server)
    finally:
        early.abandon("the command ended before its Prefect run started")
    out.print(
        f"sending {mailshot_id}: {result['status']} — {result['sent']} sent, {result['failed']} failed, "
        f"{result['nb_unknown']} in doubt, of {result['total']}"
    )


def _run_flow(
    engine: Engine, mailshot_id: int, fast: bool, parallel: int, progress: bool, server: SharedServer
) -> dict[str, Any]:
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(engine, mailshot_id, done), daemon=True) if progress else None
    if watcher is not None:
        watcher.start()
    try:
        from prefect import Flow

        from flows.send_mailshot import send_mailshot, send_mailshot_fast

        flow_fn: Flow[..., dict[str, Any]] = send_mailshot_fast if fast else send_mailshot
        if fast and current_settings().dask_address:
            from flows.send_mailshot_dask import send_mailshot_dask

            flow_fn = send_mailshot_dask
        server.ready()
        return flow_fn(mailshot_id, parallel=parallel)
    finally:
        done.set()
        if watcher is not None:
            watcher.join(timeout=5)


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
    click redirects /c/, ESP webhooks /webhooks/PROVIDER, follow-up pages /admin/, the Newsletter API /api/v1
    (its docs at /api/v1/docs; keys: `mailshot api-keys create`)."""
    import uvicorn

    from mailshot_core.web import server
    from mailshot_core.web.app import create_app

    settings = current_settings()
    engine = open_engine()
    app = create_app(settings, engine=engine, start_run=_run_starter(engine))
    # Proxy headers only from MAILSHOT_FORWARDED_ALLOW_IPS (server.py), so the login throttle's address is
    # the connection's unless a known proxy says otherwise.
    uvicorn.Server(server.config(app, settings, host=host, port=port, log_level="info")).run()


def _run_starter(engine: Engine) -> RunStarter | None:
    """The pages' Send and Resume, the API's creates and actions make the sending's run at once (for its
    start time when scheduled) when Prefect is reachable from here; without a Prefect API the
    dispatch-mailshots deployment starts it within its interval."""
    from flows.sending_runs import ensure_run, prefect_api_configured

    if not prefect_api_configured():
        return None
    return partial(ensure_run, engine)


@app.command("relay")
def relay(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 1025,
    out_dir: Annotated[Path, typer.Option(help="Where each received message is written.")] = Path("demo-out"),
) -> None:
    """A local test relay that accepts every message and writes it to disk (not for production)."""
    from mailshot_core.devtools.relay import main as relay_main

    raise typer.Exit(relay_main(["--port", str(port), "--out-dir", str(out_dir)]))
