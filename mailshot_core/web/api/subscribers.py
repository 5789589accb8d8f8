"""``/subscribers``: look up, page through, subscribe (one, with double opt-in unless forced), bulk import,
unsubscribe, erase (SPIP's ``subscriber``, ``subscribers``, ``subscribe``, ``unsubscribe``) through the
audience/ functions the CLI and the pages use.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from mailshot_core.audience import erasure, lists, subscribers, subscriptions
from mailshot_core.audience.subscribers import ImportReport
from mailshot_core.errors import InvalidInput
from mailshot_core.sending.confirmations import request_subscription
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import SubscriberStatus, SubscriptionStatus
from mailshot_core.web.api import fields, idempotency, pagination, problems
from mailshot_core.web.api.keys import Caller, require
from mailshot_core.web.api.pagination import Cursor, Limit, Page
from mailshot_core.web.api.routing import CSV, media_type
from mailshot_core.web.context import context

router = APIRouter(tags=["subscribers"])
# The filter's values: a subscriber's statuses and a subscription's, together (one enum in the schema).
Status = StrEnum("Status", {s: s for s in sorted({*SubscriberStatus, *SubscriptionStatus})})  # type: ignore[misc]
EMAIL_LENGTH = 320
# Any text but NUL, which PostgreSQL cannot compare: an address that is no subscriber's is a 404.
Email = Annotated[str, Path(min_length=1, max_length=EMAIL_LENGTH, pattern=r"^[^\x00]+$", description="The address.")]
ListQuery = Query(alias="list", min_length=1, max_length=lists.LIST_NAME_LENGTH, pattern=fields.LIST_PATTERN)
SOURCE = "api"
# The header line subscribers.read_csv needs, and rows without the quotes, semicolons or tabs that would
# make its dialect sniffer take them for another format (or a quote left open fail the whole body).
CSV_PATTERN = r'^email(?:,(?:nom|name|lang))*(?:\r\n?|\n)[^\x00";\t]*$'
_CSV = re.compile(CSV_PATTERN)  # the schema's pattern is the API's rule, so what it accepts is what it says


class SubscriptionOut(BaseModel):
    list: str
    status: str  # valid, pending (waiting for the address's confirmation), refused (left)
    since: datetime


class HistorySummary(BaseModel):
    sendings: int  # sendings addressed to it, archived ones included
    outcomes: dict[str, int]  # recipient status -> sendings (sent, read, clic, bounce, fail ...)
    events: int  # feedback events (bounces, complaints, opens, clicks, unsubscriptions)
    last_sending_id: int | None


class TrailOut(BaseModel):
    at: datetime
    action: str  # requested, subscribed, confirmed, unsubscribed
    list: str
    source: str
    client: str | None
    detail: str | None


class SubscriberOut(BaseModel):
    email: str
    nom: str
    lang: str
    status: str  # valid, pending, unsubscribed
    created_at: datetime
    unsubscribed_at: datetime | None
    unsubscribe_reason: str | None
    lists: list[SubscriptionOut]
    history: HistorySummary
    trail: list[TrailOut]


class SubscriberBrief(BaseModel):
    email: str
    nom: str
    lang: str
    status: str


class SubscribeIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"email": "ann@example.org", "lists": ["news"], "nom": "Ann", "lang": "en"}]},
    )

    email: fields.Email
    lists: list[fields.ListName] = Field(min_length=1, max_length=100)
    nom: Annotated[str, fields.line(255)] = ""
    lang: fields.Lang = ""
    force: fields.Flag = Field(False, description="Subscribe at once, without the confirmation message.")
    graceful: fields.Flag = Field(False, description="Never re-subscribe an address that unsubscribed.")


class SubscribeOut(BaseModel):
    email: str
    status: str  # the subscriber's: valid, pending, unsubscribed
    subscribed: list[str]
    pending: list[str]  # a confirmation message was sent for these
    already: list[str]
    kept_unsubscribed: list[str]
    confirmation_sent: bool


class RowError(BaseModel):
    line: int  # CSV line, or position in the JSON array (from 1)
    error: str


class ImportOut(BaseModel):
    rows: int
    new_subscribers: int
    new_subscriptions: int
    already_subscribed: int
    kept_unsubscribed: int
    errors: list[RowError]

    @classmethod
    def of(cls, report: ImportReport) -> ImportOut:
        errors = [RowError(line=line, error=reason) for line, reason in report.errors]
        fields = {k: v for k, v in vars(report).items() if k != "errors"}
        return cls(errors=errors, **fields)


class UnsubscribeIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"lists": ["news"], "reason": "asked by phone"}]}
    )

    lists: list[fields.ListName] | None = Field(None, max_length=100, description="Absent or null: every list.")
    reason: Annotated[str, fields.text(500, nonblank=True)] = "unsubscribed through the API"


class UnsubscribeOut(BaseModel):
    email: str
    status: str
    changed: int  # subscriptions that ended now


def _subscriber(session: Session, email: str) -> SubscriberOut:
    h = subscribers.history(session, email)
    sub = h.subscriber
    assert sub.id is not None
    return SubscriberOut(
        email=sub.email,
        nom=sub.nom,
        lang=sub.lang,
        status=sub.status,
        created_at=sub.created_at,
        unsubscribed_at=sub.unsubscribed_at,
        unsubscribe_reason=sub.unsubscribe_reason,
        lists=[SubscriptionOut(list=name, status=status, since=at) for name, status, at in h.subscriptions],
        history=HistorySummary(
            sendings=len(h.sendings),
            outcomes=dict(Counter(s.status for s in h.sendings)),
            events=len(h.events),
            last_sending_id=h.sendings[-1].mailshot_id if h.sendings else None,
        ),
        trail=[TrailOut(**vars(t)) for t in subscriptions.trail(session, sub.id)],
    )


_GET_LINK = {
    name: {"operationId": operation, "parameters": {"email": "$response.body#/email"}}
    for name, operation in (
        ("GetSubscriber", "getSubscriber"),
        ("Unsubscribe", "unsubscribe"),
        ("Erase", "eraseSubscriber"),
    )
}


@router.get("/subscribers/{email:address}", operation_id="getSubscriber", response_model=SubscriberOut)
def get_subscriber(
    request: Request, email: Email, caller: Annotated[Caller, Depends(require("read"))]
) -> SubscriberOut:
    """An address: its lists with their states, name, language, status, what it received, its opt-in trail."""
    with Session(context(request).engine) as session:
        return _subscriber(session, email)


@router.get("/subscribers", operation_id="listSubscribers", response_model=Page[SubscriberBrief])
def list_subscribers(
    request: Request,
    caller: Annotated[Caller, Depends(require("read"))],
    list_: Annotated[str | None, ListQuery] = None,
    status: Annotated[
        Status | None,
        Query(
            description="With `list`: the subscription's (valid, pending, refused); without: the address's "
            "(valid, pending, unsubscribed).  Another one matches nobody."
        ),
    ] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[SubscriberBrief]:
    """Subscribers by id, a page at a time, with the count of all that match."""
    after = pagination.decode(cursor) or 0
    with Session(context(request).engine) as session:
        page = subscribers.browse(
            session, list_identifier=list_, status=status and str(status), after=after, limit=limit
        )
    items = [SubscriberBrief(email=s.email, nom=s.nom, lang=s.lang, status=s.status) for s in page.subscribers]
    last = page.subscribers[-1].id if page.subscribers else None
    return Page(items=items, count=page.count, next_cursor=pagination.encode(last) if page.more and last else None)


@idempotency.creating(
    router,
    "/subscribers",
    operation_id="subscribe",
    response_model=SubscribeOut,
    status_code=200,
    link=_GET_LINK,
    problems=problems.responses(409, 502),
)
async def subscribe(
    request: Request, body: SubscribeIn, caller: Annotated[Caller, Depends(require("subscribers"))]
) -> Response:
    """Subscribe an address to lists (cumulative).  Lists with double opt-in leave it pending and a
    confirmation message is sent, unless ``force``; ``graceful`` never re-subscribes someone who left."""
    ctx = context(request)

    def work() -> SubscribeOut:
        outcome, sent = request_subscription(
            ctx.engine,
            ctx.settings,
            body.email,
            body.lists,
            nom=body.nom,
            lang=body.lang,
            force=body.force,
            graceful=body.graceful,
            source=SOURCE,
            client=caller.name,
        )
        sub = outcome.subscriber
        return SubscribeOut(
            email=sub.email,
            status=sub.status,
            subscribed=outcome.subscribed,
            pending=outcome.pending,
            already=outcome.already,
            kept_unsubscribed=outcome.kept_unsubscribed,
            confirmation_sent=sent is not None,
        )

    return await idempotency.respond(request, caller, 200, work)


# Rows are checked one by one and the bad ones reported (``errors``, by position or line) with the
# others imported: so any array is accepted, and any CSV text whose first line names the columns.
_IMPORT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "array",
                "description": "One object per address: email (required), nom, lang.  A row that is not one "
                "is reported in `errors` by its position (from 1), the others are imported.",
                "items": {},
            }
        },
        CSV: {
            "schema": {
                "type": "string",
                "pattern": CSV_PATTERN,
                "description": "A header line naming the columns (email, and optionally nom, lang), then one "
                "line per address; a bad line is reported in `errors` by its number.",
            }
        },
    },
}


@router.post(
    "/subscribers/import",
    operation_id="importSubscribers",
    response_model=ImportOut,
    openapi_extra={"requestBody": _IMPORT_BODY, "parameters": [idempotency.HEADER_DOC]},
)
async def import_subscribers(
    request: Request,
    caller: Annotated[Caller, Depends(require("subscribers"))],
    list_: Annotated[str, ListQuery],
) -> Response:
    """Subscribe many addresses to a list at once, as ``mailshot subscribers import`` does (the same code):
    no confirmation message, an address that left is never re-subscribed, invalid rows reported by line."""
    body = await request.body()
    csv_body = media_type(request.headers.get("content-type", "")) == CSV
    source = "CSV body" if csv_body else "JSON body"
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{source}: not UTF-8 text (byte {exc.start})") from None
    if csv_body:
        if not _CSV.fullmatch(text):
            raise InvalidInput(
                f"{source}: the API reads a header line 'email[,nom][,lang]' then one line per address, comma "
                "separated, without quotes, semicolons or tabs (send a JSON array for other values)"
            )
        items = subscribers.read_csv(text, source)
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{source}: not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
        if not isinstance(records, list):
            raise InvalidInput(f"{source}: expected an array of objects with an email")
        items = subscribers.read_records(records)
    engine = context(request).engine

    def work() -> ImportOut:
        with session_scope(engine) as session:
            return ImportOut.of(subscribers.import_rows(session, items, list_, source=source))

    return await idempotency.respond(request, caller, 200, work)


@router.post("/subscribers/{email:address}/unsubscribe", operation_id="unsubscribe", response_model=UnsubscribeOut)
def unsubscribe(
    request: Request,
    email: Email,
    body: UnsubscribeIn,
    caller: Annotated[Caller, Depends(require("subscribers"))],
) -> UnsubscribeOut:
    """End the address's subscriptions to some lists, or to all (then the address itself is unsubscribed)."""
    with session_scope(context(request).engine) as session:
        targets: list[str | None] = list(dict.fromkeys(body.lists)) if body.lists else [None]
        changed = sum(
            subscribers.unsubscribe(session, email, name, reason=body.reason, source=SOURCE, client=caller.name)
            for name in targets
        )
        sub = subscribers.get_subscriber(session, email)
        return UnsubscribeOut(email=sub.email, status=sub.status, changed=changed)


@router.delete("/subscribers/{email:address}", operation_id="eraseSubscriber", status_code=204)
async def erase(request: Request, email: Email, caller: Annotated[Caller, Depends(require("subscribers"))]) -> Response:
    """Erase the address (GDPR): it is removed with its subscriptions and trail; what the sendings recorded
    stays under an anonymous address, so their counters do not change."""

    def work() -> None:
        with session_scope(context(request).engine) as session:
            erasure.erase(session, email)

    await run_in_threadpool(work)
    return Response(status_code=204)
