"""The public subscription with double opt-in: ``/subscribe`` (the form) and ``/confirm/<token>``.

- **GET /subscribe** shows the open lists (public title, description); ``?list=<id>`` checks one, so
  a site links its own "subscribe" button to the form.
- **POST /subscribe** answers the same "check your inbox" page whatever the address: new, pending,
  subscribed, unsubscribed, throttled, or a bot's (no enumeration).  The request is
  confirmations.request_subscription (public: open lists only; graceful: an address that left is
  not subscribed again from here, it comes back through the preferences page reached from one of
  its messages; a single opt-in list is joined at once); the confirmation message, the slow part
  whose time would tell whether one was sent, goes out after the answer (a background task).
- **Abuse**: a filled honeypot field (``website``, hidden from people) gets the same answer and
  nothing is done; ``CLIENT_LIMIT`` posts per ``CLIENT_WINDOW`` per client address (else 429); at
  most ``ADDRESS_LIMIT`` confirmation requests per address per ``ADDRESS_WINDOW`` (beyond: nothing
  is sent, same answer), counted from the opt-in trail (subscriptions.requests_since); the body is
  capped (public.MAX_FORM_BYTES, else 413); another site's form is refused (public.read_post).
- **GET /confirm/<token>** shows a button and changes nothing (mail scanners prefetch links);
  **POST** confirms (confirmations.follow).  An altered or expired link confirms nothing and says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query, Request, Response
from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool

from mailshot_core.audience.addresses import check_lang, check_name, normalise_email
from mailshot_core.audience.subscriptions import pending_since, requests_since
from mailshot_core.errors import InvalidInput, MailshotError
from mailshot_core.sending.confirmations import follow, read_link, request_subscription, send_confirmation
from mailshot_core.store.models import MailingList, Subscriber, utcnow
from mailshot_core.web import preferences
from mailshot_core.web.context import WebContext, context
from mailshot_core.web.public import Posted, client_of, language, message, page, read_post
from mailshot_core.web.public_texts import MESSAGE_LANGUAGES, texts
from mailshot_core.web.throttle import Throttle
from mailshot_core.web.views import list_titles, open_lists

log = logging.getLogger("mailshot.web.subscribe")
router = APIRouter(include_in_schema=False)  # pages, not part of the API schema

CLIENT_LIMIT = 5  # posts of the form per client address ...
CLIENT_WINDOW = 10 * 60  # ... in this many seconds: a person subscribing, and fixing a typo or two
ADDRESS_LIMIT = 3  # confirmation requests per address ...
ADDRESS_WINDOW = timedelta(hours=24)  # ... in this window: nobody's inbox is flooded from our form


def new_throttle() -> Throttle:
    return Throttle(CLIENT_LIMIT, CLIENT_WINDOW)


def _throttle(request: Request) -> Throttle:
    throttle: Throttle = request.app.state.mailshot_subscribe_throttle  # made by create_app
    return throttle


# --- the form -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscribeForm:
    """A valid form: what the background task works with."""

    email: str
    nom: str
    lang: str
    lists: list[str]


def _offered(ctx: WebContext) -> list[MailingList]:
    with Session(ctx.engine) as session:
        return open_lists(session)


def _form_lang(request: Request, lists: list[MailingList], chosen: list[str], shown_in: str = "") -> str:
    """The form's language: the one it was shown in (its answer too), else the first chosen list's,
    else the browser's."""
    langs = [m.lang for m in lists if m.identifier in chosen]
    return language(request, shown_in, *langs)


def _form(request: Request, lists: list[MailingList], lang: str, status_code: int = 200, **values: object) -> Response:
    shown = {
        "title": "subscribe_title",
        "lists": lists,
        "languages": MESSAGE_LANGUAGES,
        "email": "",
        "nom": "",
        "chosen": [],
        "chosen_lang": "",
        "error": "",
        **values,
    }
    return page("subscribe.html", lang, shown, status_code, token_in_url=False)


@router.get("/subscribe")
def subscribe_form(request: Request, preselect: Annotated[str, Query(alias="list")] = "") -> Response:
    lists = _offered(context(request))
    chosen = [preselect] if preselect else []
    return _form(request, lists, _form_lang(request, lists, chosen), chosen=chosen)


def _checked(posted: Posted, lists: list[MailingList], lang: str) -> SubscribeForm | str:
    """The form's values checked, or the error to show (in ``lang``)."""
    t = texts(lang)
    chosen = list(dict.fromkeys(posted.all("list")))
    if not chosen:
        return t["no_list_chosen"]
    offered = {m.identifier for m in lists}
    for identifier in chosen:
        if identifier not in offered:
            return t["unknown_list"].format(list=identifier[:60])
    try:
        email = normalise_email(posted.first("email"))
        nom, lang_field = check_name(posted.first("nom")), check_lang(posted.first("lang"))
    except InvalidInput as exc:
        return t["invalid_input"].format(detail=exc)
    return SubscribeForm(email, nom, lang_field, chosen)


def _request(ctx: WebContext, form: SubscribeForm, client: str) -> list[str]:
    """The per-address limit, then subscribe; the lists whose confirmation link is to be sent (after
    the answer).  Failures are logged for the operator; nothing of them reaches the visitor."""
    try:
        with Session(ctx.engine) as session:
            sub = session.exec(select(Subscriber).where(Subscriber.email == form.email)).first()
            since = utcnow() - ADDRESS_WINDOW
            if sub is not None and sub.id is not None and requests_since(session, sub.id, since) >= ADDRESS_LIMIT:
                log.info("subscription request from %s ignored: address over its daily limit", client)
                return []
        outcome, _ = request_subscription(
            ctx.engine,
            ctx.settings,
            form.email,
            form.lists,
            nom=form.nom,
            lang=form.lang,
            graceful=True,
            public=True,
            source="page",
            client=client,
            send=False,
        )
    except MailshotError as exc:  # a list closed meanwhile
        log.warning("subscription request from %s not completed: %s", client, exc)
        return []
    return outcome.pending


def _send(ctx: WebContext, email: str, lists: list[str], client: str) -> None:
    try:
        send_confirmation(ctx.engine, ctx.settings, email, lists)
    except MailshotError as exc:  # the relay refused it, or is down: the visitor may ask again
        log.warning("confirmation message for a request from %s not sent: %s", client, exc)
    except Exception:  # after the answer, nobody else would see it
        log.exception("confirmation message for a request from %s failed", client)


@router.post("/subscribe")
async def subscribe(request: Request, background: BackgroundTasks) -> Response:
    ctx = context(request)
    client = client_of(request)
    lang = language(request)
    wait = _throttle(request).take(client)
    if wait:
        log.warning("subscribe form refused for %s: %d posts in %d s", client, CLIENT_LIMIT, CLIENT_WINDOW)
        response = message(lang, "too_many_title", "too_many_text", 429, token_in_url=False)
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    posted = await read_post(request, lang, token_in_url=False)
    if isinstance(posted, Response):
        return posted
    lists = await run_in_threadpool(_offered, ctx)
    lang = _form_lang(request, lists, posted.all("list"), posted.first("page_lang"))
    if posted.first("website"):  # the honeypot: a bot filled every field; it learns nothing
        log.info("subscribe form from %s: honeypot filled, nothing done", client)
        return _sent(lang, posted.first("email"))
    checked = _checked(posted, lists, lang)
    if isinstance(checked, str):
        values = {
            "email": posted.first("email"),
            "nom": posted.first("nom"),
            "chosen": posted.all("list"),
            "chosen_lang": posted.first("lang"),
        }
        return _form(request, lists, lang, 400, error=checked, **values)
    pending = await run_in_threadpool(_request, ctx, checked, client)
    if pending:
        background.add_task(_send, ctx, checked.email, pending, client)
    return _sent(lang, checked.email)


def _sent(lang: str, email: str) -> Response:
    return page("subscribe_sent.html", lang, {"title": "sent_title", "email": email[:254]}, token_in_url=False)


# --- the confirmation link ------------------------------------------------------------------------


def _invalid_link(request: Request, ctx: WebContext) -> Response:
    lang = language(request)
    days = {"days": str(ctx.settings.confirm_link_days)}
    return message(lang, "invalid_title", "invalid_text", 404, fmt=days, href="/subscribe", label="subscribe_again")


def _confirm_page(request: Request, ctx: WebContext, sub: Subscriber, state: str, lists: str = "") -> Response:
    assert sub.id is not None
    titles = {"ask": "confirm_title", "done": "confirmed_title", "already": "already_title"}
    values = {
        "title": titles[state],
        "state": state,
        "email": sub.email,
        "lists": lists,
        "preferences": preferences.link_for(ctx.settings, sub.id) if state != "ask" else "",
    }
    return page("confirm.html", language(request, sub.lang), values)


@router.get("/confirm/{token}")
def confirm_page(token: str, request: Request) -> Response:
    ctx = context(request)
    found = read_link(ctx.settings, token)
    if found is None:
        return _invalid_link(request, ctx)
    subscriber_id, issued_at = found
    with Session(ctx.engine) as session:
        sub = session.get(Subscriber, subscriber_id)
        if sub is None:  # forgotten (its request expired) or erased
            return _invalid_link(request, ctx)
        waiting = pending_since(session, subscriber_id)
    state = "ask" if waiting is not None and waiting <= issued_at else "already"
    return _confirm_page(request, ctx, sub, state)


def _follow(ctx: WebContext, token: str, client: str) -> tuple[Subscriber, list[str]] | None:
    confirmed = follow(ctx.engine, ctx.settings, token, client=client)
    found = read_link(ctx.settings, token)
    if confirmed is None or found is None:
        return None
    with Session(ctx.engine) as session:
        sub = session.get(Subscriber, found[0])
        titles = list_titles(session)
        return (sub, [titles.get(i, i) for i in confirmed]) if sub is not None else None


@router.post("/confirm/{token}")
async def confirm(token: str, request: Request) -> Response:
    ctx = context(request)
    posted = await read_post(request, language(request), token_in_url=True)
    if isinstance(posted, Response):
        return posted
    done = await run_in_threadpool(_follow, ctx, token, client_of(request))
    if done is None:
        return _invalid_link(request, ctx)
    sub, titles = done
    if not titles:
        return _confirm_page(request, ctx, sub, "already")
    return _confirm_page(request, ctx, sub, "done", ", ".join(titles))
