"""The operator's actions on a sending, as the pages and the Newsletter API both do them: send (a draft or
a scheduled one, now) / pause / resume / cancel / archive through sendings.py's rules (the CLI's) in one
transaction, then, for send and resume, the sending's run started at once when ``mailshot web`` can reach
Prefect (``WebContext.start_run``), else by the dispatch-mailshots deployment's next tick.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlmodel import Session

from mailshot_core.sending import archive, sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import Mailshot, utcnow
from mailshot_core.web.context import WebContext

log = logging.getLogger("mailshot.web")

ACTIONS: dict[str, Callable[[Session, int, str], Mailshot]] = {
    "send": lambda session, mid, who: sendings.send_now(session, mid),
    "pause": lambda session, mid, channel: sendings.pause(session, mid, f"paused by the operator ({channel})"),
    "resume": lambda session, mid, who: sendings.resume(session, mid),
    "cancel": lambda session, mid, who: sendings.cancel(session, mid),
    # The original's manual "Archive" of an ended or cancelled sending: archive.py's archive, at once
    # (the daily purge-stats prunes the kept outcomes beyond the 12 most recent per address).
    "archive": lambda session, mid, who: _archive(session, mid),
}
NEEDS_RUN = ("send", "resume")


def _archive(session: Session, mailshot_id: int) -> Mailshot:
    mailshot = sendings.get(session, mailshot_id)
    archive.archive(session, mailshot, utcnow())
    return mailshot


def operate(ctx: WebContext, mailshot_id: int, action: str, *, channel: str, who: str) -> Mailshot:
    """Apply ``action`` (one of :data:`ACTIONS`) through ``channel`` (said in a pause's reason) for
    ``who`` (said in the log)."""
    with session_scope(ctx.engine) as session:
        mailshot = ACTIONS[action](session, mailshot_id, channel)
    log.info("sending %s: %s by %s (%s)", mailshot_id, action, who, channel)
    if action in NEEDS_RUN:
        start_run(ctx, mailshot_id)
    return mailshot


def start_run(ctx: WebContext, mailshot_id: int, start_at: datetime | None = None) -> None:
    """The sending's run, now or for its start time, when ``mailshot web`` was given a way to start it."""
    if ctx.start_run is None:
        return
    try:
        ctx.start_run(mailshot_id, start_at=start_at)
    except Exception:  # the sending's status is saved: the dispatcher's next tick starts its run
        log.warning("sending %s: no run started (Prefect unreachable?)", mailshot_id, exc_info=True)
