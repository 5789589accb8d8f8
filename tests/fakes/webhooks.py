"""The web app served by uvicorn on a free loopback port, and the providers' webhook requests:
their documented sample payloads with our correlation fields, posted the way each provider posts
(Basic auth, Mandrill's signed form, SNS's signed JSON); and a site that sent (``sent_site``) for the
webhook tests to post about.
"""

from __future__ import annotations

import base64
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from conftest import engine_for, make_settings
from helpers import create, drive, seed
from mailshot_core.config import Settings
from mailshot_core.devtools.relay import DevRelay
from mailshot_core.feedback.applier import Applier
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import FeedbackEvent, Recipient
from mailshot_core.transports.http import NODELAY
from mailshot_core.web import server
from mailshot_core.web.app import create_app
from mailshot_core.web.auth import FETCH_TIMEOUT, Fetch, mandrill_signature, sns_string_to_sign
from mailshot_core.web.context import RunStarter

SECRET = "hook-secret"
MANDRILL_KEY = "mandrill-hook-key"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:mailshot-events"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"


def free_socket() -> socket.socket:
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only for sockets that say
    # they are TCP; with proto 0 every response waited ~40 ms for a delayed ACK (measured).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def webhook_settings(port: int) -> dict[str, Any]:
    return {
        "mailjet_webhook_secret": SECRET,
        "sparkpost_webhook_secret": SECRET,
        "brevo_webhook_secret": SECRET,
        "mandrill_webhook_key": MANDRILL_KEY,
        "mandrill_webhook_url": f"http://127.0.0.1:{port}/webhooks/mandrill",
        "ses_topic_arns": TOPIC,
    }


class SnsSigner:
    """Stands in for SNS: a key pair and a self-signed certificate served at CERT_URL (a third party)."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(1)
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.pem = cert.public_bytes(serialization.Encoding.PEM)
        self.fetched: list[str] = []

    async def fetch(self, url: str) -> bytes:
        """What https_get would get from AWS (certificates, subscription confirmations)."""
        self.fetched.append(url)
        return self.pem if url == CERT_URL else b"<ConfirmSubscriptionResponse/>"

    def sign(self, message: dict[str, Any]) -> dict[str, Any]:
        message = {**message, "SignatureVersion": "2", "SigningCertURL": CERT_URL}
        signature = self.key.sign(sns_string_to_sign(message), padding.PKCS1v15(), hashes.SHA256())
        message["Signature"] = base64.b64encode(signature).decode()
        return message


class WebServer:
    """``create_app(settings)`` under uvicorn in a thread, configured as ``mailshot web`` runs it
    (web/server.py: proxy headers, access log)."""

    def __init__(
        self,
        settings: Settings,
        sock: socket.socket,
        signer: SnsSigner | None = None,
        fetch: Fetch | None = None,
        log_level: str = "warning",
        fetch_timeout: float = FETCH_TIMEOUT,
        start_run: RunStarter | None = None,
    ) -> None:
        self.sock = sock
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        fetch = fetch or (signer.fetch if signer is not None else None)
        app = create_app(settings, fetch=fetch, fetch_timeout=fetch_timeout, start_run=start_run)
        self.applier: Applier = app.state.mailshot.applier
        self.server = uvicorn.Server(server.config(app, settings, log_level=log_level, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.client = self.client_for(self.url)

    @staticmethod
    def client_for(url: str) -> httpx.Client:
        """An HTTP client of the server (one per thread: httpx clients are not shared across threads)."""
        return httpx.Client(base_url=url, timeout=30, transport=httpx.HTTPTransport(socket_options=NODELAY))

    def __enter__(self) -> WebServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def settle(self) -> None:
        """Wait until the events posted so far went through the app's on-arrival applier."""
        assert self.applier.wait_idle(60), "the feedback applier did not finish"

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)


# --- the providers' requests ------------------------------------------------------------------------

_ids = itertools.count(92356927693813856)


def basic(secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"mailshot:{secret}".encode()).decode()}


def mailjet_event(kind: str, email: str, mid: int, rid: int, **extra: Any) -> dict[str, Any]:
    """Mailjet event API fields (dev.mailjet.com "Event API"), our ids in CustomID and Payload."""
    return {
        "event": kind,
        "time": 1433333949,
        "MessageID": 19421777835146490,
        "Message_GUID": "1ab23cd4-e567-8901-2345-6789f0gh1i2j",
        "email": email,
        "mj_campaign_id": 7257,
        "mj_contact_id": 4,
        "customcampaign": f"mailshot-{mid}",
        "CustomID": f"m{mid}-r{rid}",
        "Payload": json.dumps({"m": mid, "r": rid}),
        **extra,
    }


_SPARKPOST_CLASS = {
    "open": "track_event",
    "initial_open": "track_event",
    "click": "track_event",
    "amp_open": "track_event",
    "amp_initial_open": "track_event",
    "amp_click": "track_event",
    "generation_failure": "gen_event",
    "generation_rejection": "gen_event",
    "list_unsubscribe": "unsubscribe_event",
    "link_unsubscribe": "unsubscribe_event",
}


def sparkpost_event(kind: str, email: str, mid: int, rid: int, **extra: Any) -> dict[str, Any]:
    """SparkPost webhook event (developers.sparkpost.com "Webhooks event types" samples)."""
    event = {
        "type": kind,
        "event_id": str(next(_ids)),
        "campaign_id": f"mailshot-{mid}",
        "customer_id": "1",
        "message_id": "0e0d94b7-9085-4e3c-ab30-e3f2cd9c273e",
        "rcpt_meta": {"mailshot_id": str(mid), "recipient_id": str(rid)},
        "rcpt_tags": [],
        "rcpt_to": email,
        "raw_rcpt_to": email,
        "timestamp": "1454442600",
        "transmission_id": "65832150921904138",
        **extra,
    }
    return {"msys": {_SPARKPOST_CLASS.get(kind, "message_event"): event}}


def mandrill_event(kind: str, email: str, mid: int, rid: int, **extra: Any) -> dict[str, Any]:
    """Mandrill webhook event (mailchimp.com/developer/transactional/docs/webhooks sample)."""
    n = next(_ids)
    return {
        "event": kind,
        "_id": f"example{n}",
        "ts": 1700000000 + n % 1000,
        "msg": {
            "ts": 1365109999,
            "subject": "This an example webhook message",
            "email": email,
            "sender": "news@example.org",
            "tags": [f"mailshot-{mid}"],
            "state": "sent",
            "metadata": {"mailshot_id": str(mid), "recipient_id": str(rid)},
            "_id": f"example{n}",
        },
        **extra,
    }


def brevo_event(kind: str, email: str, mid: int, rid: int, **extra: Any) -> dict[str, Any]:
    """Brevo transactional webhook (developers.brevo.com "Transactional webhooks" sample)."""
    n = next(_ids)
    return {
        "event": kind,
        "email": email,
        "id": 123456,
        "date": "2020-10-09 00:00:00",
        "ts": 1604933619,
        "message-id": f"<{n}.5787683@smtp-relay.mailin.fr>",
        "ts_event": 1604933654 + n % 1000,
        "subject": "Hello",
        "X-Mailin-custom": f"mailshot_id:{mid}",
        "tags": [f"mailshot-{mid}"],
        **extra,
    }


def ses_record(kind: str, email: str, mid: int, rid: int, **extra: Any) -> dict[str, Any]:
    """An SES event-publishing record (docs.aws.amazon.com/ses "event-publishing-retrieving-sns-contents")."""
    return {
        "eventType": kind,
        "mail": {
            "timestamp": "2017-08-05T00:40:02.012Z",
            "source": "News <news@example.org>",
            "sendingAccountId": "123456789012",
            "messageId": "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000",
            "destination": [email],
            "headersTruncated": False,
            "tags": {"ses:configuration-set": ["mailshot"], "mailshot_id": [str(mid)], "recipient_id": [str(rid)]},
        },
        **extra,
    }


def sns_notification(signer: SnsSigner, record: dict[str, Any], topic: str = TOPIC) -> dict[str, Any]:
    return signer.sign(
        {
            "Type": "Notification",
            "MessageId": f"22b80b92-fdea-4c2c-8f9d-{next(_ids)}",
            "TopicArn": topic,
            "Message": json.dumps(record),
            "Timestamp": "2012-05-02T00:54:06.655Z",
            "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe",
        }
    )


def post(web: WebServer, provider: str, events: list[dict[str, Any]], signer: SnsSigner) -> list[httpx.Response]:
    """Post events the way the provider does (one request, or one per SNS notification)."""
    c = web.client
    if provider == "mandrill":
        form = {"mandrill_events": json.dumps(events)}
        sig = mandrill_signature(MANDRILL_KEY, f"{web.url}/webhooks/mandrill", form)
        return [
            c.post(
                "/webhooks/mandrill",
                content=urlencode(form),
                headers={"X-Mandrill-Signature": sig, "Content-Type": "application/x-www-form-urlencoded"},
            )
        ]
    if provider == "ses":
        return [
            c.post(
                "/webhooks/ses",
                # An SNS retry resends the same notification (same MessageId): callers may pass it built.
                json=e if "Type" in e else sns_notification(signer, e),
                headers={"x-amz-sns-message-type": "Notification"},
            )
            for e in events
        ]
    return [c.post(f"/webhooks/{provider}", json=events, headers=basic())]


BUILDERS = {
    "mailjet": mailjet_event,
    "sparkpost": sparkpost_event,
    "mandrill": mandrill_event,
    "brevo": brevo_event,
    "ses": ses_record,
}


# --- a site that sent, serving its webhooks -------------------------------------------------------


@dataclass
class Site:
    engine: Engine
    web: WebServer
    signer: SnsSigner
    mailshot_id: int
    ids: dict[str, int]  # email -> recipient id of the sending `mailshot_id`
    sendings: dict[str, tuple[int, dict[str, int]]]  # list name -> (sending, email -> recipient id)


def stored(engine: Engine, source: str | None = None) -> int:
    """Events received (an applied unsubscription also records an event, without a provider id)."""
    query = (
        select(func.count())
        .select_from(FeedbackEvent)
        .where(FeedbackEvent.source != "smtp", FeedbackEvent.provider_event_id.is_not(None))  # type: ignore[union-attr]
    )
    if source is not None:
        query = query.where(FeedbackEvent.source == source)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


@contextmanager
def sent_site(url: str, tmp: Path, lists: tuple[str, ...]) -> Iterator[Site]:
    """One sending of 25 recipients per list (u<i>@<list>.example; u<i>@example.com for "news"), sent through the
    dev relay, and the web app serving the webhooks."""
    sock = free_socket()
    signer = SnsSigner()
    sendings = {}
    with DevRelay() as relay:
        settings = make_settings(url, relay, **webhook_settings(sock.getsockname()[1]))
        engine = engine_for(settings)
        for name in lists:
            seed(engine, tmp, 25, list_name=name, domain="example.com" if name == "news" else f"{name}.example")
            mid = create(engine, settings, lists=(name,))
            drive(engine, settings, mid)
            with session_scope(engine) as session:
                rows = session.execute(select(Recipient.email, Recipient.id).where(Recipient.mailshot_id == mid)).all()
            sendings[name] = (mid, {e: i for e, i in rows})
    mid, ids = sendings[lists[0]]
    with WebServer(settings, sock, signer) as web:
        yield Site(engine, web, signer, mid, ids, sendings)
