"""``/sendings``: create (SPIP's ``bulkstart``), list, look up with counters, recipients by status, and the
operator's actions (test, send, pause, resume, cancel) with the CLI's and the pages' rules
(sending/sendings.py, web/operations.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from mailshot_core.content.message import MAX_HEADER_TEXT
from mailshot_core.sending import sendings
from mailshot_core.sending.one_message import send_test
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import Mailshot, MailshotStatus, RecipientStatus
from mailshot_core.transports import AVAILABLE as TRANSPORTS
from mailshot_core.web import operations
from mailshot_core.web.api import fields, idempotency, pagination, problems
from mailshot_core.web.api.keys import Caller, require
from mailshot_core.web.api.pagination import Cursor, Limit, Page
from mailshot_core.web.api.routing import MAX_BODY, SendingId
from mailshot_core.web.context import context

router = APIRouter(tags=["sendings"])
CHANNEL = "API"
MAX_RATE = 10_000_000
TRANSPORT_NAMES = tuple(TRANSPORTS)


class Cadence(BaseModel):
    """Messages per day (spread evenly), and caps per hour and minute; absent: MAILSHOT_RATE_*."""

    model_config = ConfigDict(extra="forbid")

    per_day: Annotated[int, Field(ge=1, le=MAX_RATE), fields.JSON_INTEGER] | None = None
    per_hour: Annotated[int, Field(ge=1, le=MAX_RATE), fields.JSON_INTEGER] | None = None
    per_minute: Annotated[int, Field(ge=1, le=MAX_RATE), fields.JSON_INTEGER] | None = None


class NewSending(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"subject": "Hello {{ nom }}", "html": "<p>Hello {{ nom }}</p>", "lists": ["news"]}]
        },
    )

    subject: Annotated[str, Field(max_length=MAX_HEADER_TEXT, pattern=r"^[^\x00\r\n]*[^\x00\s][^\x00\r\n]*$")] = Field(
        description="A template: {{ nom }} ..."
    )
    html: Annotated[str, fields.text(MAX_BODY, nonblank=True)] = Field(
        description="The HTML body (a Jinja2 template, sandboxed)."
    )
    text: Annotated[str, fields.text(MAX_BODY)] | None = Field(None, description="Absent: made from the HTML.")
    lists: list[fields.ListName] = Field(min_length=1, max_length=100)
    from_name: Annotated[str, fields.line(255)] | None = None
    from_email: fields.OptionalEmail | None = None
    start_at: fields.Timestamp | None = Field(None, description="Schedule it (ISO 8601; without an offset, UTC).")
    send: fields.Flag = Field(False, description="Start it now; neither this nor start_at: a draft.")
    transport: Literal[TRANSPORT_NAMES] | None = None  # type: ignore[valid-type]
    cadence: Cadence | None = None
    track: fields.Flag | None = Field(None, description="Open pixel and click redirects; absent: MAILSHOT_TRACKING.")


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
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"email": "ann@example.org"}]})

    email: fields.Email


class TestOut(BaseModel):
    email: str
    message_id: str


# From a sending's answer to what can be done with it (OpenAPI links: clients and schemathesis follow them).
_GET_LINK = {
    name: {"operationId": operation, "parameters": {"mailshot_id": "$response.body#/id"}}
    for name, operation in (
        ("GetSending", "getSending"),
        ("ListRecipients", "listRecipients"),
        ("TestSending", "testSending"),
        ("SendSending", "sendSending"),
        ("PauseSending", "pauseSending"),
        ("ResumeSending", "resumeSending"),
        ("CancelSending", "cancelSending"),
    )
}


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
        # As `mailshot create` does: the run is made now, for now or for the sending's start time.
        if m.status in (MailshotStatus.PROCESSING, MailshotStatus.INIT):
            operations.start_run(ctx, m.id or 0, m.start_at if m.status == MailshotStatus.INIT else None)
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
    responses=problems.responses(409, 502),
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


def _operation(action: str) -> Callable[..., Awaitable[SendingOut]]:
    async def operate(
        request: Request, mailshot_id: SendingId, caller: Annotated[Caller, Depends(require("send"))]
    ) -> SendingOut:
        ctx = context(request)
        who = f"API key {caller.name}"
        await run_in_threadpool(operations.operate, ctx, mailshot_id, action, channel=CHANNEL, who=who)
        with Session(ctx.engine) as session:
            return SendingOut.of(sendings.get(session, mailshot_id))

    return operate


# The operator's actions, as the CLI's commands and the pages' buttons: each its own operation.
for _action, _summary in (
    ("send", "Send a draft or a scheduled sending now."),
    ("pause", "Pause a sending: it stops within seconds, before its next messages."),
    ("resume", "Resume a paused sending."),
    ("cancel", "Cancel a sending: its recipients not yet sent to are never sent to."),
):
    router.add_api_route(
        f"/sendings/{{mailshot_id}}/{_action}",
        _operation(_action),
        methods=["POST"],
        operation_id=f"{_action}Sending",
        summary=_summary,
        response_model=SendingOut,
        responses={**problems.responses(409), 200: {"links": _GET_LINK}},
    )
