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
from mailshot_core.web.api import fields, idempotency, problems
from mailshot_core.web.api.keys import Caller, require
from mailshot_core.web.context import context

router = APIRouter(tags=["messages"])


class MessageIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"sending_id": 1, "email": "ann@example.org", "test": True}]}
    )

    sending_id: fields.Id = Field(description="The sending whose content is sent.")
    email: fields.Email
    test: fields.Flag = Field(True, description="A [TEST] message; false: the message as its recipients get it.")


class MessageOut(BaseModel):
    email: str
    message_id: str
    test: bool


@idempotency.creating(
    router, "/messages", operation_id="sendMessage", response_model=MessageOut, problems=problems.responses(409, 502)
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
