"""Deployment definitions, served from one process (`mailshot serve`) for small sites.

The same deployments, with the same names and schedules, are declared in prefect.yaml for work pools
(`prefect deploy --all`; tests/flows/test_deployments.py keeps the two equal).  Each name says what
the deployment does: `send-mailshot/now`, `control-mailshot/by-id`, `purge-stats/daily`...

Sendings should run as deployments: only runs started by `serve` or a worker can be cancelled from
Prefect (reference/prefect.md §6), and a cancellation pauses the sending.

Quiet when idle: the scheduled deployments make about 265 flow runs a day on a site with nothing to
send (dispatch every 10 minutes: 144, bounce mailbox every 15 minutes: 96, the feedback sweep hourly:
24, purge daily: 1; measured by bench/idle_runs.py), where one dispatch and one feedback run a minute
made 2,880.  Scheduled sendings get a run for their start time when they are scheduled, and webhook
events are applied on arrival, so neither waits for these schedules.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from datetime import timedelta
from typing import Any

from prefect import serve
from pydantic import TypeAdapter

from flows.apply_feedback import apply_feedback
from flows.control_mailshot import control_mailshot
from flows.create_and_send import create_and_send
from flows.dispatch_mailshots import dispatch_mailshots
from flows.import_legacy import import_legacy
from flows.ingest_bounces import ingest_bounces
from flows.purge_stats import purge_stats
from flows.send_mailshot import send_mailshot, send_mailshot_fast
from flows.send_test import send_test
from mailshot_core.config import get_settings

log = logging.getLogger("mailshot.serve")

# Schedules, the same in prefect.yaml (the dispatcher's interval is MAILSHOT_DISPATCH_INTERVAL here).
FEEDBACK_CRON = "0 * * * *"  # hourly: a sweep, events are applied on arrival
BOUNCES_CRON = "*/15 * * * *"
PURGE_CRON = "30 3 * * *"  # daily, at a quiet hour
# What `prefect server` should be started with to keep flow runs for this long, not forever
# (its default vacuums events only: reference/prefect.md, "Observed with Prefect 3.9.1").
VACUUM = {
    "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
    "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": str(30 * 86400),  # 30 days, in seconds
}


def deployments() -> list[Any]:
    interval = timedelta(seconds=get_settings().dispatch_interval)
    return [
        # One run per sending at a time is enforced in the database (claims); the deployment limit
        # keeps a burst of manual runs from crowding the machine.
        send_mailshot.to_deployment(
            name="now",
            description="Send a newsletter to its lists now (a draft or scheduled one too; resumable, re-run to continue).",
            tags=["mailshot"],
            concurrency_limit=4,
        ),
        send_mailshot_fast.to_deployment(
            name="fast",
            description="Send a newsletter as fast as the relay allows: one batch per core in parallel processes "
            "(on SQLite with simple templates: one process, faster there).",
            tags=["mailshot", "fast"],
            parameters={"parallel": os.cpu_count() or 2},
            concurrency_limit=1,
        ),
        *dask_deployments(),
        send_test.to_deployment(
            name="to-address",
            description="Send one [TEST] message of a sending to any address.",
            tags=["mailshot"],
        ),
        create_and_send.to_deployment(
            name="form",
            description="Create a sending from this form, optionally test it, and send it now or at start_at.",
            tags=["mailshot"],
        ),
        control_mailshot.to_deployment(
            name="by-id",
            description="Send, pause, resume or cancel a sending by its id (ids: the mailshot-sendings artifact).",
            tags=["mailshot"],
        ),
        # No concurrency limit: concurrent ticks are harmless (each sending's run slot is taken by
        # compare-and-set in the database), while a limit's slot held by a tick that a stopping server
        # left in Submitting blocked every later tick for the 300 s lease.
        dispatch_mailshots.to_deployment(
            name="sweep",
            interval=interval,
            description="Every 10 minutes: give a run to sendings no live run serves, expire late schedules, "
            "publish the sendings table.",
            tags=["mailshot", "scheduled"],
        ),
        # Concurrent runs share the inbox safely (feedback/inbox.py): no limit needed for an hourly sweep.
        apply_feedback.to_deployment(
            name="sweep",
            cron=FEEDBACK_CRON,
            description="Hourly: apply the feedback events not applied on arrival (statuses, counters, unsubscriptions).",
            tags=["mailshot", "scheduled"],
        ),
        ingest_bounces.to_deployment(
            name="from-mailbox",
            cron=BOUNCES_CRON,
            concurrency_limit=1,  # two readers of one mailbox would move each other's messages
            description="Every 15 minutes: read the bounce mailbox (IMAP or Maildir) into feedback events and apply them.",
            tags=["mailshot", "scheduled"],
        ),
        purge_stats.to_deployment(
            name="daily",
            cron=PURGE_CRON,
            concurrency_limit=1,
            description="Daily: archive finished sendings older than MAILSHOT_PURGE_AFTER (counters kept).",
            tags=["mailshot", "scheduled"],
        ),
        import_legacy.to_deployment(
            name="from-spip",
            concurrency_limit=1,
            description="Import a SPIP site's subscribers, lists and sendings (idempotent).",
            tags=["mailshot"],
        ),
    ]


def dask_deployments() -> list[Any]:
    """send-mailshot/dask, when the extra mailshot[dask] is installed."""
    if importlib.util.find_spec("prefect_dask") is None:
        return []
    from flows.send_mailshot_dask import send_mailshot_dask

    return [
        send_mailshot_dask.to_deployment(
            name="dask",
            description="Fast mode on a Dask cluster (MAILSHOT_DASK_ADDRESS; needs the extra mailshot[dask]).",
            tags=["mailshot", "fast", "dask"],
            parameters={"parallel": 4},
            concurrency_limit=1,
        )
    ]


def flow_run_retention() -> str:
    """What the Prefect server does with old flow runs, read from its /admin/settings, in one line.

    A running server's retention cannot be changed through its API: it is read here so that
    `mailshot serve` says when the server keeps every run forever and which variables fix it.
    """
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            response = client.request("GET", "/admin/settings")
            response.raise_for_status()
        vacuum = response.json()["server"]["services"]["db_vacuum"]
    except Exception as exc:  # Prefect Cloud has no such endpoint; its retention is the plan's
        return f"flow-run retention of the Prefect server unknown ({type(exc).__name__})"
    enabled = vacuum.get("enabled")
    if enabled is True or (isinstance(enabled, list) and "flow_runs" in enabled):
        kept = TypeAdapter(timedelta).validate_python(vacuum.get("retention_period"))  # ISO 8601: 'P90D'
        return f"the Prefect server deletes flow runs {kept.total_seconds() / 86400:g} days after they end"
    settings = " ".join(f"{k}={v}" for k, v in VACUUM.items())
    return f"the Prefect server keeps every flow run forever: start it with {settings} (README, Retention)"


def serve_all(limit: int = 4) -> None:
    """Serve every deployment until interrupted (Ctrl-C)."""
    # Prefect's own loggers are configured by the time serve() runs; ours goes to stderr like theirs.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)-7s | %(name)s - %(message)s")
    retention = flow_run_retention()
    (log.warning if "forever" in retention else log.info)(retention)
    serve(*deployments(), limit=limit)


if __name__ == "__main__":
    serve_all()
