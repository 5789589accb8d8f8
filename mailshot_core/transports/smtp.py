"""SMTP transport on aiosmtplib: one session per connection, reused for many messages.

Replies are classified here (RFC 5321 §4.2.1, RFC 3463): 4xx and dropped
connections are temporary, 5xx at RCPT or end of DATA permanent for the recipient,
530/535 and 5xx at MAIL FROM (the relay refuses *our* sender) are configuration
errors that pause the sending.  A 421 closes the session; the next message opens
a new one.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass

import aiosmtplib

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


class SmtpConnection:
    """One SMTP session; reconnects lazily after the relay closed it."""

    def __init__(self, config: SmtpConfig) -> None:
        self._config = config
        self._client: aiosmtplib.SMTP | None = None

    async def open(self) -> None:
        cfg = self._config
        context = None
        if cfg.tls is not SmtpTls.NONE and not cfg.validate_certs:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        client = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            timeout=cfg.timeout,
            use_tls=cfg.tls is SmtpTls.TLS,
            # aiosmtplib upgrades opportunistically when start_tls is None: "none" must mean none.
            start_tls=cfg.tls is SmtpTls.STARTTLS,
            validate_certs=cfg.validate_certs,
            tls_context=context,
        )
        try:
            await client.connect()
        except aiosmtplib.SMTPConnectResponseError as exc:
            raise TransportUnavailable(f"relay {cfg.host}:{cfg.port} refused the session: {exc}") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TransportUnavailable(f"cannot connect to relay {cfg.host}:{cfg.port}: {exc}") from None
        if cfg.user:
            try:
                await client.login(cfg.user, cfg.password or "")
            except aiosmtplib.SMTPAuthenticationError as exc:
                await _quietly_close(client)
                raise ConfigurationError(
                    f"SMTP authentication failed for user {cfg.user!r} on {cfg.host}:{cfg.port}: "
                    f"{exc.code} {exc.message}",
                    exc.code,
                ) from None
            except aiosmtplib.SMTPException as exc:
                await _quietly_close(client)
                raise ConfigurationError(f"SMTP login impossible on {cfg.host}:{cfg.port}: {exc}") from None
        self._client = client

    async def send(self, message: OutgoingMessage) -> SendResult:
        if self._client is None or not self._client.is_connected:
            await self.open()
        client = self._client
        assert client is not None
        try:
            errors, reply = await client.sendmail(message.envelope_from, [message.envelope_to], message.data)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            raise _classify(refused.code, refused.message, "RCPT TO") from None
        except aiosmtplib.SMTPSenderRefused as exc:
            raise _classify(exc.code, exc.message, "MAIL FROM") from None
        except aiosmtplib.SMTPDataError as exc:
            raise _classify(exc.code, exc.message, "DATA") from None
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421:
                await _quietly_close(client)
            raise _classify(exc.code, exc.message, "SMTP") from None
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            await _quietly_close(client)
            raise TemporaryError(f"connection lost: {exc}") from None
        if errors:  # only possible with several recipients; kept for completeness
            code, text = next(iter(errors.values()))
            raise _classify(code, text, "RCPT TO")
        return SendResult(code=250, text=reply)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError):
                    client.close()


async def _quietly_close(client: aiosmtplib.SMTP) -> None:
    client.close()


class SmtpTransport:
    name = "smtp"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self.parallelism = config.connections

    async def connect(self) -> SmtpConnection:
        conn = SmtpConnection(self.config)
        await conn.open()
        return conn
