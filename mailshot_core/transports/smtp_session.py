"""A small asyncio SMTP client made for bulk sending: one session, many messages, PIPELINING.

Why not a general-purpose client: measured on this project's machine (bench/RESULTS.md), the
client library used first cost more CPU per message than rendering and bookkeeping together.  It
has no PIPELINING (RFC 2920), so each message took four write/read round trips (MAIL, RCPT, DATA,
body), it dot-stuffed and re-normalised line endings of every 10 KB body with regular expressions,
and re-parsed addresses we had already validated.  Here a message costs two writes and two reads:
``MAIL FROM`` + ``RCPT TO`` + ``DATA`` in one write (when the relay offers PIPELINING), then the
body, dot-stuffed with one ``bytes.replace`` because message.py already produces CRLF lines.

Scope: what a newsletter sender needs from a relay: EHLO, STARTTLS or implicit TLS, AUTH PLAIN or
LOGIN, one envelope recipient per message, RSET after a refused transaction, QUIT.  Replies are
returned raw (:class:`Reply`); deciding what a code means for the recipient is the transport's job
(smtp.py).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import socket
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import Final, cast

# A reply line longer than this is not SMTP (RFC 5321 §4.5.3.1.5 allows 512 octets per reply line).
_MAX_PENDING: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class SmtpReplyError(Exception):
    """The relay answered a command with an error reply (what it means is for the caller to decide)."""

    def __init__(self, stage: str, reply: Reply) -> None:
        super().__init__(f"{stage}: {reply}")
        self.stage = stage
        self.reply = reply


class SmtpDisconnected(Exception):
    """The session ended under us: connection closed or reset, timeout, or garbage instead of a reply."""


@functools.cache
def local_hostname() -> str:
    """The name we give in EHLO (computed once: it can involve a DNS lookup)."""
    name = socket.getfqdn()
    return name if name and "." in name else "localhost"


class _ReplyReader(asyncio.Protocol):
    """Collects complete (possibly multi-line) replies as they arrive; several may be pipelined."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._pending = bytearray()
        self._lines: list[str] = []
        self._replies: deque[Reply] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.closed: BaseException | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._waiting_since: float | None = None
        self._timeout = 0.0
        self._timed_out = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport's interface without inheriting from it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        pending = self._pending
        pending += data
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            line = bytes(pending[start:end]).rstrip(b"\r")
            start = end + 1
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                self._fail(SmtpDisconnected(f"the relay sent something that is not an SMTP reply: {line[:80]!r}"))
                return
            self._lines.append(line[4:].decode("utf-8", "replace"))
            if line[3:4] != b"-":
                self._replies.append(Reply(int(line[:3]), "\n".join(self._lines)))
                self._lines = []
        del pending[:start]
        if len(pending) > _MAX_PENDING:
            self._fail(SmtpDisconnected("the relay sent an overlong reply line"))
            return
        if self._replies:
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_watchdog()
        if self.closed is None:  # keep the first reason (ours, when we aborted on garbage)
            self.closed = exc or ConnectionResetError("the relay closed the connection")
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self.closed = exc
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self, count: int, timeout: float) -> list[Reply]:
        """The next ``count`` replies, or fewer when the connection ended first (a relay may answer
        421 to a pipelined command and hang up: the caller wants that 421, not just "closed").

        Raises TimeoutError when the relay stays silent for ``timeout`` seconds.
        """
        if len(self._replies) < count and self.closed is None:
            loop = asyncio.get_running_loop()
            self._waiting_since, self._timeout = loop.time(), timeout
            if self._watchdog is None:
                self._watchdog = loop.call_later(timeout, self._check_timeout)
            try:
                while len(self._replies) < count and self.closed is None and not self._timed_out:
                    self._waiter = loop.create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
            finally:
                self._waiting_since = None
            if self._timed_out:
                raise TimeoutError
        return [self._replies.popleft() for _ in range(min(count, len(self._replies)))]

    def _check_timeout(self) -> None:
        """One timer per session, re-armed for what is left of the current wait: a timer per read
        (``asyncio.timeout``) cost ~6 % of a message's CPU."""
        self._watchdog = None
        if self._waiting_since is None:
            return  # idle: the next read arms it again
        loop = asyncio.get_running_loop()
        remaining = self._waiting_since + self._timeout - loop.time()
        if remaining > 0:
            self._watchdog = loop.call_later(remaining, self._check_timeout)
        else:
            self._timed_out = True
            self._wake()

    def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None


def _envelope_commands(sender: str, recipient: str) -> tuple[bytes, bytes, bytes]:
    return f"MAIL FROM:<{sender}>\r\n".encode(), f"RCPT TO:<{recipient}>\r\n".encode(), b"DATA\r\n"


def _envelope(sender: str, recipient: str) -> bytes:
    return b"".join(_envelope_commands(sender, recipient))


def _stuffed(data: bytes, *, dot_safe: bool = False) -> list[bytes]:
    """The message as DATA content, in pieces for one write: transparency dots (RFC 5321 §4.5.2) and
    the final ``.``.

    ``data`` uses CRLF line ends (message.py builds it so).  ``dot_safe``: no line starts with '.'
    (message.py's messages), so there is nothing to search for.
    """
    if not dot_safe:
        if data.startswith(b"."):
            data = b"." + data
        data = data.replace(b"\r\n.", b"\r\n..")
    return [data, b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"]


@dataclass
class SmtpSession:
    """One open SMTP session.  Not safe for concurrent use: one sender at a time."""

    host: str
    port: int
    timeout: float
    _reader: _ReplyReader
    extensions: dict[str, str] = field(default_factory=dict)
    _announced: tuple[str, str] | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        timeout: float,
        implicit_tls: bool = False,
        starttls: bool = False,
        tls_context: ssl.SSLContext | None = None,
        login: tuple[str, str] | None = None,
    ) -> SmtpSession:
        """Connect, read the greeting, EHLO, upgrade to TLS and log in as asked.

        Raises OSError / ssl.SSLError / TimeoutError when the relay cannot be reached or the TLS
        handshake fails, :class:`SmtpReplyError` when it refuses a step (greeting, EHLO, STARTTLS,
        AUTH), :class:`SmtpDisconnected` when it hangs up.
        """
        loop = asyncio.get_running_loop()
        context = tls_context or (ssl.create_default_context() if implicit_tls or starttls else None)
        async with asyncio.timeout(timeout):
            _, reader = await loop.create_connection(
                _ReplyReader,
                host,
                port,
                ssl=context if implicit_tls else None,
                server_hostname=host if implicit_tls else None,
            )
        session = cls(host, port, timeout, reader)
        try:
            await session._expect("greeting", 220)
            await session._ehlo()
            if starttls:
                if "starttls" not in session.extensions:
                    raise SmtpReplyError("STARTTLS", Reply(502, "the relay does not offer STARTTLS"))
                await session._command("STARTTLS", b"STARTTLS\r\n", 220)
                assert reader.transport is not None and context is not None
                async with asyncio.timeout(timeout):
                    upgraded = await loop.start_tls(reader.transport, reader, context, server_hostname=host)
                assert upgraded is not None
                reader.transport = upgraded
                await session._ehlo()
            if login is not None:
                await session._login(*login)
        except BaseException:
            session.abort()
            raise
        return session

    @property
    def is_open(self) -> bool:
        return self._reader.closed is None

    @property
    def pipelining(self) -> bool:
        return "pipelining" in self.extensions

    async def send(
        self, sender: str, recipient: str, data: bytes, *, then: tuple[str, str] | None = None, dot_safe: bool = False
    ) -> Reply:
        """One message to one recipient; the relay's final reply when it accepted it.

        ``dot_safe``: no line of ``data`` starts with '.' (OutgoingMessage.dot_safe), no dot-stuffing needed.

        ``then``: the envelope (sender, recipient) of the message to send next on this session, when
        known.  With PIPELINING its ``MAIL``/``RCPT``/``DATA`` go out in the same write as this
        message's data (RFC 2920 §3.1), and the next :meth:`send` for that envelope only reads their
        replies: one write and one read per message instead of two.  Only commands go out early,
        never content.  If that next message is not going to be sent after all, call :meth:`withdraw`.

        Raises :class:`SmtpReplyError` (stage ``MAIL FROM``, ``RCPT TO`` or ``DATA``) when the relay
        refused it, after resetting the transaction so the session stays usable, and
        :class:`SmtpDisconnected` when the session ended.
        """
        if self._announced is not None and self._announced != (sender, recipient):
            raise RuntimeError("send() of another message than the one announced: withdraw() it first")
        if self._announced is not None:
            self._announced = None
            replies = await self._read(3)
        elif self.pipelining:
            self._write(_envelope(sender, recipient))
            replies = await self._read(3)
        else:
            replies = []
            for command, expected in zip(_envelope_commands(sender, recipient), (250, 250, 354), strict=True):
                self._write(command)
                replies += await self._read(1)
                if replies[-1].code != expected:
                    break
        for stage, reply, expected in zip(("MAIL FROM", "RCPT TO", "DATA"), replies, (250, 250, 354), strict=False):
            if reply.code != expected and not (expected == 250 and reply.ok):
                await self._abandon(data_accepted=len(replies) == 3 and replies[2].code == 354)
                raise SmtpReplyError(stage, reply)
        if len(replies) < 3:
            raise SmtpDisconnected(f"connection lost: {self._reader.closed}")
        payload = _stuffed(data, dot_safe=dot_safe)
        if then is not None and self.pipelining:
            payload.append(_envelope(*then))
            self._announced = then
        self._write(b"".join(payload))  # one copy of the 10 KB, one write
        (final,) = await self._read(1)
        if not final.ok:
            raise SmtpReplyError("DATA", final)
        return final

    @property
    def announced(self) -> tuple[str, str] | None:
        """The envelope sent ahead with the last message's data, whose replies are still unread."""
        return self._announced

    def withdraw(self) -> None:
        """The announced next message will not be sent: end the session (the relay may be waiting for
        its data already, and a lone '.' would send an empty message), so nothing is delivered."""
        if self._announced is not None:
            self._announced = None
            self.abort()

    async def quit(self) -> None:
        """Say goodbye politely, then close (never raises: the session is over either way)."""
        try:
            if self.is_open and self._announced is None:  # else the relay reads QUIT as message data
                self._write(b"QUIT\r\n")
                await self._reader.read(1, min(self.timeout, 5.0))
        except (SmtpDisconnected, OSError, TimeoutError):
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        self._reader.stop_watchdog()
        if self._reader.transport is not None:
            self._reader.transport.abort()
        if self._reader.closed is None:
            self._reader.closed = ConnectionAbortedError("closed by us")

    # --- internals ----------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._reader.closed is not None or self._reader.transport is None:
            raise SmtpDisconnected(f"connection lost: {self._reader.closed}")
        self._reader.transport.write(data)

    async def _read(self, count: int) -> list[Reply]:
        """``count`` replies; fewer only when the relay hung up right after an error reply (a 421
        before closing is its explanation, which the caller wants rather than "connection lost")."""
        try:
            replies = await self._reader.read(count, self.timeout)
        except TimeoutError:
            self.abort()
            raise SmtpDisconnected(f"no reply from the relay within {self.timeout:g} s") from None
        if any(r.code == 421 for r in replies):
            self.abort()  # 421: the relay is closing the session (RFC 5321 §3.8)
        if len(replies) < count and (not replies or replies[-1].ok):
            raise SmtpDisconnected(f"connection lost: {self._reader.closed}")
        return replies

    async def _command(self, stage: str, line: bytes, expected: int) -> Reply:
        self._write(line)
        return await self._expect(stage, expected)

    async def _expect(self, stage: str, expected: int) -> Reply:
        (reply,) = await self._read(1)
        if reply.code != expected:
            raise SmtpReplyError(stage, reply)
        return reply

    async def _ehlo(self) -> None:
        reply = await self._command("EHLO", f"EHLO {local_hostname()}\r\n".encode(), 250)
        self.extensions = {}
        for line in reply.text.split("\n")[1:]:
            keyword, _, params = line.strip().partition(" ")
            self.extensions[keyword.lower()] = params

    async def _login(self, user: str, password: str) -> None:
        mechanisms = self.extensions.get("auth", "").upper().split()
        if "PLAIN" in mechanisms:
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            await self._command("AUTH", f"AUTH PLAIN {token}\r\n".encode(), 235)
        elif "LOGIN" in mechanisms:
            await self._command("AUTH", b"AUTH LOGIN\r\n", 334)
            await self._command("AUTH", base64.b64encode(user.encode()) + b"\r\n", 334)
            await self._command("AUTH", base64.b64encode(password.encode()) + b"\r\n", 235)
        else:
            offered = " ".join(mechanisms) or "none"
            raise SmtpReplyError("AUTH", Reply(504, f"the relay offers no AUTH PLAIN or LOGIN (offered: {offered})"))

    async def _abandon(self, *, data_accepted: bool) -> None:
        """End a refused transaction so the next message starts clean (RFC 2920 §3.1, RFC 5321 §4.1.1.5)."""
        if not self.is_open:
            return
        if data_accepted:  # DATA was accepted although every RCPT failed: send an empty message, ignored
            self._write(b".\r\n")
            await self._read(1)
        self._write(b"RSET\r\n")
        await self._read(1)
