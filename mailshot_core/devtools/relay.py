"""A real local SMTP relay for the demo and for fault-injection tests.

Mailshot's delivery guarantees (per-recipient ledger, exactly-once claims, retry on 4xx, give up on
5xx) can only be trusted if they are exercised against a real SMTP conversation, not a mock of one.
This module wraps :mod:`aiosmtpd` in a small relay that

* accepts mail on ``127.0.0.1`` (port 0 = any free port) in a background thread, so synchronous
  tests and the ``make demo`` target can both use it;
* writes every accepted message to ``<out_dir>/<n>.eml`` (atomically, so a reader never sees a
  half-written file) and/or keeps it in memory for assertions;
* injects faults declared per recipient through a :class:`FaultPlan` (temporary and permanent
  RCPT replies, 421 with hang-up, a reply at end of DATA, a connection dropped mid-DATA);
* optionally requires AUTH (PLAIN/LOGIN over plain loopback TCP) and slows down end-of-DATA.

A message is recorded as received if and only if the relay is about to answer ``250`` at the end of
DATA on a live connection.  Faulted messages, dropped connections and clients that disappear while
the relay is sleeping (``delay``) are never recorded, so ``relay.messages`` is exactly the set of
messages whose sender was (or would have been) told "accepted".

aiosmtpd is an optional (test) dependency; importing this module requires it.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Final, NoReturn, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailshot_core.devtools.faults import ACCEPT, FaultPlan, Outcome

__all__ = [
    "DevRelay",
    "FaultPlan",
    "Outcome",
    "ReceivedMessage",
    "main",
]

DEFAULT_HOST: Final = "127.0.0.1"
# Sent in the 220 banner. Given explicitly because aiosmtpd would otherwise call socket.getfqdn() for
# every connection, which can block on DNS in sandboxes and CI.
SERVER_HOSTNAME: Final = "mailshot-devrelay.localhost"
# How long a hung-up session waits for asyncio to deliver connection_lost() before giving up on it.
_HANGUP_GRACE_S: Final = 5.0

_EML_RE: Final = re.compile(r"^(\d+)\.eml$")

# --------------------------------------------------------------------------------------------------
# Received messages
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A message the relay accepted with 250; ``path`` is its ``.eml`` file when ``out_dir`` is set."""

    envelope_from: str
    rcpt_tos: list[str]
    data: bytes
    received_at: datetime
    path: Path | None = field(default=None)


# --------------------------------------------------------------------------------------------------
# aiosmtpd handler
# --------------------------------------------------------------------------------------------------


class _Handler:
    """aiosmtpd hook object: applies the fault plan, enforces AUTH and records accepted messages."""

    def __init__(self, relay: DevRelay) -> None:
        self._relay = relay
        # Data-phase faults collected at RCPT time, per SMTP transaction.  Keyed weakly on the
        # envelope because aiosmtpd replaces the envelope on RSET / after DATA, which then discards
        # the pending faults of an abandoned transaction automatically.
        self._pending: weakref.WeakKeyDictionary[Envelope, list[Outcome]] = weakref.WeakKeyDictionary()

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self._relay.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        """Refuse MAIL FROM before AUTH when credentials are configured.

        Done here rather than with aiosmtpd's ``auth_required=True`` because that flag emits a
        security warning on every connection when combined with ``auth_require_tls=False``, and a
        plain-TCP loopback relay is exactly what the tests need.
        """
        if self._relay.auth is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        """Consume one fault-plan step for this recipient and answer accordingly."""
        faults = self._relay.faults
        outcome = faults.next_outcome(address) if faults is not None else ACCEPT
        if outcome.kind == "rcpt":
            assert outcome.reply is not None
            if outcome.code == 421:
                await _reply_and_hang_up(server, outcome.reply)
            return outcome.reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        if outcome.kind != "ok":
            self._pending.setdefault(envelope, []).append(outcome)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Apply the delay and any data-phase fault, else record the message and accept it.

        The message is recorded only after the delay: a client that vanishes meanwhile cancels this
        coroutine (aiosmtpd cancels the session task on EOF), so it is never counted as received.
        """
        if self._relay.delay > 0:
            await asyncio.sleep(self._relay.delay)
        pending = self._pending.pop(envelope, [])
        # The DATA reply covers the whole transaction, so the first faulted recipient decides it.
        fault = pending[0] if pending else None
        if fault is not None and fault.kind == "drop-data":
            await _hang_up(server)
        if fault is not None:
            assert fault.reply is not None
            if fault.code == 421:
                await _reply_and_hang_up(server, fault.reply)
            return fault.reply
        content = envelope.original_content
        if content is None:  # decode_data=False is always used, but keep mypy and readers honest
            content = envelope.content if isinstance(envelope.content, bytes) else b""
        self._relay._record(envelope.mail_from or "", list(envelope.rcpt_tos), content)
        return "250 2.0.0 OK: queued"


def _make_authenticator(credentials: tuple[str, str]) -> Any:
    """Build an aiosmtpd ``authenticator`` accepting exactly one login/password pair.

    Failures return ``handled=False`` so aiosmtpd itself sends ``535 5.7.8``; with the default
    ``handled=True`` it would send nothing and the client would hang.
    """
    login = credentials[0].encode()
    password = credentials[1].encode()

    def authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and hmac.compare_digest(auth_data.login, login)
            and hmac.compare_digest(auth_data.password, password)
        )
        if ok:
            return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)

    return authenticator


async def _reply_and_hang_up(server: SMTP, reply: str) -> NoReturn:
    """Send ``reply`` then close the connection (RFC 5321 §3.8: a 421 reply ends the session)."""
    await server.push(reply)
    await _hang_up(server)


async def _hang_up(server: SMTP) -> NoReturn:
    """Close the TCP connection and never return normally.

    Closing makes asyncio call ``connection_lost``, which cancels the session task we are running
    in; that cancellation is what guarantees aiosmtpd never writes the pending reply (e.g. a 250).
    """
    transport = server.transport
    if transport is not None:
        transport.close()
    await asyncio.sleep(_HANGUP_GRACE_S)
    raise ConnectionResetError("devrelay hung up on the client")


class _DropLoginDataDeprecation(logging.Filter):
    """Hide aiosmtpd 1.4's "Session.login_data is deprecated" warning.

    aiosmtpd itself sets the deprecated attribute after every successful AUTH, so the warning is
    noise we cannot act on; it would otherwise show up in every authenticated test and demo run.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


_LOGIN_DATA_FILTER: Final = _DropLoginDataDeprecation()


class _Controller(Controller):
    """aiosmtpd Controller that supports port 0.

    The stock controller probes ``(hostname, port)`` after binding to make sure the server answers;
    with port 0 that probe would go to port 0, so read the real port from the bound socket first.
    """

    def _trigger_server(self) -> None:
        if self.port == 0 and isinstance(self.server, asyncio.Server):
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]

    def factory(self) -> SMTP:
        return _CountingSMTP(self.handler, **self.SMTP_kwargs)


class _CountingSMTP(SMTP):
    """aiosmtpd's server protocol, counting open sessions (tests check connection caps with it)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.event_handler._relay._session_change(+1)

    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self.event_handler._relay._session_change(-1)


# --------------------------------------------------------------------------------------------------
# Relay
# --------------------------------------------------------------------------------------------------


class DevRelay:
    """A local SMTP relay on a background thread; use ``with DevRelay(...) as relay:``.

    ``out_dir``: write each accepted message to ``<out_dir>/<n>.eml`` (n continues after the highest
    number already there, so re-running the demo never overwrites earlier output).
    ``keep_in_memory``: keep :class:`ReceivedMessage` objects in ``relay.messages``; the CLI turns
    this off so a long-running relay does not grow without bound.
    ``faults``: a :class:`FaultPlan`; ``auth``: ``(login, password)`` to require AUTH PLAIN/LOGIN;
    ``delay``: seconds to sleep before answering end of DATA, to widen the window crash tests hit.

    ``pipelining``: advertise PIPELINING (RFC 2920) like production relays do, so clients send
    MAIL, RCPT and DATA in one write (aiosmtpd reads pipelined commands one by one anyway); False
    makes clients wait for each reply.
    """

    def __init__(
        self,
        out_dir: Path | str | None = None,
        *,
        keep_in_memory: bool = True,
        faults: FaultPlan | None = None,
        auth: tuple[str, str] | None = None,
        delay: float = 0.0,
        host: str = DEFAULT_HOST,
        port: int = 0,
        pipelining: bool = True,
    ) -> None:
        if delay < 0:
            raise ValueError("delay must be >= 0")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.keep_in_memory = keep_in_memory
        self.faults = faults
        self.auth = auth
        self.delay = delay
        self.pipelining = pipelining
        self.host = host
        self._requested_port = port
        self._bound_port: int | None = None
        self._controller: _Controller | None = None
        self._cond = threading.Condition()
        self._messages: list[ReceivedMessage] = []
        self._received = 0
        self._open_sessions = 0
        self._peak_sessions = 0
        self._sessions_opened = 0
        self._next_n = 1

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port; only meaningful after ``start()`` when port 0 was requested."""
        if self._bound_port is not None:
            return self._bound_port
        if self._requested_port == 0:
            raise RuntimeError("DevRelay.port is unknown until start() binds a free port")
        return self._requested_port

    @property
    def running(self) -> bool:
        """Whether the relay currently accepts connections."""
        return self._controller is not None

    def start(self) -> None:
        """Bind and start serving in a background thread; returns once the server answers."""
        if self._controller is not None:
            raise RuntimeError("DevRelay already started")
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._next_n = _next_free_number(self.out_dir)
        kwargs: dict[str, Any] = {}
        if self.auth is not None:
            logging.getLogger("mail.log").addFilter(_LOGIN_DATA_FILTER)  # no-op when already added
            kwargs["auth_require_tls"] = False
            kwargs["authenticator"] = _make_authenticator(self.auth)
        # A new Controller per start(): aiosmtpd closes the controller's event loop on stop().
        controller = _Controller(
            _Handler(self),
            hostname=self.host,
            port=self._requested_port,
            server_hostname=SERVER_HOSTNAME,
            decode_data=False,
            **kwargs,
        )
        controller.start()
        self._controller = controller
        self._bound_port = int(controller.port)

    def stop(self) -> None:
        """Stop serving and join the thread; open client connections are cut.  Idempotent."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- sessions ------------------------------------------------------------------------------

    def _session_change(self, delta: int) -> None:
        with self._cond:
            self._open_sessions += delta
            self._peak_sessions = max(self._peak_sessions, self._open_sessions)
            self._sessions_opened += max(delta, 0)

    @property
    def peak_sessions(self) -> int:
        """The most SMTP sessions that were open at the same time."""
        with self._cond:
            return self._peak_sessions

    @property
    def sessions_opened(self) -> int:
        """How many SMTP sessions were opened in all (a sender reusing its connections opens few)."""
        with self._cond:
            return self._sessions_opened

    # -- received messages ---------------------------------------------------------------------

    @property
    def messages(self) -> list[ReceivedMessage]:
        """A snapshot copy of the messages accepted so far (empty if ``keep_in_memory`` is off)."""
        with self._cond:
            return list(self._messages)

    @property
    def received_count(self) -> int:
        """How many messages were accepted, counted even when ``keep_in_memory`` is off."""
        with self._cond:
            return self._received

    def wait_for(self, count: int, timeout: float = 5.0) -> int:
        """Block until at least ``count`` messages were accepted or ``timeout`` passes.

        Returns the number received, so callers can assert on it; avoids sleep-polling in tests that
        drive the sender from another thread or process.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._received >= count, timeout=timeout)
            return self._received

    def _record(self, envelope_from: str, rcpt_tos: list[str], data: bytes) -> ReceivedMessage:
        """Persist and remember one accepted message (called from the relay thread)."""
        with self._cond:
            path = None
            if self.out_dir is not None:
                path = self.out_dir / f"{self._next_n}.eml"
                _atomic_write(path, data)
                self._next_n += 1
            msg = ReceivedMessage(envelope_from, rcpt_tos, data, datetime.now(UTC), path)
            self._received += 1
            if self.keep_in_memory:
                self._messages.append(msg)
            self._cond.notify_all()
            return msg


def _next_free_number(out_dir: Path) -> int:
    """First ``n`` above every existing ``<n>.eml`` in ``out_dir``."""
    numbers = [int(m.group(1)) for p in out_dir.iterdir() if (m := _EML_RE.match(p.name))]
    return max(numbers, default=0) + 1


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory + rename, so readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _parse_auth(value: str) -> tuple[str, str]:
    login, sep, password = value.partition(":")
    if not sep or not login:
        raise argparse.ArgumentTypeError("expected LOGIN:PASSWORD")
    return login, password


def main(argv: Sequence[str] | None = None) -> int:
    """Run the relay in the foreground until SIGTERM/SIGINT (used by ``make demo``)."""
    parser = argparse.ArgumentParser(
        prog="python -m mailshot_core.devtools.relay",
        description="Local SMTP relay that writes every accepted message to <out-dir>/<n>.eml.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=1025, help="port to bind, 0 = any free port")
    parser.add_argument("--out-dir", type=Path, default=Path("demo-out"), help="where .eml files go")
    parser.add_argument("--pidfile", type=Path, help="write our PID here once listening; removed on exit")
    parser.add_argument("--auth", type=_parse_auth, metavar="LOGIN:PASSWORD", help="require SMTP AUTH")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering DATA")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    relay = DevRelay(
        args.out_dir, keep_in_memory=False, auth=args.auth, delay=args.delay, host=args.host, port=args.port
    )
    relay.start()
    pidfile: Path | None = args.pidfile
    try:
        if pidfile is not None:
            pidfile.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(pidfile, f"{os.getpid()}\n".encode())
        print(f"relay listening on {relay.host}:{relay.port}, writing to {args.out_dir}", flush=True)
        # Wait with a timeout so signal handlers get a chance to run promptly on every platform.
        while not stop.wait(0.5):
            pass
    finally:
        relay.stop()
        if pidfile is not None:
            pidfile.unlink(missing_ok=True)
        print(f"relay stopped after {relay.received_count} message(s)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
