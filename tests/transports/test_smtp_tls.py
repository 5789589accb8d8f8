"""SMTP transport security: STARTTLS, implicit TLS and AUTH over TLS against a real aiosmtpd server."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from certs import self_signed
from helpers import free_port
from mailshot_core.config import SmtpTls
from mailshot_core.transports.base import ConfigurationError, OutgoingMessage, TransportUnavailable
from mailshot_core.transports.smtp import SmtpConfig, SmtpTransport


class _Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bool]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.rcpt_tos[0], session.ssl is not None))
        return "250 OK"


def _auth(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = data.login == b"user" and data.password == b"secret"
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path, "localhost")


@pytest.fixture
def starttls_server(certs: tuple[Path, Path]) -> Iterator[tuple[int, _Sink]]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*certs)
    sink = _Sink()
    port = free_port()
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=port,
        tls_context=ctx,
        require_starttls=True,
        authenticator=_auth,
        auth_require_tls=True,
        server_hostname="localhost",
    )
    controller.start()
    yield port, sink
    controller.stop()


@pytest.fixture
def tls_server(certs: tuple[Path, Path]) -> Iterator[tuple[int, _Sink]]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*certs)
    sink = _Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port, ssl_context=ctx, server_hostname="localhost")
    controller.start()
    yield port, sink
    controller.stop()


def _send(config: SmtpConfig, n: int = 3) -> None:
    async def go() -> None:
        conn = await SmtpTransport(config).connect()
        try:
            for i in range(n):
                data = f"Subject: t{i}\r\n\r\nhello\r\n".encode()
                await conn.send(OutgoingMessage(i, "news@example.org", f"r{i}@example.org", data, f"<{i}@x>"))
        finally:
            await conn.close()

    asyncio.run(go())


def test_starttls_with_auth(starttls_server: tuple[int, _Sink]) -> None:
    """MAILSHOT_SMTP_TLS=starttls upgrades the session before AUTH and sends every message encrypted."""
    port, sink = starttls_server
    _send(SmtpConfig("127.0.0.1", port, SmtpTls.STARTTLS, "user", "secret", validate_certs=False))
    assert sink.messages == [(f"r{i}@example.org", True) for i in range(3)]


def test_starttls_wrong_password_is_a_configuration_error(starttls_server: tuple[int, _Sink]) -> None:
    """Bad credentials over STARTTLS surface as ConfigurationError (the sending pauses, no try burnt)."""
    port, _ = starttls_server
    with pytest.raises(ConfigurationError, match="authentication failed"):
        _send(SmtpConfig("127.0.0.1", port, SmtpTls.STARTTLS, "user", "wrong", validate_certs=False))


def test_plain_session_refused_by_a_starttls_only_relay(starttls_server: tuple[int, _Sink]) -> None:
    """Without TLS, a relay that requires STARTTLS refuses us: reported as a configuration error."""
    port, sink = starttls_server
    with pytest.raises(ConfigurationError):
        _send(SmtpConfig("127.0.0.1", port, SmtpTls.NONE, "user", "secret"))
    assert sink.messages == []


def test_certificate_is_verified_by_default(starttls_server: tuple[int, _Sink]) -> None:
    """A self-signed certificate is refused unless MAILSHOT_SMTP_VALIDATE_CERTS=false."""
    port, sink = starttls_server
    with pytest.raises((TransportUnavailable, ConfigurationError)):
        _send(SmtpConfig("127.0.0.1", port, SmtpTls.STARTTLS, "user", "secret"))
    assert sink.messages == []


def test_implicit_tls(tls_server: tuple[int, _Sink]) -> None:
    """MAILSHOT_SMTP_TLS=tls speaks TLS from the first byte (port 465 style); plain SMTP cannot talk to it."""
    port, sink = tls_server
    _send(SmtpConfig("127.0.0.1", port, SmtpTls.TLS, validate_certs=False))
    assert [rcpt for rcpt, _ in sink.messages] == [f"r{i}@example.org" for i in range(3)]
    with pytest.raises(TransportUnavailable):
        _send(SmtpConfig("127.0.0.1", port, SmtpTls.NONE, timeout=2))
