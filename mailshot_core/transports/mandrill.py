"""Mandrill (Mailchimp Transactional): ``POST /api/1.0/messages/send``, one message with many
recipients (``preserve_recipients: false``: each sees only itself), per-recipient ``merge_vars``
(reference/email-standards.md §2.4).

The content is made of Handlebars triple-brace merge tags (``{{{x}}}``: not escaped) filled with each
recipient's rendering.  Correlation: message ``metadata`` {mailshot_id} and ``recipient_metadata``
{recipient_id}, both returned in events as ``msg.metadata``.  Mandrill has no per-recipient headers,
so the per-recipient List-Unsubscribe (an HTTPS link) cannot travel in a batch: only the headers that
are the same for every recipient are sent (the unsubscribe link stays in the body).

Mandrill reports every API error as HTTP 500 with a JSON ``name``: mapped here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from mailshot_core.transports.base import (
    ConfigurationError,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TemporaryError,
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
    shared_headers,
)

# Above 10 recipients Mandrill always queues (rejections then come as `reject` events).
BATCH = 100
_CONFIG_ERRORS = {"Invalid_Key", "PaymentRequired", "Unknown_Subaccount", "ValidationError", "Unknown_Template"}
_REFUSED = {"rejected", "invalid"}


def message_json(key: str, messages: Sequence[OutgoingMessage]) -> dict[str, Any]:
    first = parts_of(messages[0])
    shared = shared_headers(messages)  # no per-recipient headers in this API
    if first.reply_to:
        shared["Reply-To"] = first.reply_to
    message: dict[str, Any] = {
        "from_email": first.from_email,
        "from_name": first.from_name,
        "subject": "{{{ms_subject}}}",
        "html": "{{{ms_html}}}",
        "text": "{{{ms_text}}}",
        "to": [],
        "headers": shared,
        "preserve_recipients": False,
        "merge": True,
        "merge_language": "handlebars",
        "track_opens": True,
        "track_clicks": True,
        "metadata": {"mailshot_id": str(first.mailshot_id)},
        "merge_vars": [],
        "recipient_metadata": [],
    }
    if not first.test:
        message["tags"] = [campaign(first)]
    for m in messages:
        p = parts_of(m)
        message["to"].append({"email": p.to_email, "name": p.to_name, "type": "to"})
        message["merge_vars"].append(
            {
                "rcpt": p.to_email,
                "vars": [
                    {"name": "ms_subject", "content": p.subject},
                    {"name": "ms_html", "content": p.html},
                    {"name": "ms_text", "content": p.text},
                ],
            }
        )
        message["recipient_metadata"].append({"rcpt": p.to_email, "values": {"recipient_id": str(m.recipient_id)}})
    return {"key": key, "message": message, "async": False}


def _api_error(response: httpx.Response) -> TransportError:
    try:
        body = response.json()
    except ValueError:
        return call_error("Mandrill", response)
    if not isinstance(body, dict) or body.get("status") != "error":
        return call_error("Mandrill", response)
    name, text = str(body.get("name")), str(body.get("message"))
    if name in _CONFIG_ERRORS:
        return ConfigurationError(f"Mandrill refused the call: {name}: {text}", response.status_code)
    if response.status_code == 429:
        return call_error("Mandrill", response)
    return TemporaryError(f"Mandrill error {name}: {text}", response.status_code)


class MandrillConnection(HttpConnection):
    provider = "Mandrill"

    def __init__(self, key: str, base_url: str, timeout: float) -> None:
        super().__init__(base_url, timeout)
        self.key = key

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | TransportError]:
        response = await self.post("/api/1.0/messages/send", json_data=message_json(self.key, messages))
        if response.status_code != 200:
            raise _api_error(response)
        body = json_body(self.provider, response)
        if not isinstance(body, list):
            raise TemporaryError(f"Mandrill answered an unexpected body: {str(body)[:200]}")
        by_email = {str(item.get("email", "")).lower(): item for item in body if isinstance(item, dict)}
        replies: list[SendResult | TransportError] = []
        for m in messages:
            item = by_email.get(m.envelope_to.lower())
            if item is None:  # accepted without a per-recipient status: its events will tell
                replies.append(SendResult(200, "accepted"))
            elif item.get("status") in _REFUSED:
                replies.append(PermanentError(f"Mandrill {item.get('status')}: {item.get('reject_reason')}", 550))
            else:
                replies.append(SendResult(200, str(item.get("status")), str(item.get("_id") or "") or None))
        return replies


class MandrillTransport(HttpTransport):
    name = "mandrill"
    batch_size = BATCH

    def new_connection(self) -> MandrillConnection:
        s = self.settings
        key = secret(s.mandrill_api_key, "MAILSHOT_MANDRILL_API_KEY", "Mandrill")
        return MandrillConnection(key, s.mandrill_url, s.esp_timeout)
