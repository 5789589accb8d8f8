"""The follow-up pages under ``/admin/``: sendings by status (drafts first), a sending's detail with its
recipients, send (a draft or a scheduled one, now) / test / pause / resume / cancel / archive, an
address's history.  Server-rendered (templates/), behind the login of
login.py; every POST carries the session's CSRF token.

Login and CSRF belong to this router only (its dependencies), not to the app: the webhooks and the
public unsubscribe page keep their own authentication.  Every error a visitor can cause is a page
saying what is wrong (400 bad input, 404 unknown id or page, 409 not in that status), never a 500:
``PageRoute`` turns the domain's errors into those pages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from sqlmodel import Session

from mailshot_core.audience import subscribers, subscriptions
from mailshot_core.errors import InvalidInput, InvalidState, MailshotError, NotFound
from mailshot_core.feedback import tracking
from mailshot_core.sending import sendings
from mailshot_core.sending.one_message import send_test
from mailshot_core.sending.run_slot import PLACEHOLDER
from mailshot_core.web import operations, views
from mailshot_core.web.context import context
from mailshot_core.web.login import (
    COOKIE,
    AdminSession,
    Disabled,
    LoginRequired,
    LoginThrottle,
    Refused,
    Sessions,
    read_form,
)
from mailshot_core.web.templating import SECURITY_HEADERS, render

log = logging.getLogger("mailshot.web.pages")

HOME = "/admin/"
REFRESH_SECONDS = 15  # while a sending is processing (the original: 2 minutes)
MAX_ID = 2**63 - 1  # larger ids would overflow the database's integer before it could say "not found"
MAX_SEARCH = 320  # the longest address

SendingId = Annotated[int, Path(ge=1, le=MAX_ID)]


class PageRoute(APIRoute):
    """Every route of this router answers its errors with a page (and its login with a redirect)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except Disabled:
                return _error(
                    503,
                    "Follow-up pages disabled",
                    "Set MAILSHOT_ADMIN_PASSWORD (and MAILSHOT_ADMIN_USER, default 'admin') "
                    "in the environment of `mailshot web` to enable them.",
                )
            except LoginRequired:
                return _redirect(f"/admin/login?{urlencode({'next': _target(request)})}")
            except Refused as exc:
                log.warning("refused %s %s: %s", request.method, request.url.path, exc)
                return _error(403, "Refused", str(exc))
            except NotFound as exc:
                return _error(404, "Not found", str(exc))
            except InvalidState as exc:
                return _error(409, "Not possible now", str(exc))
            except InvalidInput as exc:
                return _error(400, "Bad request", str(exc))
            except RequestValidationError as exc:
                where = ", ".join(".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in exc.errors())
                return _error(400, "Bad request", where)

        return guarded


router = APIRouter(route_class=PageRoute)


def _error(status: int, title: str, message: str) -> Response:
    return render("error.html", {"title": title, "message": message}, status_code=status)


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


def _target(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def _safe_next(value: str | None) -> str:
    """Only a path of these pages: the login form must not send anyone elsewhere (open redirect)."""
    if not value or "\\" in value or any(ord(c) < 32 for c in value):
        return HOME
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/admin/"):
        return HOME
    return value


# --- session and CSRF dependencies ------------------------------------------------------------------


def _sessions(request: Request) -> Sessions:
    return Sessions(context(request).settings)  # Disabled when no password is set


def _throttle(request: Request) -> LoginThrottle:
    throttle: LoginThrottle | None = getattr(request.app.state, "mailshot_login_throttle", None)
    if throttle is None:
        throttle = request.app.state.mailshot_login_throttle = LoginThrottle()
    return throttle


@dataclass(frozen=True)
class Admin:
    """The logged-in operator, and what every page needs to show forms."""

    sessions: Sessions
    session: AdminSession

    @property
    def page_context(self) -> dict[str, Any]:
        return {"user": self.session.user, "csrf": self.sessions.csrf(self.session)}


def logged_in(request: Request) -> Admin:
    sessions = _sessions(request)
    session = sessions.decode(request.cookies.get(COOKIE))
    if session is None or not session.logged_in:
        raise LoginRequired()
    return Admin(sessions, session)


@dataclass(frozen=True)
class Posted:
    session: AdminSession  # anonymous on the login form
    form: dict[str, str]


async def _checked_post(request: Request, need_login: bool) -> Posted:
    sessions = _sessions(request)
    if not sessions.same_origin(request):
        raise Refused("this form was sent from another site")
    session = sessions.decode(request.cookies.get(COOKIE))
    if session is None:
        raise Refused("your session has expired: reload the page and log in again")
    if need_login and not session.logged_in:
        raise Refused("you are not logged in")
    form = await read_form(request)
    if not sessions.check_csrf(session, form.get("csrf")):
        raise Refused("missing or wrong CSRF token: reload the page and try again")
    return Posted(session, form)


async def posted(request: Request) -> Posted:
    return await _checked_post(request, need_login=True)


async def posted_login(request: Request) -> Posted:
    return await _checked_post(request, need_login=False)


# --- login ------------------------------------------------------------------------------------------


@router.get("/admin", include_in_schema=False)
def admin_root() -> Response:
    return _redirect(HOME)


@router.get("/admin/login")
def login_form(request: Request, next: str | None = None) -> Response:
    sessions = _sessions(request)
    session = sessions.decode(request.cookies.get(COOKIE))
    if session is not None and session.logged_in:
        return _redirect(_safe_next(next))
    fresh = session is None
    session = session or sessions.new()
    response = _login_page(sessions, session, _safe_next(next))
    if fresh:
        sessions.set_cookie(response, session)
    return response


def _login_page(
    sessions: Sessions, session: AdminSession, next_url: str, error: str = "", status: int = 200
) -> Response:
    return render(
        "login.html",
        {"title": "Log in", "login_csrf": sessions.csrf(session), "next": next_url, "error": error},
        status_code=status,
    )


@router.post("/admin/login")
async def login(request: Request, post: Annotated[Posted, Depends(posted_login)]) -> Response:
    sessions = _sessions(request)
    # The connection's peer, or what a proxy of MAILSHOT_FORWARDED_ALLOW_IPS said (web/server.py): never a
    # header the client wrote itself.
    client = request.client.host if request.client else "?"
    throttle = _throttle(request)
    next_url = _safe_next(post.form.get("next"))
    user = post.form.get("user", "")
    lock = throttle.locked(client, user)
    if lock is not None:
        log.warning("login refused (%s locked) for %r from %s", lock.scope, user[:100], client)
        return _login_page(sessions, post.session, next_url, lock.message, status=429)
    if not sessions.check_password(user, post.form.get("password", "")):
        delay = throttle.failed(client, user)
        log.warning("failed login for %r from %s", user[:100], client)
        await asyncio.sleep(delay)  # slows guessing down without holding a worker thread
        return _login_page(sessions, post.session, next_url, "Wrong login or password.", status=401)
    throttle.succeeded(client, user)
    response = _redirect(next_url)
    sessions.set_cookie(response, sessions.new(sessions.user))  # a new nonce: no session fixation
    return response


@router.post("/admin/logout")
def logout(request: Request, post: Annotated[Posted, Depends(posted)]) -> Response:
    response = _redirect("/admin/login")
    _sessions(request).clear_cookie(response)
    return response


# --- sendings ---------------------------------------------------------------------------------------


def _page_number(request: Request, name: str) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return 1
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise InvalidInput(f"{name}: not a page number: {raw[:40]!r}")
    return int(raw)


def _link(request: Request) -> Callable[..., str]:
    """``link(name=value, ...)``: this page's URL with some query parameters changed (None drops one)."""

    def link(**changes: object) -> str:
        params = dict(request.query_params)
        for name, value in changes.items():
            if value is None:
                params.pop(name, None)
            else:
                params[name] = str(value)
        return request.url.path + (f"?{urlencode(params)}" if params else "")

    return link


@router.get("/admin/")
def sendings_list(request: Request, admin: Annotated[Admin, Depends(logged_in)]) -> Response:
    engine = context(request).engine
    numbers = {s.key: _page_number(request, s.key) for s in views.SECTIONS}
    with Session(engine) as session:
        sections = [(s, views.sendings(session, s, numbers[s.key])) for s in views.SECTIONS]
        titles = views.list_titles(session)
        processing = views.any_processing(session)
    return render(
        "sendings.html",
        {
            **admin.page_context,
            "title": "Sendings",
            "sections": [(s, page) for s, page in sections if page.total],
            "titles": titles,
            "labels": views.STATUS_LABELS,
            "percent": views.percent,
            "link": _link(request),
            "refresh": REFRESH_SECONDS if processing else None,
        },
    )


def _address_text(value: str, what: str) -> str:
    """A searched address (or part of one): bounded, and without control characters (PostgreSQL
    refuses NUL in text: it would be a 500)."""
    value = value.strip()
    if len(value) > MAX_SEARCH:
        raise InvalidInput(f"{what}: at most {MAX_SEARCH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidInput(f"{what}: control characters are not part of an address")
    return value


def _search(request: Request) -> str:
    return _address_text(request.query_params.get("q", ""), "search").lower()


@router.get("/admin/sendings/{mailshot_id}")
def sending_detail(request: Request, mailshot_id: SendingId, admin: Annotated[Admin, Depends(logged_in)]) -> Response:
    ctx = context(request)
    search = _search(request)
    numbers = {g.key: _page_number(request, f"page_{g.key}") for g in views.GROUPS}
    with Session(ctx.engine) as session:
        mailshot = sendings.get(session, mailshot_id)
        groups = views.recipient_groups(session, mailshot_id, numbers, search)
        titles = views.list_titles(session)
        clicks = tracking.per_link_clicks(session, mailshot_id) if mailshot.track else []
    run_url = f"{ctx.settings.prefect_ui}/runs/flow-run/{mailshot.flow_run_id}" if mailshot.flow_run_id else None
    # Only a run's id makes a link (sending/run_slot.py writes a placeholder while a run is being created).
    run_url = run_url if mailshot.flow_run_id and not mailshot.flow_run_id.startswith(PLACEHOLDER) else None
    return render(
        "sending.html",
        {
            **admin.page_context,
            "title": f"Sending No. {mailshot.id}",
            "m": mailshot,
            "lists": [titles.get(name, name) for name in sendings.list_identifiers(mailshot)],
            "groups": groups,
            "search": search,
            "labels": views.STATUS_LABELS,
            "percent": views.percent,
            "link": _link(request),
            "run_url": run_url,
            "clicks": clicks,
            "tested": _address_text(request.query_params.get("tested", ""), "tested"),
            "refresh": REFRESH_SECONDS if mailshot.status == "processing" else None,
        },
    )


@router.post("/admin/sendings/{mailshot_id}/test")
def sending_test(request: Request, mailshot_id: SendingId, post: Annotated[Posted, Depends(posted)]) -> Response:
    """One [TEST] message to the address in the form (sending/one_message.py): nothing else changes."""
    ctx = context(request)
    email = _address_text(post.form.get("email", ""), "test address")
    if not email:
        raise InvalidInput("test address: give the address to send the test to")
    with Session(ctx.engine) as session:
        sendings.get(session, mailshot_id)  # an unknown id is a 404, before any connection
    try:
        message = send_test(ctx.engine, ctx.settings, mailshot_id, email)
    except (InvalidInput, NotFound):
        raise
    except MailshotError as exc:  # the relay or the provider refused or was unreachable
        return _error(502, "Test message not sent", str(exc))
    log.info("sending %s: test to %s by %s (follow-up pages)", mailshot_id, message.envelope_to, post.session.user)
    return _redirect(f"/admin/sendings/{mailshot_id}?{urlencode({'tested': message.envelope_to})}")


@router.post("/admin/sendings/{mailshot_id}/{action}")
def sending_action(
    request: Request, mailshot_id: SendingId, action: str, post: Annotated[Posted, Depends(posted)]
) -> Response:
    if action not in operations.ACTIONS:
        raise NotFound(f"no action {action!r} (one of: {', '.join(operations.ACTIONS)}, test)")
    operations.operate(context(request), mailshot_id, action, channel="follow-up pages", who=post.session.user)
    return _redirect(f"/admin/sendings/{mailshot_id}")


# --- subscribers ------------------------------------------------------------------------------------


@router.get("/admin/subscriber")
def subscriber(request: Request, admin: Annotated[Admin, Depends(logged_in)], email: str = "") -> Response:
    email = _address_text(email, "address")
    history = None
    trail: list[subscriptions.TrailEntry] = []
    if email:
        with Session(context(request).engine) as session:
            history = subscribers.history(session, email)
            trail = subscriptions.trail(session, history.subscriber.id or 0)
    return render(
        "subscriber.html",
        {
            **admin.page_context,
            "title": history.subscriber.email if history else "Subscribers",
            "email": email,
            "h": history,
            "trail": trail,
            "pending": [name for name, state, _ in history.subscriptions if state == "pending"] if history else [],
            "sendings": list(reversed(history.sendings)) if history else [],
            "outcomes": views.RECIPIENT_LABELS,
        },
    )
