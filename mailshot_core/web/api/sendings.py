"""``/sendings``: create (SPIP's ``bulkstart``), list, look up with counters, recipients by status, and the
operator's actions (test, send, pause, resume, cancel) with the CLI's and the pages' rules
(sending/sendings.py, web/operations.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from mailshot_core.audience.lists import LIST_NAME_LENGTH
from mailshot_core.sending import sendings
from mailshot_core.sending.one_message import send_test
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import Mailshot, MailshotStatus, RecipientStatus
from mailshot_core.web import operations
from mailshot_core.web.api import idempotency, pagination, problems
from mailshot_core.web.api.keys import Caller, require
from mailshot_core.web.api.pagination import Cursor, Limit, Page
from mailshot_core.web.api.routing import MAX_BODY, SendingId
from mailshot_core.web.context import context

router = APIRouter(tags=["sendings"])
CHANNEL = "API"
MAX_RATE = 10_000_000


class Cadence(BaseModel):
    """Messages per day (spread evenly), and caps per hour and minute; absent: MAILSHOT_RATE_*."""

    model_config = ConfigDict(extra="forbid")

    per_day: int | None = Field(None, ge=1, le=MAX_RATE)
    per_hour: int | None = Field(None, ge=1, le=MAX_RATE)
    per_minute: int | None = Field(None, ge=1, le=MAX_RATE)


class NewSending(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(min_length=1, max_length=998, description="A template: {{ nom }} ...")
    html: str = Field(max_length=MAX_BODY, description="The HTML body (a Jinja2 template, sandboxed).")
    text: str | None = Field(None, max_length=MAX_BODY, description="Absent: made from the HTML.")
    lists: list[Annotated[str, Field(min_length=1, max_length=LIST_NAME_LENGTH)]] = Field(min_length=1, max_length=100)
    from_name: str | None = Field(None, max_length=255)
    from_email: str | None = Field(None, max_length=320)
    start_at: datetime | None = Field(None, description="Schedule it (ISO 8601; without an offset, UTC).")
    send: bool = Field(False, description="Start it now; neither this nor start_at: a draft.")
    transport: str | None = Field(None, max_length=40)
    cadence: Cadence | None = None
    track: bool | None = Field(None, description="Open pixel and click redirects; absent: MAILSHOT_TRACKING.")


class Counters(BaseModel):
    total: int
    current: int
    sent: int
    failed: int
    nb_read: int
    nb_clic: int
    nb_spam: int
    nb_bounce: int
    nb_unsub: int
    nb_unknown: int
    nb_kill: int


class SendingOut(BaseModel):
    id: int
    status: str  # draft, init (scheduled), processing, pause, end, cancel, archive
    reason: str | None
    subject: str
    lists: list[str]
    from_name: str
    from_email: str
    transport: str
    track: bool
    start_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    counters: Counters

    @classmethod
    def of(cls, m: Mailshot) -> SendingOut:
        assert m.id is not None
        return cls(
            id=m.id,
            status=m.status,
            reason=m.status_reason,
            subject=m.subject,
            lists=sendings.list_identifiers(m),
            from_name=m.from_name,
            from_email=m.from_email,
            transport=m.transport,
            track=m.track,
            start_at=m.start_at,
            created_at=m.created_at,
            started_at=m.started_at,
            ended_at=m.ended_at,
            counters=Counters(**sendings.stored_counters(m)),
        )


class RecipientOut(BaseModel):
    email: str
    status: str
    tries: int
    last_attempt_at: datetime | None
    last_error: str | None


class TestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=1, max_length=320)


class TestOut(BaseModel):
    email: str
    message_id: str


_GET_LINK = {"GetSending": {"operationId": "getSending", "parameters": {"mailshot_id": "$response.body#/id"}}}


@idempotency.creating(router, "/sendings", operation_id="createSending", response_model=SendingOut, link=_GET_LINK)
async def create_sending(
    request: Request, body: NewSending, caller: Annotated[Caller, Depends(require("send"))]
) -> Response:
    """A sending: a draft (test it, then send it), scheduled with ``start_at``, or started with ``send``."""
    ctx = context(request)
    cadence = body.cadence or Cadence()
    spec = sendings.NewMailshot(
        subject=body.subject,
        html=body.html,
        text=body.text,
        lists=tuple(body.lists),
        from_name=body.from_name,
        from_email=body.from_email,
        start_at=body.start_at,
        transport=body.transport,
        rate_per_day=cadence.per_day,
        rate_per_hour=cadence.per_hour,
        rate_per_minute=cadence.per_minute,
        track=body.track,
        send_now=body.send,
    )

    def work() -> SendingOut:
        with session_scope(ctx.engine) as session:
            m = sendings.create(session, ctx.settings, spec)
        if m.status == MailshotStatus.PROCESSING:
            operations.start_run(ctx, m.id or 0)
        return SendingOut.of(m)

    return await idempotency.respond(request, caller, 201, work)


@router.get("/sendings", operation_id="listSendings", response_model=Page[SendingOut])
def list_sendings(
    request: Request,
    caller: Annotated[Caller, Depends(require("read"))],
    status: Annotated[MailshotStatus | None, Query()] = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Page[SendingOut]:
    """Sendings, newest first."""
    with Session(context(request).engine) as session:
        rows = sendings.browse(session, status=status, before=pagination.decode(cursor), limit=limit)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = pagination.encode(rows[-1].id or 0) if more else None
    return Page(items=[SendingOut.of(m) for m in rows], next_cursor=next_cursor)


@router.get("/sendings/{mailshot_id}", operation_id="getSending", response_model=SendingOut)
def get_sending(
    request: Request, mailshot_id: SendingId, caller: Annotated[Caller, Depends(require("read"))]
) -> SendingOut:
    """A sending with its counters."""
    with Session(context(request).engine) as session:
        return SendingOut.of(sendings.get(session, mailshot_id))


@router.get("/sendings/{mailshot_id}/recipients", operation_id="listRecipients", response_model=Page[RecipientOut])
def list_recipients(
    request: Request,
    mailshot_id: SendingId,
    caller: Annotated[Caller, Depends(require("read"))],
    status: Annotated[RecipientStatus | None, Query()] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[RecipientOut]:
    """A sending's recipients, of one status or all, by id."""
    with Session(context(request).engine) as session:
        rows = sendings.recipients(
            session, mailshot_id, status=status, after=pagination.decode(cursor) or 0, limit=limit
        )
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        RecipientOut(
            email=r.email, status=r.status, tries=r.tries, last_attempt_at=r.last_attempt_at, last_error=r.last_error
        )
        for r in rows
    ]
    return Page(items=items, next_cursor=pagination.encode(rows[-1].id or 0) if more else None)


@router.post(
    "/sendings/{mailshot_id}/test",
    operation_id="testSending",
    response_model=TestOut,
    responses=problems.responses(502),
)
def test_sending(
    request: Request, mailshot_id: SendingId, body: TestIn, caller: Annotated[Caller, Depends(require("send"))]
) -> TestOut:
    """One [TEST] message of the sending to any address; nothing else changes."""
    ctx = context(request)
    with Session(ctx.engine) as session:
        sendings.get(session, mailshot_id)  # an unknown id is a 404, before any connection
    message = send_test(ctx.engine, ctx.settings, mailshot_id, body.email)
    return TestOut(email=message.envelope_to, message_id=message.message_id)


Action = Literal["send", "pause", "resume", "cancel"]


@router.post(
    "/sendings/{mailshot_id}/{action}",
    operation_id="operateSending",
    response_model=SendingOut,
    responses={**problems.responses(409), 200: {"links": _GET_LINK}},
)
async def operate(
    request: Request, mailshot_id: SendingId, action: Action, caller: Annotated[Caller, Depends(require("send"))]
) -> SendingOut:
    """send (a draft or a scheduled sending, now), pause, resume (a paused one) or cancel, as the CLI does."""
    ctx = context(request)
    await run_in_threadpool(operations.operate, ctx, mailshot_id, action, channel=CHANNEL, who=f"API key {caller.name}")
    with Session(ctx.engine) as session:
        return SendingOut.of(sendings.get(session, mailshot_id))
