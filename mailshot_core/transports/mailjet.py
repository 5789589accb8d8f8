"""Mailjet Send API v3.1: ``POST /v3.1/send`` with Basic auth (API key, secret), up to 50 messages
per call, each with its own content (our rendering), headers and ids (reference/email-standards.md §2.2).

Correlation: ``CustomID`` = ``m<mailshot>-r<recipient>`` and ``EventPayload`` = ``{"m": .., "r": ..}``
come back in every event (as ``CustomID`` and ``Payload``).  ``CustomCampaign`` groups the sending, and
``DeduplicateCampaign`` makes Mailjet itself refuse a second copy to the same address, which covers
the retry of a call that timed out after Mailjet had accepted it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mailshot_core.transports.base import (
    ConfigurationError,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TemporaryError,
    Throttled,
    TransportError,
)
from mailshot_core.transports.http import (
    HttpConnection,
    HttpTransport,
    call_error,
    campaign,
    json_body,
    parts_of,
    secret,
)

# Mailjet's documented maximum of messages per v3.1 call (secondary source, see the reference).
BATCH = 50


def message_json(message: OutgoingMessage) -> dict[str, Any]:
    p = parts_of(message)
    body: dict[str, Any] = {
        "From": {"Email": p.from_email, "Name": p.from_name},
        "To": [{"Email": p.to_email, "Name": p.to_name}],
        "Subject": p.subject,
        "TextPart": p.text,
        "HTMLPart": p.html,
        "Headers": dict(p.headers),
        "CustomID": f"m{p.mailshot_id}-r{message.recipient_id}",
        "EventPayload": json.dumps({"m": p.mailshot_id, "r": message.recipient_id}),
    }
    if p.reply_to:
        body["ReplyTo"] = {"Email": p.reply_to}
    if not p.test:
        body["CustomCampaign"] = campaign(p)
        body["DeduplicateCampaign"] = True
    return body


def _error(item: dict[str, Any]) -> TransportError:
    errors = item.get("Errors") or [{}]
    first = errors[0]
    status = int(first.get("StatusCode") or 400)
    text = f"{first.get('ErrorCode', '')} {first.get('ErrorMessage', 'rejected')}".strip()
    if status in (401, 403):
        return ConfigurationError(f"Mailjet refused the message: {text}", status)
    if status == 429:
        return Throttled(f"Mailjet: {text}", status)
    if status >= 500:
        return TemporaryError(f"Mailjet: {text}", status)
    return PermanentError(f"Mailjet rejected the recipient: {text}", status)


class MailjetConnection(HttpConnection):
    provider = "Mailjet"

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | TransportError]:
        response = await self.post("/v3.1/send", json_data={"Messages": [message_json(m) for m in messages]})
        # A 400 with one result per message means "some messages were refused": read them one by one.
        if response.status_code not in (200, 400):
            raise call_error(self.provider, response)
        body = json_body(self.provider, response)
        items = body.get("Messages") if isinstance(body, dict) else None
        if not isinstance(items, list) or len(items) != len(messages):
            raise call_error(self.provider, response)
        replies: list[SendResult | TransportError] = []
        for item in items:
            if item.get("Status") == "success":
                to = (item.get("To") or [{}])[0]
                replies.append(SendResult(200, "accepted", str(to["MessageID"]) if to.get("MessageID") else None))
            else:
                replies.append(_error(item))
        return replies


class MailjetTransport(HttpTransport):
    name = "mailjet"
    batch_size = BATCH

    def new_connection(self) -> MailjetConnection:
        s = self.settings
        auth = (
            secret(s.mailjet_api_key, "MAILSHOT_MAILJET_API_KEY", "Mailjet"),
            secret(s.mailjet_api_secret, "MAILSHOT_MAILJET_API_SECRET", "Mailjet"),
        )
        return MailjetConnection(s.mailjet_url, s.esp_timeout, auth=auth)
