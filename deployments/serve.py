"""Deployment definitions, served from one process (`mailshot serve`) for small sites.

The same deployments are declared in prefect.yaml for work pools (`prefect deploy --all`).
Sendings should run as deployments: only runs started by `serve` or a worker can be
cancelled from Prefect (reference/prefect.md §6), and a cancellation pauses the sending.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from prefect import serve

from flows.apply_feedback import apply_feedback
from flows.ingest_bounces import ingest_bounces
from flows.send_mailshot import send_mailshot, send_mailshot_fast
from flows.send_test import send_test

DEPLOYMENT = "default"


def deployments() -> list[Any]:
    return [
        # One run per sending at a time is enforced in the database (claims); the deployment limit
        # keeps a burst of manual runs from crowding the machine.
        send_mailshot.to_deployment(
            name=DEPLOYMENT,
            description="Send a newsletter to its lists (resumable: re-run to continue).",
            tags=["mailshot"],
            concurrency_limit=4,
        ),
        send_mailshot_fast.to_deployment(
            name="fast",
            description="Send a newsletter as fast as the relay allows: one batch per core in parallel processes.",
            tags=["mailshot", "fast"],
            parameters={"parallel": os.cpu_count() or 2},
            concurrency_limit=1,
        ),
        *dask_deployments(),
        send_test.to_deployment(
            name=DEPLOYMENT,
            description="Send one [TEST] message of a sending to any address.",
            tags=["mailshot"],
        ),
        # Every minute; a tick that finds the previous one running is skipped, not queued (concurrent
        # runs would be safe, feedback.py, but pointless).
        apply_feedback.to_deployment(
            name=DEPLOYMENT,
            description="Apply the ESP events received by the webhooks (statuses, counters, unsubscriptions).",
            tags=["mailshot", "scheduled"],
            cron="* * * * *",
            concurrency_limit=_one_at_a_time(),
        ),
        *operations_deployments(),
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


# --- issue 7: the scheduled and operator deployments (same names and schedules as prefect.yaml) ---
PURGE_CRON = "30 3 * * *"  # daily, at a quiet hour


def operations_deployments() -> list[Any]:
    # Imported here so that this block stays separate from the sending deployments above.
    from datetime import timedelta

    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from flows.create_and_send import create_and_send
    from flows.dispatch_mailshots import dispatch_mailshots
    from flows.import_legacy import import_legacy
    from flows.purge_stats import purge_stats
    from mailshot_core.config import get_settings

    interval = timedelta(seconds=get_settings().dispatch_interval)
    return [
        # One dispatcher at a time: two would both see a sending without a live run and start it twice
        # (harmless, the claims prevent duplicates, but wasteful).  CANCEL_NEW, not the default queue:
        # a tick that finds the previous one still running is skipped, so no backlog of ticks builds
        # up while the machine is busy (seen: queued ticks kept `serve` at capacity).
        dispatch_mailshots.to_deployment(
            name=DEPLOYMENT,
            interval=interval,
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
            description="Every minute: start due scheduled sendings, resume orphaned ones, expire late ones.",
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
            name=DEPLOYMENT,
            concurrency_limit=1,
            description="Import a SPIP site's subscribers, lists and sendings (idempotent).",
            tags=["mailshot"],
        ),
        create_and_send.to_deployment(
            name=DEPLOYMENT,
            description="Create a sending from this form and start it (or schedule it with start_at).",
            tags=["mailshot"],
        ),
        ingest_bounces.to_deployment(
            name=DEPLOYMENT,
            description="Read the bounce mailbox (IMAP or Maildir) into feedback events; processed mail is moved.",
            tags=["mailshot"],
            cron="*/10 * * * *",
            concurrency_limit=1,
        ),
    ]


def _one_at_a_time() -> Any:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def serve_all(limit: int = 4) -> None:
    """Serve every deployment until interrupted (Ctrl-C)."""
    serve(*deployments(), limit=limit)


if __name__ == "__main__":
    serve_all()
