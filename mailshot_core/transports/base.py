"""The transport interface and its error hierarchy.

Every way of handing a message over (SMTP relay, ESP API) implements
:class:`Transport`.  Failures are classified where they are understood, in the
transport, into the three outcomes the send pipeline acts on (DESIGN §4.3):

- :class:`TemporaryError`: 4xx reply, dropped connection, timeout.  The recipient is
  retried after the rest of the sending; its try counter grows.
- :class:`Throttled`: the relay asks us to slow down.  The pace drops, the recipient
  is retried soon, and the attempt does not count towards ``MAILSHOT_MAX_TRY``.
- :class:`PermanentError`: 5xx for this recipient.  Recorded as a bounce, not retried.
- :class:`ConfigurationError`: authentication or configuration.  The sending is
  paused with the message; no recipient's try is consumed.
- :class:`TransportUnavailable`: the relay cannot be reached at all.  The whole batch
  is retried later (Prefect task retries); no try is consumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# A transport's input is what content/ builds; named here too, for the transports that take it.
from mailshot_core.content.message import MessageParts as MessageParts
from mailshot_core.content.message import OutgoingMessage as OutgoingMessage


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the transport answered when it accepted a message."""

    code: int
    text: str
    transport_id: str | None = None


class TransportError(Exception):
    def __init__(self, text: str, code: int | None = None) -> None:
        super().__init__(f"{code} {text}" if code else text)
        self.code = code
        self.text = text


class TemporaryError(TransportError):
    """Try this recipient again later."""


class Throttled(TemporaryError):
    """The relay asks us to slow down (421, 4.7.x, greylisting, "too many"...): our pace, not the
    recipient's fault, so the attempt does not count towards MAILSHOT_MAX_TRY."""

    def __init__(self, text: str, code: int | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(text, code)
        self.retry_after = retry_after  # seconds the server asked us to wait (HTTP Retry-After), if it said


class PermanentError(TransportError):
    """This recipient cannot receive this message (5xx)."""

    @property
    def is_policy_block(self) -> bool:
        """5.7.x: a sender-side block (reputation, policy), not the subscriber's fault."""
        return " 5.7." in f" {self.text}"


class ConfigurationError(TransportError):
    """Credentials or settings are wrong: stop and tell the operator."""


class TransportUnavailable(TemporaryError):
    """Cannot reach the transport at all: the batch is retried as a whole."""


class Connection(Protocol):
    """One channel to the transport (an SMTP session, an HTTP client), used by one sender at a time."""

    async def send(self, message: OutgoingMessage, *, then: OutgoingMessage | None = None) -> SendResult:
        """Hand ``message`` over.  ``then`` is the message this connection sends next, when known: a
        transport may prepare it early (SMTP pipelines its envelope), never hand over its content."""
        ...

    async def withdraw(self) -> None:
        """The ``then`` of the last :meth:`send` will not be sent after all."""
        ...

    async def close(self) -> None: ...


class Transport(Protocol):
    """A factory of connections; the pipeline opens ``parallelism`` of them per batch."""

    name: str
    parallelism: int

    async def connect(self) -> Connection: ...


class BatchConnection(Protocol):
    """A channel to an API that takes many messages per call (ESPs).

    ``send_many`` returns one item per message, in order: the acceptance, or the error for that
    recipient alone.  A failure of the whole call raises instead (429 -> Throttled honouring
    Retry-After, 5xx/timeout -> TemporaryError, 401/403 -> ConfigurationError).
    """

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | TransportError]: ...

    async def close(self) -> None: ...


class BatchTransport(Protocol):
    """A transport whose connections send ``batch_size`` messages per call."""

    name: str
    parallelism: int
    batch_size: int

    async def connect(self) -> BatchConnection: ...


def batch_size_of(transport: object) -> int:
    """Messages per call: 1 (the per-message path) unless the transport batches."""
    return int(getattr(transport, "batch_size", 1))
