"""``/feedback``: an event about an address in a sending (SPIP's ``newsletter/feedback``), for bounce
processors and other systems outside Mailshot, through the one feedback pipeline: stored in the inbox
(deduplicated by its id), then applied like a webhook's (feedback/inbox.py, the app's applier).
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from mailshot_core.errors import NotFound
from mailshot_core.feedback import inbox
from mailshot_core.feedback.effects import Effect
from mailshot_core.feedback.esp_events import IncomingEvent, digest
from mailshot_core.web.api import fields, idempotency
from mailshot_core.web.api.keys import Caller, require
from mailshot_core.web.context import context

router = APIRouter(tags=["feedback"])
SOURCE = "api"
# What a caller may say happened; machine opens and clicks are our tracking's own judgement.
Kind = StrEnum(  # type: ignore[misc]
    "Kind", {e.name: e.value for e in Effect if e not in (Effect.MACHINE_READ, Effect.MACHINE_CLIC, Effect.IGNORE)}
)


class FeedbackIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"sending_id": 1, "email": "ann@example.org", "kind": "hard_bounce", "detail": "550 5.1.1 user unknown"}
            ]
        },
    )

    sending_id: fields.Id
    email: fields.Email
    kind: Kind = Field(description="What happened to the message.")
    event_id: Annotated[str, fields.line(200, min_length=1)] | None = Field(
        None, description="Your id of the event: sent twice, it is recorded once."
    )
    detail: Annotated[str, fields.text(2000)] | None = Field(None, description="E.g. the bounce's diagnostic.")


class FeedbackOut(BaseModel):
    event_id: str
    recorded: bool  # false: an event with this id was recorded before


@idempotency.creating(router, "/feedback", operation_id="recordFeedback", response_model=FeedbackOut, status_code=202)
async def record_feedback(
    request: Request, body: FeedbackIn, caller: Annotated[Caller, Depends(require("send"))]
) -> Response:
    """Record the event; it is applied (recipient status, counters, unsubscription for a complaint or a
    hard bounce's rule) in the background, as a provider's webhook event is."""
    raw = json.dumps(body.model_dump(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    event_id = body.event_id or digest(raw)
    event = IncomingEvent(
        source=SOURCE,
        event_id=event_id,
        kind=str(body.kind),
        email=body.email,
        mailshot_id=body.sending_id,
        recipient_id=None,
        occurred_at=None,
        detail=body.detail,
        raw=raw,
    )
    ctx = context(request)

    def work() -> FeedbackOut:
        report = inbox.store(ctx.engine, [event])
        if report.ignored:
            raise NotFound(f"no sending with id {body.sending_id}")
        ctx.applier.submit(report.ids)
        return FeedbackOut(event_id=event_id, recorded=bool(report.stored))

    return await idempotency.respond(request, caller, 202, work)
