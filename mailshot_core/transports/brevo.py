"""Brevo (ex-Sendinblue) transactional API: ``POST /v3/smtp/email`` with ``messageVersions``, one
version per recipient with its own subject and bodies (our rendering), header ``api-key``
(reference/email-standards.md §2.8).

Correlation: versions have no headers of their own, so the sending travels in the shared
``X-Mailin-custom`` header (``mailshot_id:<id>``, returned in every event) and tag, and the recipient is
found by (sending, address), unique per sending; the ``messageIds`` Brevo returns, one per version,
are stored as the recipients' message ids.  As with Mandrill, only headers that every recipient
shares are sent (the per-recipient List-Unsubscribe link stays in the body).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailshot_core.transports.base import OutgoingMessage, SendResult, TransportError
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

# Brevo takes up to 1,000 versions per call; each carries a whole rendered HTML, so fewer.
BATCH = 100


def email_json(messages: Sequence[OutgoingMessage]) -> dict[str, Any]:
    first = parts_of(messages[0])
    shared = shared_headers(messages)  # no per-recipient headers in this API
    shared["X-Mailin-custom"] = f"mailshot_id:{first.mailshot_id}"
    body: dict[str, Any] = {
        "sender": {"email": first.from_email, "name": first.from_name},
        "subject": first.subject,
        "htmlContent": first.html or None,
        "textContent": first.text,
        "headers": shared,
        "messageVersions": [],
    }
    if not first.html:
        del body["htmlContent"]
    if first.reply_to:
        body["replyTo"] = {"email": first.reply_to}
    if not first.test:
        body["tags"] = [campaign(first)]
    for m in messages:
        p = parts_of(m)
        version: dict[str, Any] = {
            "to": [{"email": p.to_email, "name": p.to_name}],
            "subject": p.subject,
            "textContent": p.text,
        }
        if p.html:
            version["htmlContent"] = p.html
        body["messageVersions"].append(version)
    return body


class BrevoConnection(HttpConnection):
    provider = "Brevo"

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | TransportError]:
        response = await self.post("/v3/smtp/email", json_data=email_json(messages))
        if response.status_code not in (200, 201, 202):
            raise call_error(self.provider, response)
        body = json_body(self.provider, response)
        ids = body.get("messageIds") or ([body["messageId"]] if body.get("messageId") else [])
        if len(ids) != len(messages):
            ids = [None] * len(messages)
        return [SendResult(201, "accepted", mid) for mid in ids]


class BrevoTransport(HttpTransport):
    name = "brevo"
    batch_size = BATCH

    def new_connection(self) -> BrevoConnection:
        s = self.settings
        key = secret(s.brevo_api_key, "MAILSHOT_BREVO_API_KEY", "Brevo")
        return BrevoConnection(s.brevo_url, s.esp_timeout, headers={"api-key": key, "accept": "application/json"})
