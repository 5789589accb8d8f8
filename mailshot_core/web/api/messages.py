"""``/messages``: one personalised message of a sending to any address (SPIP's ``newsletter/send``), a test
(subject prefixed [TEST]) or a transactional copy, through the sending's transport with its headers
(sending/one_message.py, as ``mailshot test`` and the pages' test)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from mailshot_core.sending import sendings
from mailshot_core.sending.one_message import send_one
from mailshot_core.web.api import idempotency, problems
from mailshot_core.web.api.keys import Caller, require
from mailshot_core.web.api.routing import MAX_ID
from mailshot_core.web.context import context

router = APIRouter(tags=["messages"])


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sending_id: int = Field(ge=1, le=MAX_ID, description="The sending whose content is sent.")
    email: str = Field(min_length=1, max_length=320)
    test: bool = Field(True, description="A [TEST] message; false: the message as its recipients get it.")


class MessageOut(BaseModel):
    email: str
    message_id: str
    test: bool


@idempotency.creating(
    router, "/messages", operation_id="sendMessage", response_model=MessageOut, problems=problems.responses(502)
)
async def send_message(
    request: Request, body: MessageIn, caller: Annotated[Caller, Depends(require("send"))]
) -> Response:
    """Send one message now, outside the sending's queue: no recipient row changes."""
    ctx = context(request)

    def work() -> MessageOut:
        with Session(ctx.engine) as session:
            sendings.get(session, body.sending_id)  # an unknown id is a 404, before any connection
        message = send_one(ctx.engine, ctx.settings, body.sending_id, body.email, test=body.test)
        return MessageOut(email=message.envelope_to, message_id=message.message_id, test=body.test)

    return await idempotency.respond(request, caller, 201, work)
