"""SparkPost Transmissions API: ``POST /api/v1/transmissions``, header ``Authorization: <API key>``
(no "Bearer"), many recipients per transmission (reference/email-standards.md §2.3).

Each recipient's rendered subject, bodies and per-recipient headers travel as its
``substitution_data``; the shared content is made of triple-brace placeholders (``{{{x}}}``: inserted
without HTML escaping, SparkPost's template language), so SparkPost sends exactly our rendering.
Correlation: transmission ``metadata`` {mailshot_id} + recipient ``metadata`` {recipient_id}, merged by
SparkPost into ``rcpt_meta`` in every event; ``campaign_id`` groups the sending.

SparkPost answers only counts (accepted / rejected) per transmission; a recipient it refuses at
injection (suppression list) comes back as a ``policy_rejection`` event through the webhook.
"""

from __future__ import annotations

import logging
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
)

log = logging.getLogger("mailshot.transports.sparkpost")

# SparkPost advises 2,000-10,000 recipients per call for big mailings and at most 50 MB per payload;
# every recipient here carries its whole rendered HTML, so fewer keep a call well under that.
BATCH = 500


def transmission_json(messages: Sequence[OutgoingMessage]) -> dict[str, Any]:
    first = parts_of(messages[0])
    header_names = sorted({name for m in messages for name in parts_of(m).headers})
    content: dict[str, Any] = {
        "from": {"email": first.from_email, "name": first.from_name},
        "subject": "{{{ms_subject}}}",
        "html": "{{{ms_html}}}",
        "text": "{{{ms_text}}}",
        "headers": {name: f"{{{{{{ms_h{i}}}}}}}" for i, name in enumerate(header_names)},
    }
    if first.reply_to:
        content["reply_to"] = first.reply_to
    recipients = []
    for m in messages:
        p = parts_of(m)
        data = {"ms_subject": p.subject, "ms_html": p.html, "ms_text": p.text}
        data.update({f"ms_h{i}": p.headers.get(name, "") for i, name in enumerate(header_names)})
        recipients.append(
            {
                "address": {"email": p.to_email, "name": p.to_name},
                "metadata": {"recipient_id": str(m.recipient_id)},
                "substitution_data": data,
            }
        )
    body: dict[str, Any] = {
        "options": {"open_tracking": True, "click_tracking": True, "transactional": False},
        "metadata": {"mailshot_id": str(first.mailshot_id)},
        "content": content,
        "recipients": recipients,
    }
    if not first.test:
        body["campaign_id"] = campaign(first)
    return body


class SparkPostConnection(HttpConnection):
    provider = "SparkPost"

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | TransportError]:
        response = await self.post("/api/v1/transmissions", json_data=transmission_json(messages))
        if response.status_code != 200:
            raise call_error(self.provider, response)
        results = json_body(self.provider, response).get("results") or {}
        rejected = int(results.get("total_rejected_recipients") or 0)
        if rejected:
            log.warning(
                "SparkPost refused %d recipient(s) of transmission %s at injection", rejected, results.get("id")
            )
        text = f"accepted in transmission {results.get('id')}"
        return [SendResult(200, text) for _ in messages]


class SparkPostTransport(HttpTransport):
    name = "sparkpost"
    batch_size = BATCH

    def new_connection(self) -> SparkPostConnection:
        s = self.settings
        key = secret(s.sparkpost_api_key, "MAILSHOT_SPARKPOST_API_KEY", "SparkPost")
        return SparkPostConnection(s.sparkpost_url, s.esp_timeout, headers={"Authorization": key})
