"""Open and click tracking done by Mailshot itself (email-standards.md §4).

- **Links**: each sending's trackable links are stored once in ``tracked_link``
  (sending/tracked_links.py); the HTML then points at ``/c/<token>/<link id>`` (render.track_html),
  and the redirect looks the target up by id *within the token's sending*: no URL in a request can
  make the server redirect elsewhere (CWE-601).
- **Hits** (:func:`record_open`, :func:`record_click`) go through the feedback pipeline like an ESP's
  events (inbox.record_and_apply): stored once per recipient and kind, applied at once, so the
  recipient moves to ``read``/``clic`` with the counters, and a repeated hit changes nothing.
- **Machines**: Apple Mail Privacy Protection fetches every image on arrival, and mail security
  gateways fetch every link, often within seconds of delivery.  Such hits (:func:`machine_reason`)
  are recorded as ``machine_read``/``machine_clic``: they do not make the recipient ``read``/``clic``
  and are counted apart (``nb_read_machine``/``nb_clic_machine``).  The redirect still happens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailshot_core.config import Settings
from mailshot_core.feedback import inbox
from mailshot_core.feedback.effects import MACHINE_COUNTERS, MACHINE_KINDS, classify
from mailshot_core.feedback.esp_events import IncomingEvent
from mailshot_core.sending import tracked_links
from mailshot_core.store.models import FeedbackEvent, Recipient

SOURCE = "web"  # feedback_event.source of the hits recorded here (and of web unsubscriptions)


# --- machines ---------------------------------------------------------------------------------------

# User agents of fetchers that are not a person reading: crawlers, HTTP libraries, link scanners of
# mail security gateways, link previewers.  GoogleImageProxy is *not* here: Gmail fetches images
# when the message is opened.
_MACHINE_AGENTS = re.compile(
    r"bot\b|bot/|crawl|spider|slurp|scanner|preview|headless|phantomjs|curl/|wget/|python-|httpx|aiohttp"
    r"|go-http-client|java/|okhttp|libwww|apache-httpclient|node-fetch|axios|proofpoint|mimecast|barracuda"
    r"|safelinks|urldefense|forcepoint|trendmicro|symantec|fortiguard|cisco|ironport|skypeuripreview"
    r"|facebookexternalhit|whatsapp|slackbot|discordbot|microsoft office",
    re.I,
)
# Apple Mail Privacy Protection's proxy fetches with this user agent and nothing more.
_APPLE_PROXY_AGENT = "Mozilla/5.0"


def machine_reason(
    method: str, user_agent: str | None, seconds_after_sending: float | None, window: float
) -> str | None:
    """Why a hit looks like a machine's, or None when it looks like a person's."""
    agent = (user_agent or "").strip()
    if method.upper() == "HEAD":
        return "HEAD request (link scanner)"
    if not agent:
        return "no user agent"
    if agent == _APPLE_PROXY_AGENT:
        return "Apple Mail Privacy Protection proxy (bare Mozilla/5.0 user agent)"
    if _MACHINE_AGENTS.search(agent):
        return f"machine user agent: {agent[:120]}"
    if seconds_after_sending is not None and seconds_after_sending < window:
        return f"{max(seconds_after_sending, 0):.0f} s after the message left (scanners fetch on delivery)"
    return None


# --- hits ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """What the web endpoint knows about one request."""

    method: str
    user_agent: str | None
    at: datetime


def _recipient(engine: Engine, mailshot_id: int, recipient_id: int) -> tuple[str, datetime | None] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(Recipient.email, Recipient.sent_at).where(  # type: ignore[call-overload]
                Recipient.id == recipient_id, Recipient.mailshot_id == mailshot_id
            )
        ).first()
    return (row[0], row[1]) if row is not None else None


def _seconds_between(earlier: datetime | None, later: datetime) -> float | None:
    if earlier is None:
        return None
    if earlier.tzinfo is None:  # SQLite gives naive UTC back
        later = later.replace(tzinfo=None)
    return (later - earlier).total_seconds()


def _record(
    engine: Engine, settings: Settings, mailshot_id: int, recipient_id: int, hit: Hit, kind: str, what: str
) -> str | None:
    """Record one hit; returns the machine reason (None: a person's).  Unknown recipients (a test
    message, a purged sending) record nothing."""
    found = _recipient(engine, mailshot_id, recipient_id)
    if found is None:
        return None
    email, sent_at = found
    reason = machine_reason(
        hit.method, hit.user_agent, _seconds_between(sent_at, hit.at), settings.tracking_machine_seconds
    )
    event_kind = f"machine_{kind}" if reason else kind
    event = IncomingEvent(
        source=SOURCE,
        # One event per recipient, kind and link: what is counted is who opened or clicked what; more
        # hits of the same are duplicates, neither stored nor counted again.
        event_id=f"{event_kind}:{mailshot_id}:{recipient_id}{what}",
        kind=event_kind,
        email=email,
        mailshot_id=mailshot_id,
        recipient_id=recipient_id,
        occurred_at=hit.at,
        detail=reason,
        raw="",
    )
    inbox.record_and_apply(engine, [event], now=hit.at)
    return reason


def record_open(engine: Engine, settings: Settings, mailshot_id: int, recipient_id: int, hit: Hit) -> str | None:
    return _record(engine, settings, mailshot_id, recipient_id, hit, "read", "")


def record_click(
    engine: Engine, settings: Settings, mailshot_id: int, recipient_id: int, link_id: int, hit: Hit
) -> str | None:
    return _record(engine, settings, mailshot_id, recipient_id, hit, "clic", f":{link_id}")


def machine_recount(session: Session, mailshot_id: int) -> dict[str, int]:
    """``nb_read_machine`` / ``nb_clic_machine`` from the applied events: recipients with such a hit, ours
    (``machine_read``/``machine_clic``) or a provider's (Brevo ``proxy_open``...), each recipient once."""
    events = FeedbackEvent.__table__  # type: ignore[attr-defined]
    rows = session.execute(
        select(events.c.source, events.c.kind, events.c.recipient_id)
        .where(
            events.c.mailshot_id == mailshot_id,
            events.c.kind.in_(MACHINE_KINDS),
            events.c.applied_at.is_not(None),
        )
        .distinct()
    ).all()
    recipients: dict[str, set[int]] = {name: set() for name in MACHINE_COUNTERS.values()}
    for source, kind, recipient_id in rows:
        counter = MACHINE_COUNTERS.get(classify(source, kind, None))
        if counter is not None and recipient_id is not None:
            recipients[counter].add(recipient_id)
    return {name: len(ids) for name, ids in recipients.items()}


def per_link_clicks(session: Session, mailshot_id: int) -> list[tuple[str, int, int]]:
    """(URL, people, machines): how many recipients clicked each of the sending's links."""
    events = FeedbackEvent.__table__  # type: ignore[attr-defined]
    links = tracked_links.by_id(session, mailshot_id)
    people: dict[int, int] = {}
    machines: dict[int, int] = {}
    rows: Iterable[Any] = session.execute(
        select(events.c.kind, events.c.provider_event_id).where(
            events.c.mailshot_id == mailshot_id,
            events.c.source == SOURCE,
            events.c.kind.in_(["clic", "machine_clic"]),
        )
    )
    for kind, event_id in rows:
        link_id = int(str(event_id).rsplit(":", 1)[1])
        target = machines if kind == "machine_clic" else people
        target[link_id] = target.get(link_id, 0) + 1
    return [(url, people.get(i, 0), machines.get(i, 0)) for i, url in sorted(links.items())]
