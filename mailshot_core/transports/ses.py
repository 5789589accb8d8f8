"""Amazon SES v2: ``POST /v2/email/outbound-emails`` (SendEmail) with the message as ``Raw`` content,
signed with AWS Signature Version 4 (no boto3: one request type, ~30 lines of signing).

Why Raw, one message per call, and not SendBulkEmail: the bulk form only takes a template stored at
SES and fills it with per-recipient data, so our own rendering and MIME (List-Unsubscribe-Post,
List-Id, VERP-free ids...) would have to be rebuilt as an SES template per sending.  SES counts and
prices messages, not calls, and its rate limit is in messages per second, so batching saves only
round trips, which the parallel keep-alive connections (MAILSHOT_ESP_CONNECTIONS) absorb.  SES thus
goes through the per-message path: at most one message per connection in doubt after a crash.

Correlation: ``EmailTags`` mailshot_id / recipient_id, returned as ``mail.tags`` in every event of the
configuration set (MAILSHOT_SES_CONFIGURATION_SET), whose event destination is an SNS topic posting
to ``/webhooks/ses``.  The SES ``MessageId`` is stored as the recipient's message id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from mailshot_core.transports.base import (
    ConfigurationError,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TemporaryError,
    Throttled,
    TransportError,
)
from mailshot_core.transports.http import HttpConnection, HttpTransport, call_error, excerpt, json_body, secret

SEND_PATH = "/v2/email/outbound-emails"
# SES error types (x-amzn-ErrorType / __type) that are about this message, our pace or our account.
_REJECTED = {"MessageRejected"}
_THROTTLED = {"TooManyRequestsException", "LimitExceededException", "ThrottlingException"}


def sigv4_headers(
    method: str,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    access_key: str,
    secret_key: str,
    region: str,
    service: str,
    now: datetime,
) -> dict[str, str]:
    """The headers that sign a request with AWS Signature Version 4 (host, x-amz-date, Authorization)."""
    parts = urlsplit(url)
    amz_date = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    signed = {k.lower(): " ".join(v.split()) for k, v in headers.items()}
    signed["host"] = parts.netloc
    signed["x-amz-date"] = amz_date
    names = sorted(signed)
    query = "&".join(
        sorted(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
            for k, _, v in (p.partition("=") for p in parts.query.split("&") if p)
        )
    )
    canonical = "\n".join(
        [
            method,
            quote(parts.path or "/", safe="/-_.~"),
            query,
            "".join(f"{n}:{signed[n]}\n" for n in names),
            ";".join(names),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret_key}".encode()
    for piece in (day, region, service, "aws4_request"):
        key = hmac.new(key, piece.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {
        "host": parts.netloc,
        "x-amz-date": amz_date,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}",
    }


def request_json(message: OutgoingMessage, configuration_set: str | None) -> dict[str, Any]:
    mailshot_id = message.parts.mailshot_id if message.parts else _header_value(message.data, b"X-Mailshot-Id")
    body: dict[str, Any] = {
        "Destination": {"ToAddresses": [message.envelope_to]},
        "Content": {"Raw": {"Data": base64.b64encode(message.data).decode()}},
        "EmailTags": [
            {"Name": "mailshot_id", "Value": str(mailshot_id)},
            {"Name": "recipient_id", "Value": str(message.recipient_id)},
        ],
    }
    if configuration_set:
        body["ConfigurationSetName"] = configuration_set
    return body


def _header_value(data: bytes, name: bytes) -> str:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(name.lower() + b":"):
            return line.split(b":", 1)[1].strip().decode()
    return "0"


class SesConnection(HttpConnection):
    provider = "Amazon SES"

    def __init__(
        self,
        base_url: str,
        timeout: float,
        *,
        access_key: str,
        secret_key: str,
        region: str,
        configuration_set: str | None,
    ) -> None:
        super().__init__(base_url, timeout)
        self.base_url = base_url.rstrip("/")
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        self.configuration_set = configuration_set

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | TransportError]:
        return [await self._send_one(m) for m in messages]

    async def _send_one(self, message: OutgoingMessage) -> SendResult | TransportError:
        import json

        body = json.dumps(request_json(message, self.configuration_set)).encode()
        headers = {"Content-Type": "application/json"}
        headers.update(
            sigv4_headers(
                "POST",
                self.base_url + SEND_PATH,
                body,
                headers,
                access_key=self.access_key,
                secret_key=self.secret_key,
                region=self.region,
                service="ses",
                now=datetime.now(UTC),
            )
        )
        response = await self.post(SEND_PATH, content=body, headers=headers)
        if response.status_code == 200:
            return SendResult(200, "accepted", str(json_body(self.provider, response).get("MessageId") or "") or None)
        kind = (response.headers.get("x-amzn-ErrorType") or "").split(":", 1)[0]
        if not kind:
            try:
                kind = str(response.json().get("__type", "")).rsplit("#", 1)[-1]
            except ValueError:
                kind = ""
        text = f"{kind or 'error'}: {excerpt(response)}"
        if kind in _REJECTED:
            return PermanentError(f"SES rejected the message: {text}", response.status_code)
        if kind in _THROTTLED or response.status_code == 429:
            raise Throttled(f"SES: {text}", response.status_code)
        if response.status_code >= 500:
            raise TemporaryError(f"SES: {text}", response.status_code)
        if response.status_code in (401, 403):
            raise ConfigurationError(
                f"SES refused our credentials (HTTP {response.status_code}): {text}", response.status_code
            )
        if response.status_code in (400, 404):
            # Unverified sender, unknown configuration set, account paused: the operator must act.
            raise ConfigurationError(f"SES refused the call: {text}", response.status_code)
        raise call_error(self.provider, response)


class SesTransport(HttpTransport):
    name = "ses"
    batch_size = 1  # per-message path: see the module docstring

    def new_connection(self) -> SesConnection:
        s = self.settings
        return SesConnection(
            s.ses_url or f"https://email.{s.ses_region}.amazonaws.com",
            s.esp_timeout,
            access_key=secret(s.ses_access_key_id, "MAILSHOT_SES_ACCESS_KEY_ID", "Amazon SES"),
            secret_key=secret(s.ses_secret_access_key, "MAILSHOT_SES_SECRET_ACCESS_KEY", "Amazon SES"),
            region=s.ses_region,
            configuration_set=s.ses_configuration_set,
        )
