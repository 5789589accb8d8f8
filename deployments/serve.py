"""Deployment definitions, served from one process (`mailshot serve`) for small sites.

The same deployments are declared in prefect.yaml for work pools (`prefect deploy --all`).
Sendings should run as deployments: only runs started by `serve` or a worker can be
cancelled from Prefect (reference/prefect.md §6), and a cancellation pauses the sending.
"""

from __future__ import annotations

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
        send_test.to_deployment(
            name=DEPLOYMENT,
            description="Send one [TEST] message of a sending to any address.",
            tags=["mailshot"],
        ),
        apply_feedback.to_deployment(
            name=DEPLOYMENT,
            description="Apply the ESP events received by the webhooks (statuses, counters, unsubscriptions).",
            tags=["mailshot"],
            cron="* * * * *",
            concurrency_limit=1,
        ),
        ingest_bounces.to_deployment(
            name=DEPLOYMENT,
            description="Read the bounce mailbox (IMAP or Maildir) into feedback events; processed mail is moved.",
            tags=["mailshot"],
            cron="*/10 * * * *",
            concurrency_limit=1,
        ),
    ]


def serve_all(limit: int = 4) -> None:
    """Serve every deployment until interrupted (Ctrl-C)."""
    serve(*deployments(), limit=limit)


if __name__ == "__main__":
    serve_all()
