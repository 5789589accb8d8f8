"""The sendings at a glance, as plain rows: what the Prefect "sendings" table artifact shows.

An operator who lives in the Prefect UI finds a sending's id here (to fill control-mailshot's or
send-test's form) without a terminal.  Plain dicts of strings: the flow hands them to Prefect as
they are, and the rows compare equal when nothing changed (the flow then publishes nothing).
"""

from __future__ import annotations

from sqlalchemy.orm import defer
from sqlmodel import Session, col, select

from mailshot_core.sending.sendings import list_identifiers
from mailshot_core.store.models import Mailshot, MailshotStatus

# Newest first; enough to cover what is current (drafts, scheduled, in progress, recently ended).
ROWS = 50
# What the artifact says of each status (the pages' words, web/views.py, plus the draft).
LABELS = {
    MailshotStatus.DRAFT: "draft",
    MailshotStatus.INIT: "scheduled",
    MailshotStatus.PROCESSING: "sending",
    MailshotStatus.PAUSE: "paused",
    MailshotStatus.END: "finished",
    MailshotStatus.CANCEL: "cancelled",
    MailshotStatus.ARCHIVE: "archived",
}


# Prefect renders each cell as markdown: a lone "-" would become a bullet.
NOTHING = "—"


def accepted_percent(mailshot: Mailshot) -> str:
    """Messages the transport accepted (``sent``, which includes those opened, bounced later...) of the total."""
    if not mailshot.total:
        return NOTHING
    return f"{100.0 * mailshot.sent / mailshot.total:.1f} %"


def _cell(text: str) -> str:
    """Markdown table cell: a `|` in a subject would cut the row (line breaks are refused at creation)."""
    return text.replace("|", "\\|")


def sendings_table(session: Session, base_url: str | None, limit: int = ROWS) -> list[dict[str, str]]:
    """The ``limit`` most recent sendings, newest first: id, subject, status, progress, lists, dates (UTC),
    and a markdown link to the follow-up page when ``base_url`` (MAILSHOT_BASE_URL) is given."""
    rows = session.exec(
        select(Mailshot)
        .options(defer(Mailshot.html), defer(Mailshot.text))  # type: ignore[arg-type]
        .order_by(col(Mailshot.id).desc())
        .limit(limit)
    ).all()
    table = []
    for m in rows:
        when = m.start_at if m.status == MailshotStatus.INIT else m.started_at
        row = {
            "id": str(m.id),
            "subject": _cell(m.subject[:80]),
            "status": LABELS.get(MailshotStatus(m.status), m.status),
            "progress": accepted_percent(m),
            "recipients": str(m.total) if m.total else NOTHING,
            "lists": ", ".join(list_identifiers(m)),
            "created": f"{m.created_at:%Y-%m-%d %H:%M}",
            "start": f"{when:%Y-%m-%d %H:%M}" if when else NOTHING,
        }
        if base_url:  # the column must stay narrow: the UI gives the table the page's width, no more
            row["page"] = f"[open]({base_url.rstrip('/')}/admin/sendings/{m.id})"
        table.append(row)
    return table
