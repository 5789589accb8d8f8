"""A tracked sending's link table: the only targets its click redirects may lead to.

The HTML's static http(s) links are stored once per sending in ``tracked_link`` and the message
points at ``/c/<token>/<link id>`` instead (render.track_html); the redirect looks the target up
by id *within the token's sending* (:func:`link_target`), so no URL in a request can make the server
redirect elsewhere (CWE-601).  Kept on the sending side: creation and every worker need the ids,
and the hits' side (feedback/tracking.py) only reads them.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mailshot_core.config import Settings
from mailshot_core.content.render import find_links
from mailshot_core.store.models import Mailshot, TrackedLink

_links = TrackedLink.__table__  # type: ignore[attr-defined]


def tracks(settings: Settings, transport: str) -> bool:
    """Whether a new sending through ``transport`` carries our tracking (MAILSHOT_TRACKING)."""
    return settings.tracking == "all" or (settings.tracking == "smtp" and transport == "smtp")


def links_for(session: Session, mailshot: Mailshot) -> dict[str, int]:
    """The sending's tracked links (URL -> id), storing those of its HTML not stored yet.

    Called when a sending is created and when a worker builds its context: the insert ignores links
    already there, so concurrent workers agree on the ids.
    """
    assert mailshot.id is not None
    urls = find_links(mailshot.html)
    if urls:
        module = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        insert = module.insert(_links).on_conflict_do_nothing(index_elements=["mailshot_id", "url"])
        session.execute(insert, [{"mailshot_id": mailshot.id, "url": url} for url in urls])
    rows = session.execute(select(_links.c.url, _links.c.id).where(_links.c.mailshot_id == mailshot.id)).all()
    return {url: link_id for url, link_id in rows}


def link_target(engine: Engine, mailshot_id: int, link_id: int) -> str | None:
    """The URL of one of the sending's links; None for an id that is not one of them."""
    with engine.connect() as conn:
        url = conn.execute(
            select(_links.c.url).where(_links.c.id == link_id, _links.c.mailshot_id == mailshot_id)
        ).scalar_one_or_none()
    return str(url) if url is not None else None


def by_id(session: Session, mailshot_id: int) -> dict[int, str]:
    """The sending's links by id (the follow-up pages' clicks per link)."""
    rows = session.execute(select(_links.c.id, _links.c.url).where(_links.c.mailshot_id == mailshot_id)).all()
    return {link_id: url for link_id, url in rows}
