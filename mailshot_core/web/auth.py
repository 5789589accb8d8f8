"""Webhook authentication, per provider (reference/email-standards.md §2.2-2.8).

- Mailjet, SparkPost, Brevo sign nothing: they are given a URL with credentials, checked here as
  Basic auth (the password), a bearer token, or ``?token=``, against MAILSHOT_<PROVIDER>_WEBHOOK_SECRET.
- Mandrill: ``X-Mandrill-Signature`` = base64(HMAC-SHA1(key, URL + each POST field name and value,
  sorted by name)), the URL being exactly the one registered at Mandrill.
- SES: the SNS message signature (RSA over the canonical string of the message's fields, with the
  certificate SNS names, fetched over HTTPS from an ``sns.<region>.amazonaws.com`` host only), and
  the topic must be one of MAILSHOT_SES_TOPIC_ARNS.

Every comparison is constant-time (``hmac.compare_digest``).  A provider whose secret is not set
accepts nothing (secure by default).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


class Forbidden(Exception):
    """The request is not from the provider (or we cannot tell): 403, nothing stored."""


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def check_shared_secret(secret: str | None, provider: str, authorization: str | None, token: str | None) -> None:
    """Basic auth (any user, the secret as password), ``Bearer <secret>``, or ``?token=<secret>``."""
    if not secret:
        raise Forbidden(f"{provider} webhook is not configured (set MAILSHOT_{provider.upper()}_WEBHOOK_SECRET)")
    if token is not None and _same(token, secret):
        return
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise Forbidden(f"{provider} webhook: unreadable Basic credentials") from None
        if _same(password, secret):
            return
    elif scheme.lower() == "bearer" and _same(value.strip(), secret):
        return
    raise Forbidden(f"{provider} webhook: missing or wrong credentials")


def mandrill_signature(key: str, url: str, form: Mapping[str, str]) -> str:
    signed = url + "".join(name + form[name] for name in sorted(form))
    return base64.b64encode(hmac.new(key.encode(), signed.encode(), hashlib.sha1).digest()).decode()


def check_mandrill(key: str | None, url: str, form: Mapping[str, str], signature: str | None) -> None:
    if not key:
        raise Forbidden("Mandrill webhook is not configured (set MAILSHOT_MANDRILL_WEBHOOK_KEY)")
    if not signature or not _same(signature, mandrill_signature(key, url, form)):
        raise Forbidden(f"Mandrill webhook: bad X-Mandrill-Signature (signed URL: {url})")


# --- SNS ----------------------------------------------------------------------------------------------

# Only certificates served by SNS itself (aws docs "Verifying the signatures of Amazon SNS messages").
_SNS_CERT_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}

# Outbound GETs (SNS certificates, subscription confirmations), awaited on the event loop with a
# deadline: a slow or dead certificate host must never hold the web app's other requests.
Fetch = Callable[[str], Awaitable[bytes]]
FETCH_TIMEOUT = 5.0  # seconds for one outbound GET, connection included


class FetchError(Exception):
    """An outbound GET failed (unreachable, HTTP error, too slow); the message says which and why."""


async def fetch_with_deadline(fetch: Fetch, url: str, timeout: float) -> bytes:
    """``fetch(url)`` within ``timeout`` seconds; FetchError otherwise (the coroutine is cancelled)."""
    try:
        return await asyncio.wait_for(fetch(url), timeout)
    except TimeoutError:
        raise FetchError(f"GET {url}: no answer within {timeout:g} s") from None


def check_sns_url(url: str, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not _SNS_CERT_HOST.match(parts.hostname or ""):
        raise Forbidden(f"SNS {what} is not an https://sns.<region>.amazonaws.com URL: {url[:200]!r}")


def sns_string_to_sign(message: Mapping[str, Any]) -> bytes:
    kind = message.get("Type")
    fields = _SIGNED_FIELDS.get(str(kind))
    if fields is None:
        raise Forbidden(f"SNS message of unknown Type {str(kind)[:40]!r}")
    lines = []
    for name in fields:
        if name in message and message[name] is not None:  # Subject only when present
            lines.append(f"{name}\n{message[name]}\n")
    return "".join(lines).encode("utf-8", "surrogatepass")  # a forged lone surrogate just fails to verify


@dataclass(frozen=True)
class SnsSignature:
    """What a message's signature check needs, read and checked without any network access."""

    certificate_url: str
    signature: bytes
    algorithm: hashes.HashAlgorithm


class SnsVerifier:
    """Verifies SNS message signatures; certificates are fetched once per URL (asynchronously, with a
    deadline: a failed or slow fetch is a 403, never a blocked event loop nor a 500) and cached."""

    def __init__(self, topic_arns: set[str], fetch: Fetch, timeout: float = FETCH_TIMEOUT) -> None:
        self.topic_arns = topic_arns
        self.fetch = fetch
        self.timeout = timeout
        self._certs: dict[str, rsa.RSAPublicKey] = {}

    def precheck(self, message: Mapping[str, Any], header_type: str | None) -> SnsSignature:
        """Everything but the signature itself: topic, type, version, certificate URL (cheap, before
        any fetch, so a foreign message never makes us fetch anything)."""
        if not self.topic_arns:
            raise Forbidden("SES webhook is not configured (set MAILSHOT_SES_TOPIC_ARNS)")
        topic = message.get("TopicArn")
        if not isinstance(topic, str) or topic not in self.topic_arns:
            raise Forbidden(f"SNS topic {str(topic)[:200]!r} is not one of MAILSHOT_SES_TOPIC_ARNS")
        if header_type is not None and header_type != message.get("Type"):
            raise Forbidden("x-amz-sns-message-type does not match the message's Type")
        version = str(message.get("SignatureVersion"))
        if version not in ("1", "2"):
            raise Forbidden(f"SNS SignatureVersion {version[:20]!r} is not supported")
        try:
            signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
        except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
            raise Forbidden("SNS Signature is not base64") from None
        url = str(message.get("SigningCertURL", ""))
        check_sns_url(url, "SigningCertURL")
        return SnsSignature(url, signature, hashes.SHA256() if version == "2" else hashes.SHA1())

    async def key(self, url: str) -> rsa.RSAPublicKey:
        key = self._certs.get(url)
        if key is not None:
            return key
        check_sns_url(url, "SigningCertURL")
        try:
            pem = await fetch_with_deadline(self.fetch, url, self.timeout)
        except FetchError as exc:
            raise Forbidden(f"SNS signing certificate unavailable, so the message cannot be checked: {exc}") from None
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise Forbidden("SNS signing certificate is not a PEM certificate") from None
        public = cert.public_key()
        if not isinstance(public, rsa.RSAPublicKey):
            raise Forbidden("SNS signing certificate does not hold an RSA key")
        self._certs[url] = public  # only the event loop's thread writes the cache
        return public

    @staticmethod
    def verify(message: Mapping[str, Any], signed: SnsSignature, key: rsa.RSAPublicKey) -> None:
        try:
            key.verify(signed.signature, sns_string_to_sign(message), padding.PKCS1v15(), signed.algorithm)
        except InvalidSignature:
            raise Forbidden("SNS message signature does not verify") from None


async def https_get(url: str) -> bytes:
    """The real fetcher: certificates and subscription confirmations, over verified HTTPS (the caller
    bounds the whole call with :func:`fetch_with_deadline`; httpx's own timeout bounds each step)."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT) as client:
            response = await client.get(url)
            response.raise_for_status()
            return response.content
    except httpx.HTTPError as exc:
        raise FetchError(f"GET {url}: {type(exc).__name__}: {exc}") from None
