"""``/preferences/<token>``: a subscriber chooses the lists the address receives.

Reached from every message's unsubscribe page ("or choose which lists you receive", links.py) and
from the confirmation page.  The token (tokens.PREFERENCES) signs the subscriber and when the link
was made, and works for ``LINK_DAYS``: the pages make a fresh one each time they are shown, so a
short life costs nobody anything, and a link copied out of a browser's history stops working.
Holding it is proof enough of the address (it came through a message sent to it): joining needs no
further confirmation (subscriptions.set_preferences).  The lists shown are the open ones and the
closed ones the address is on (it may leave those, not join them again).  GET shows, only POST
changes (link scanners GET); the trail records each change with source ``preferences``.
"""

from __future__ import annotations

import math
import time

from fastapi import APIRouter, Request, Response
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from mailshot_core.audience.subscriptions import ListChoice, choices, set_preferences
from mailshot_core.config import Settings
from mailshot_core.content.tokens import PREFERENCES, make_timed_token, read_timed_token
from mailshot_core.errors import InvalidInput
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import Subscriber
from mailshot_core.web.context import WebContext, context
from mailshot_core.web.public import client_of, language, message, page, read_post

router = APIRouter(include_in_schema=False)  # pages, not part of the API schema

LINK_DAYS = 7


def link_for(settings: Settings, subscriber_id: int, issued: int | None = None) -> str:
    key = settings.secret_key.get_secret_value().encode()
    token = make_timed_token(key, PREFERENCES, subscriber_id, math.floor(time.time()) if issued is None else issued)
    return f"{settings.base_url}/preferences/{token}"


def read_link(settings: Settings, token: str) -> int | None:
    """The subscriber of a preferences link still valid; None when altered or too old."""
    key = settings.secret_key.get_secret_value().encode()
    found = read_timed_token(key, token, PREFERENCES, LINK_DAYS * 86400, time.time())
    return found[0] if found is not None else None


def _invalid(request: Request) -> Response:
    lang = language(request)
    return message(lang, "invalid_title", "invalid_preferences_text", 404, fmt={"days": str(LINK_DAYS)})


def _subscriber(ctx: WebContext, token: str) -> tuple[Subscriber, list[ListChoice]] | None:
    subscriber_id = read_link(ctx.settings, token)
    if subscriber_id is None:
        return None
    with Session(ctx.engine) as session:
        sub = session.get(Subscriber, subscriber_id)
        if sub is None:  # erased since the link was made
            return None
        return sub, choices(session, subscriber_id)


def _page(
    request: Request, sub: Subscriber, shown: list[ListChoice], status_code: int = 200, **extra: object
) -> Response:
    values = {"title": "preferences_title", "email": sub.email, "choices": shown, "saved": False, "error": "", **extra}
    return page("preferences.html", language(request, sub.lang), values, status_code)


@router.get("/preferences/{token}")
def preferences_page(token: str, request: Request) -> Response:
    found = _subscriber(context(request), token)
    if found is None:
        return _invalid(request)
    return _page(request, *found)


def _save(ctx: WebContext, subscriber_id: int, wanted: list[str], client: str) -> None:
    with session_scope(ctx.engine) as session:
        set_preferences(session, subscriber_id, wanted, source="preferences", client=client)


@router.post("/preferences/{token}")
async def save_preferences(token: str, request: Request) -> Response:
    ctx = context(request)
    found = await run_in_threadpool(_subscriber, ctx, token)
    if found is None:
        return _invalid(request)
    sub, shown = found
    assert sub.id is not None
    posted = await read_post(request, language(request, sub.lang), token_in_url=True)
    if isinstance(posted, Response):
        return posted
    try:
        await run_in_threadpool(_save, ctx, sub.id, posted.all("list"), client_of(request))
    except InvalidInput as exc:  # a list that is not offered here: nothing changed
        return _page(request, sub, shown, 400, error=str(exc))
    after = await run_in_threadpool(_subscriber, ctx, token)
    assert after is not None
    return _page(request, *after, saved=True)
