"""What every ESP transport shares: one httpx client per connection (kept alive), and the
classification of a whole call's failure (DESIGN §4.3, issue 4):

- 429 -> :class:`Throttled`, honouring ``Retry-After`` (seconds or an HTTP date);
- 5xx, 408 and timeouts -> :class:`TemporaryError` (the recipients are retried, tries grow);
- cannot connect at all -> :class:`TransportUnavailable` (the batch is retried, no try consumed);
- 401/403 -> :class:`ConfigurationError` (bad credentials: the sending pauses);
- any other 4xx -> :class:`ConfigurationError`: the request itself is wrong for this account (sender
  not verified, malformed field), which retrying cannot fix, so the operator is told.

Per-recipient rejections inside a successful call are each provider's own business (its module).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from mailshot_core.config import Settings
from mailshot_core.transports.base import (
    ConfigurationError,
    MessageParts,
    OutgoingMessage,
    SendResult,
    TemporaryError,
    Throttled,
    TransportError,
    TransportUnavailable,
)
from mailshot_core.transports.parts import parts_from_mime

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
# Longest error body quoted in a message: enough for the provider's explanation, not a whole page.
EXCERPT = 300


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110 §10.2.3: delay-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def excerpt(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:EXCERPT] + ("..." if len(text) > EXCERPT else "")


def call_error(provider: str, response: httpx.Response) -> TransportError:
    """The error of a whole call that did not succeed (see the module docstring)."""
    status = response.status_code
    body = excerpt(response)
    if status == 429:
        return Throttled(
            f"{provider} rate limit: {body}", status, retry_after=retry_after(response.headers.get("Retry-After"))
        )
    if status >= 500 or status == 408:
        return TemporaryError(f"{provider} server error: {body}", status)
    if status in (401, 403):
        return ConfigurationError(f"{provider} refused our credentials (HTTP {status}): {body}", status)
    return ConfigurationError(f"{provider} rejected the request (HTTP {status}): {body}", status)


def json_body(provider: str, response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TemporaryError(
            f"{provider} answered HTTP {response.status_code} with a body that is not JSON: {excerpt(response)}"
        ) from None


def parts_of(message: OutgoingMessage) -> MessageParts:
    return message.parts if message.parts is not None else parts_from_mime(message)


class HttpConnection:
    """One keep-alive HTTP client to a provider's API; ``send`` is ``send_many`` of one message."""

    provider = "ESP"

    def __init__(
        self,
        base_url: str,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            headers=dict(headers or {}),
            auth=auth,
            # httpx writes a request's headers and body separately: without TCP_NODELAY the body can
            # wait for the server's delayed ACK of the headers (Nagle), up to ~40 ms per call.
            transport=httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1), socket_options=NODELAY
            ),
        )

    async def post(
        self,
        path: str,
        *,
        content: bytes | None = None,
        json_data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        try:
            if json_data is not None:
                content = json.dumps(json_data, ensure_ascii=False).encode()
                headers = {"Content-Type": "application/json", **(headers or {})}
            return await self.client.post(path, content=content, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise TransportUnavailable(f"cannot reach {self.provider} at {self.client.base_url}: {exc}") from None
        except httpx.TimeoutException as exc:
            # The request may have been accepted: retried like an SMTP timeout after DATA.
            raise TemporaryError(f"{self.provider} did not answer in time: {exc!r}") from None
        except httpx.HTTPError as exc:
            raise TemporaryError(f"{self.provider} connection failed: {exc!r}") from None

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | TransportError]:
        raise NotImplementedError

    async def send(self, message: OutgoingMessage, *, then: OutgoingMessage | None = None) -> SendResult:
        # ``then`` is ignored: an HTTP API has nothing to prepare ahead (no envelope to pipeline).
        (reply,) = await self.send_many([message])
        if isinstance(reply, TransportError):
            raise reply
        return reply

    async def withdraw(self) -> None:
        """Nothing of a next message is ever on the wire early over HTTP: nothing to take back."""

    async def close(self) -> None:
        await self.client.aclose()


def shared_headers(messages: Sequence[OutgoingMessage]) -> dict[str, str]:
    """The headers every message of a call has with the same value: all an API without per-recipient
    headers (Mandrill, Brevo) can carry."""
    first = parts_of(messages[0]).headers
    return {
        name: value
        for name, value in first.items()
        if all(parts_of(m).headers.get(name) == value for m in messages[1:])
    }


def campaign(parts: MessageParts) -> str:
    """The provider-side campaign/tag of a sending: what groups its statistics."""
    return f"mailshot-{parts.mailshot_id}"


class HttpTransport:
    """A factory of connections of one provider (the pipeline opens ``parallelism`` of them)."""

    name = "esp"
    batch_size = 1

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.parallelism = settings.esp_connections

    def new_connection(self) -> HttpConnection:
        raise NotImplementedError

    async def connect(self) -> HttpConnection:
        # Credentials are checked here, inside the send loop, so a missing one pauses the sending
        # with its variable's name.  httpx connects lazily: an unreachable API shows at the first
        # call (TransportUnavailable).
        return self.new_connection()


def secret(value: Any, variable: str, provider: str) -> str:
    """A credential from the settings, or a configuration error naming the variable to set."""
    if value is None:
        raise ConfigurationError(f"{variable} is not set: the {provider} transport needs it")
    raw = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    if not raw:
        raise ConfigurationError(f"{variable} is empty: the {provider} transport needs it")
    return str(raw)
