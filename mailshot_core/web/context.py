"""What every route of the web app shares: settings, engine, outbound fetcher, the feedback applier
(``app.state``).

Apart from app.py so the routers can ask for it without importing the factory that includes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from fastapi import Request
from sqlalchemy.engine import Engine

from mailshot_core.config import Settings
from mailshot_core.feedback.applier import Applier
from mailshot_core.web.auth import Fetch, SnsVerifier


class RunStarter(Protocol):
    """Makes sure a sending's Prefect run exists: now, or for a scheduled sending at ``start_at``
    (flows/sending_runs.ensure_run)."""

    def __call__(self, mailshot_id: int, *, start_at: datetime | None = None) -> object: ...


@dataclass(frozen=True)
class WebContext:
    settings: Settings
    engine: Engine
    sns: SnsVerifier
    fetch: Fetch  # outbound GETs (SNS certificates, subscription confirmations): injectable for tests
    applier: Applier  # applies the webhooks' events on arrival, in one background thread
    # Starts a sending's Prefect run (the pages' Send and Resume, the API's creates and actions).  Given by
    # `mailshot web` when a Prefect API is configured (cli/running.py wires flows/sending_runs.py in: this
    # package never imports prefect); None: the dispatch-mailshots deployment starts it.
    start_run: RunStarter | None = None


def context(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.mailshot
    return ctx
