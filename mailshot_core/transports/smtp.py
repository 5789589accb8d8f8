"""SMTP transport: one session per connection, reused for many messages (smtp_session.py).

Replies are classified here (RFC 5321 §4.2.1, RFC 3463): 4xx and dropped
connections are temporary, 5xx at RCPT or end of DATA permanent for the recipient,
530/535 and 5xx at MAIL FROM (the relay refuses *our* sender) are configuration
errors that pause the sending.  A 421 closes the session; the next message opens
a new one.
"""

from __future__ import annotations

import functools
import re
import ssl
from dataclasses import dataclass

from mailshot_core.config import Settings, SmtpTls
from mailshot_core.transports.base import (
    ConfigurationError,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TemporaryError,
    Throttled,
    TransportUnavailable,
)
from mailshot_core.transports.smtp_session import SmtpDisconnected, SmtpReplyError, SmtpSession

# Replies meaning "you are not allowed to send": 530 auth required, 534/535/538 auth failures.
_AUTH_CODES = frozenset({530, 534, 535, 538})

# "Slow down" replies: 421 closes the session (RFC 5321 §3.8); enhanced codes 4.7.x (policy: rate
# limits, greylisting), 4.3.2 (system not accepting messages), 4.4.5 (congestion), 4.5.3 (too many
# recipients); 454 (temporary TLS/auth unavailability).  Plus the words big providers use in their
# rate-limit replies.  A 4.2.2 "mailbox full" or a bare 451 4.3.0 stays a per-recipient failure.
_THROTTLE_STATUS = re.compile(r"\b4\.(7\.\d{1,3}|3\.2|4\.5|5\.3)\b")
_THROTTLE_WORDS = re.compile(r"rate.?limit|too many|throttl|slow down|greylist|graylist|busy", re.IGNORECASE)


def is_throttling(code: int, text: str) -> bool:
    return code in (421, 454) or bool(_THROTTLE_STATUS.search(text) or _THROTTLE_WORDS.search(text))


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    tls: SmtpTls = SmtpTls.NONE
    user: str | None = None
    password: str | None = None
    timeout: float = 30.0
    validate_certs: bool = True
    connections: int = 4

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpConfig:
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            tls=settings.smtp_tls,
            user=settings.smtp_user or None,
            password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
            timeout=settings.smtp_timeout,
            validate_certs=settings.smtp_validate_certs,
            connections=settings.smtp_connections,
        )


def _classify(code: int, text: str, stage: str) -> Exception:
    if code in _AUTH_CODES:
        return ConfigurationError(f"the relay refused us at {stage}: {text}", code)
    if 400 <= code < 500:
        return Throttled(text, code) if is_throttling(code, text) else TemporaryError(text, code)
    if stage == "MAIL FROM" and code >= 500:
        return ConfigurationError(f"the relay refuses the sender address: {text}", code)
    if code >= 500:
        return PermanentError(text, code)
    return TemporaryError(f"unexpected reply at {stage}: {text}", code)


@functools.cache
def _tls_context(validate_certs: bool) -> ssl.SSLContext:
    """One TLS context per process and policy: loading the system's CA store costs ~50 ms."""
    context = ssl.create_default_context()
    if not validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class SmtpConnection:
    """One SMTP session; reconnects lazily after the relay closed it."""

    def __init__(self, config: SmtpConfig) -> None:
        self._config = config
        self._session: SmtpSession | None = None

    async def open(self) -> None:
        cfg = self._config
        where = f"{cfg.host}:{cfg.port}"
        try:
            self._session = await SmtpSession.open(
                cfg.host,
                cfg.port,
                timeout=cfg.timeout,
                implicit_tls=cfg.tls is SmtpTls.TLS,
                starttls=cfg.tls is SmtpTls.STARTTLS,
                tls_context=_tls_context(cfg.validate_certs) if cfg.tls is not SmtpTls.NONE else None,
                login=(cfg.user, cfg.password or "") if cfg.user else None,
            )
        except ssl.SSLError as exc:
            raise ConfigurationError(
                f"TLS with relay {where} failed: {exc.reason or exc} "
                "(a self-signed certificate needs MAILSHOT_SMTP_VALIDATE_CERTS=false)"
            ) from None
        except SmtpReplyError as exc:
            if exc.stage == "AUTH":
                raise ConfigurationError(
                    f"SMTP authentication failed for user {cfg.user!r} on {where}: {exc.reply}", exc.reply.code
                ) from None
            if exc.stage == "STARTTLS":
                raise ConfigurationError(f"STARTTLS impossible on {where}: {exc.reply}", exc.reply.code) from None
            raise TransportUnavailable(f"relay {where} refused the session at {exc.stage}: {exc.reply}") from None
        except (OSError, TimeoutError, SmtpDisconnected) as exc:
            raise TransportUnavailable(f"cannot connect to relay {where}: {exc or type(exc).__name__}") from None

    async def send(self, message: OutgoingMessage, *, then: OutgoingMessage | None = None) -> SendResult:
        envelope = (message.envelope_from, message.envelope_to)
        if self._session is not None and not self._session.is_open and self._session.announced == envelope:
            # The relay hung up after this message's envelope went out ahead of its data.  What it
            # answered first (a 421 "slow down", a refused RCPT) must not be lost by reconnecting:
            # the backoff and the recipient's fate depend on it.  No reply: the content never left,
            # send it afresh on a new session.
            try:
                await self._session.send(*envelope, message.data, dot_safe=message.dot_safe)
            except SmtpReplyError as exc:
                raise _classify(exc.reply.code, exc.reply.text, exc.stage) from None
            except SmtpDisconnected:
                pass
        if self._session is None or not self._session.is_open:
            await self.open()
        session = self._session
        assert session is not None
        following = (then.envelope_from, then.envelope_to) if then is not None else None
        try:
            reply = await session.send(
                message.envelope_from, message.envelope_to, message.data, then=following, dot_safe=message.dot_safe
            )
        except SmtpReplyError as exc:
            raise _classify(exc.reply.code, exc.reply.text, exc.stage) from None
        except (SmtpDisconnected, OSError) as exc:
            session.abort()
            raise TemporaryError(f"connection lost: {exc}") from None
        return SendResult(code=reply.code, text=reply.text)

    async def withdraw(self) -> None:
        if self._session is not None:
            self._session.withdraw()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.quit()


class SmtpTransport:
    name = "smtp"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self.parallelism = config.connections

    async def connect(self) -> SmtpConnection:
        conn = SmtpConnection(self.config)
        await conn.open()
        return conn
