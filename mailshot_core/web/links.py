"""The public links every message carries: ``/u/<token>`` (unsubscribe), ``/o/<token>`` (the open
pixel), ``/c/<token>/<link id>`` (click redirects).  No login, no cookie, no CSRF token: the signed
token is the authority (tokens.py), and a forged, truncated or stale one gets 404.

Unsubscribe (RFC 8058, email-standards.md §3.2):
- POST without our page's ``choice`` field is the mail client's one-click: the subscriber leaves the
  sending's lists at once, and the answer is 200 with a tiny body, never a redirect.  The body is
  ``List-Unsubscribe=One-Click`` as multipart/form-data or urlencoded, or missing: all accepted.
- GET shows a page with a button, and never unsubscribes: link scanners issue GETs.
- The page's own POST (``choice``: one of the sending's lists, or every list) answers with a page.

Tracking (tracking.py): the pixel and the redirect answer even when recording fails (a database
hiccup must not break a reader's click), and the redirect only goes to the sending's stored links.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

from fastapi import APIRouter, Request, Response
from fastapi.responses import PlainTextResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from mailshot_core.content.tokens import TRACK, read_token
from mailshot_core.feedback import tracking, unsubscribe_links
from mailshot_core.sending import tracked_links
from mailshot_core.store.models import utcnow
from mailshot_core.web import preferences
from mailshot_core.web.context import WebContext, context
from mailshot_core.web.forms import capped_body
from mailshot_core.web.templating import PUBLIC_HEADERS, public_page

log = logging.getLogger("mailshot.web.links")
router = APIRouter()

# A transparent 1x1 GIF (43 bytes).
PIXEL = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")
_NO_CACHE = {"Cache-Control": "no-store, no-cache, must-revalidate, private", "Pragma": "no-cache", "Expires": "0"}


def _key(ctx: WebContext) -> bytes:
    return ctx.settings.secret_key.get_secret_value().encode()


def _gone() -> Response:
    return public_page("link_invalid.html", {"title": "Link not valid"}, status_code=404)


# --- unsubscribe ----------------------------------------------------------------------------------


def _unsubscribe_values(
    ctx: WebContext, target: unsubscribe_links.LinkTarget, title: str, done: str | None
) -> dict[str, object]:
    """The unsubscribe page's values, with a fresh link to the subscriber's preferences page."""
    sid = target.subscriber_id
    return {
        "title": title,
        "target": target,
        "done": done,
        "preferences": preferences.link_for(ctx.settings, sid) if sid is not None else "",
    }


@router.get("/u/{token}")
def unsubscribe_page(token: str, request: Request) -> Response:
    ctx = context(request)
    target = unsubscribe_links.read_link(ctx.engine, _key(ctx), token)
    if target is None:
        return _gone()
    return public_page("unsubscribe.html", _unsubscribe_values(ctx, target, "Unsubscribe", None))


_MAX_BODY = 10_000  # RFC 8058's body is 26 bytes; our page's form, a few more


class _TooLarge(Exception):
    pass


async def _choice(request: Request) -> str | None:
    """Our page's ``choice`` field; None for anything else (a mail client's one-click POST)."""
    body = await capped_body(request, _MAX_BODY)
    if body is None:
        raise _TooLarge
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return None
    values = parse_qs(body.decode("utf-8", "replace")).get("choice")
    return values[0] if values else None


@router.post("/u/{token}")
async def unsubscribe(token: str, request: Request) -> Response:
    ctx = context(request)
    try:
        choice = await _choice(request)
    except _TooLarge:
        return PlainTextResponse("request body too large\n", status_code=413, headers=PUBLIC_HEADERS)
    target = await run_in_threadpool(unsubscribe_links.read_link, ctx.engine, _key(ctx), token)
    if target is None:
        return _gone()
    try:
        await run_in_threadpool(unsubscribe_links.unsubscribe, ctx.engine, target, choice, one_click=choice is None)
    except ValueError as exc:  # a choice that is not one of the sending's lists
        page = {**_unsubscribe_values(ctx, target, "Unsubscribe", None), "error": str(exc)}
        return public_page("unsubscribe.html", page, status_code=400)
    if choice is None:
        return PlainTextResponse("You are unsubscribed.\n", headers=PUBLIC_HEADERS)
    after = await run_in_threadpool(unsubscribe_links.read_link, ctx.engine, _key(ctx), token)
    return public_page("unsubscribe.html", _unsubscribe_values(ctx, after or target, "Unsubscribed", choice))


# --- tracking -------------------------------------------------------------------------------------


def _hit(request: Request) -> tracking.Hit:
    return tracking.Hit(request.method, request.headers.get("user-agent"), utcnow())


@router.api_route("/o/{token}", methods=["GET", "HEAD"])
def open_pixel(token: str, request: Request) -> Response:
    ctx = context(request)
    ids = read_token(_key(ctx), token, TRACK)
    if ids is None:
        return Response(status_code=404, headers=_NO_CACHE)
    try:
        tracking.record_open(ctx.engine, ctx.settings, ids[0], ids[1], _hit(request))
    except Exception:  # the reader's mail client gets its image whatever happens here
        log.exception("open of sending %s, recipient %s not recorded", *ids)
    return Response(PIXEL, media_type="image/gif", headers=_NO_CACHE)


@router.api_route("/c/{token}/{link_id}", methods=["GET", "HEAD"])
def click(token: str, link_id: str, request: Request) -> Response:
    ctx = context(request)
    ids = read_token(_key(ctx), token, TRACK)
    if ids is None or not (link_id.isascii() and link_id.isdigit()) or len(link_id) > 18:
        return _gone()
    mailshot_id, recipient_id = ids
    url = tracked_links.link_target(ctx.engine, mailshot_id, int(link_id))
    if url is None:  # not one of this sending's links: never a redirect to anything else
        return _gone()
    try:
        tracking.record_click(ctx.engine, ctx.settings, mailshot_id, recipient_id, int(link_id), _hit(request))
    except Exception:  # the reader still reaches the page
        log.exception("click of sending %s, recipient %s, link %s not recorded", mailshot_id, recipient_id, link_id)
    return RedirectResponse(url, status_code=302, headers={**_NO_CACHE, "Referrer-Policy": "no-referrer"})
