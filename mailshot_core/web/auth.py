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

import base64
import binascii
import hashlib
import hmac
import re
import threading
from collections.abc import Callable, Mapping
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

Fetch = Callable[[str], bytes]


def check_sns_url(url: str, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not _SNS_CERT_HOST.match(parts.hostname or ""):
        raise Forbidden(f"SNS {what} is not an https://sns.<region>.amazonaws.com URL: {url!r}")


def sns_string_to_sign(message: Mapping[str, Any]) -> bytes:
    kind = message.get("Type")
    fields = _SIGNED_FIELDS.get(str(kind))
    if fields is None:
        raise Forbidden(f"SNS message of unknown Type {kind!r}")
    lines = []
    for name in fields:
        if name in message and message[name] is not None:  # Subject only when present
            lines.append(f"{name}\n{message[name]}\n")
    return "".join(lines).encode()


class SnsVerifier:
    """Verifies SNS message signatures; certificates are fetched once per URL and cached."""

    def __init__(self, topic_arns: set[str], fetch: Fetch) -> None:
        self.topic_arns = topic_arns
        self.fetch = fetch
        self._certs: dict[str, rsa.RSAPublicKey] = {}
        self._lock = threading.Lock()

    def _key(self, url: str) -> rsa.RSAPublicKey:
        with self._lock:
            key = self._certs.get(url)
        if key is None:
            check_sns_url(url, "SigningCertURL")
            try:
                cert = x509.load_pem_x509_certificate(self.fetch(url))
            except ValueError:
                raise Forbidden("SNS signing certificate is not a PEM certificate") from None
            public = cert.public_key()
            if not isinstance(public, rsa.RSAPublicKey):
                raise Forbidden("SNS signing certificate does not hold an RSA key")
            key = public
            with self._lock:
                self._certs[url] = key
        return key

    def check(self, message: Mapping[str, Any], header_type: str | None) -> None:
        if not self.topic_arns:
            raise Forbidden("SES webhook is not configured (set MAILSHOT_SES_TOPIC_ARNS)")
        if message.get("TopicArn") not in self.topic_arns:
            raise Forbidden(f"SNS topic {message.get('TopicArn')!r} is not one of MAILSHOT_SES_TOPIC_ARNS")
        if header_type is not None and header_type != message.get("Type"):
            raise Forbidden("x-amz-sns-message-type does not match the message's Type")
        version = str(message.get("SignatureVersion"))
        algorithm: hashes.HashAlgorithm = hashes.SHA256() if version == "2" else hashes.SHA1()
        if version not in ("1", "2"):
            raise Forbidden(f"SNS SignatureVersion {version!r} is not supported")
        try:
            signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
        except binascii.Error:
            raise Forbidden("SNS Signature is not base64") from None
        key = self._key(str(message.get("SigningCertURL", "")))
        try:
            key.verify(signature, sns_string_to_sign(message), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise Forbidden("SNS message signature does not verify") from None


def https_get(url: str) -> bytes:
    """The real fetcher: certificates and subscription confirmations, over verified HTTPS."""
    import httpx

    response = httpx.get(url, timeout=10.0)
    response.raise_for_status()
    return response.content
