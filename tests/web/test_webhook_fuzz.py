"""Any body posted to a webhook gets a 4xx or a 2xx, never a 5xx, and whatever was stored can be applied.

Hypothesis posts random bytes, random JSON and the providers' documented events with random fields
(lone surrogates, NULs, huge numbers, ids beyond our columns, odd types), each authenticated the way
its provider authenticates, over real HTTP, on SQLite and PostgreSQL (which refuses NUL in text).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from conftest import engine_for, make_settings
from fakes.webhooks import (
    BUILDERS,
    MANDRILL_KEY,
    TOPIC,
    SnsSigner,
    WebServer,
    basic,
    free_socket,
    sns_notification,
    webhook_settings,
)
from helpers import create, seed
from mailshot_core.feedback import inbox
from mailshot_core.sending import lifecycle
from mailshot_core.store import db
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import FeedbackEvent, Recipient
from mailshot_core.web.auth import mandrill_signature


@dataclass
class Site:
    engine: Engine
    web: WebServer
    signer: SnsSigner
    mailshot_id: int
    recipients: list[tuple[str, int]]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    url = (
        f"sqlite:///{tmp}/m.db" if request.param == "sqlite" else request.getfixturevalue("pg_server").create_database()
    )
    sock = free_socket()
    settings_ = make_settings(url, **webhook_settings(sock.getsockname()[1]))
    engine = engine_for(settings_)
    seed(engine, Path(tmp), 5)
    mid = create(engine, settings_)
    lifecycle.start_sending(engine, settings_, mid)  # materialised: recipient rows for the events to move
    with session_scope(engine) as session:
        rows = session.execute(select(Recipient.email, Recipient.id).where(Recipient.mailshot_id == mid)).all()
    recipients = [(e, i) for e, i in rows]
    signer = SnsSigner()
    with WebServer(settings_, sock, signer) as web:
        yield Site(engine, web, signer, mid, recipients)
    db.dispose_engines()


ODD_TEXT = st.sampled_from(["", "\ud800", "a\x00b", "\udcff@example.com", "m99999999999999999999999-r1", "é" * 300])
TEXT = st.one_of(st.text(max_size=30), ODD_TEXT)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=12
)
FIELDS = {
    "mailjet": ["event", "email", "CustomID", "Payload", "customcampaign", "time", "hard_bounce", "error", "url"],
    "sparkpost": ["type", "event_id", "rcpt_to", "rcpt_meta", "campaign_id", "bounce_class", "timestamp", "reason"],
    "mandrill": ["event", "msg", "ts", "_id", "type", "action", "url"],
    "brevo": ["event", "email", "X-Mailin-custom", "tags", "tag", "ts_event", "date", "reason"],
    "ses": ["eventType", "mail", "bounce", "complaint", "notificationType"],
}
KINDS = {
    "mailjet": ["sent", "open", "click", "bounce", "blocked", "spam", "unsub"],
    "sparkpost": ["delivery", "bounce", "open", "click", "spam_complaint", "list_unsubscribe"],
    "mandrill": ["send", "hard_bounce", "open", "click", "spam", "unsub", "reject"],
    "brevo": ["delivered", "hard_bounce", "invalid_email", "proxy_open", "opened", "click", "unsubscribed"],
    "ses": ["Delivery", "Bounce", "Complaint", "Open", "Click", "Subscription"],
}


@st.composite
def events(draw: st.DrawFn, provider: str, site: Site) -> dict[str, Any]:
    """A documented event of ``provider`` about one of our recipients, with some fields made random."""
    email, rid = draw(st.sampled_from(site.recipients))
    kind = draw(st.one_of(st.sampled_from(KINDS[provider]), TEXT))
    event = BUILDERS[provider](kind, email, site.mailshot_id, rid)
    target = event["msys"][next(iter(event["msys"]))] if provider == "sparkpost" else event
    target.update(draw(st.dictionaries(st.sampled_from(FIELDS[provider]), TEXT | JSON, max_size=2)))
    return event


def _bodies(provider: str, site: Site) -> st.SearchStrategy[bytes]:
    batches = st.lists(events(provider, site), min_size=1, max_size=4).map(lambda e: json.dumps(e).encode())
    # Mostly documented events (they reach the inbox and apply-feedback), some plain garbage.
    return st.one_of(st.binary(max_size=300), JSON.map(lambda v: json.dumps(v).encode()), batches, batches, batches)


def _post(site: Site, provider: str, body: bytes) -> int:
    c = site.web.client
    if provider == "mandrill":
        try:  # the events as Mandrill sends them: one signed form field
            form = {"mandrill_events": body.decode()}
        except UnicodeDecodeError:
            return c.post("/webhooks/mandrill", content=body).status_code
        signature = mandrill_signature(MANDRILL_KEY, f"{site.web.url}/webhooks/mandrill", form)
        headers = {"X-Mandrill-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"}
        return c.post("/webhooks/mandrill", content=urlencode(form), headers=headers).status_code
    if provider == "ses":
        try:  # one SNS notification per record, signed as SNS signs it
            records = json.loads(body)
        except (ValueError, RecursionError):
            return c.post("/webhooks/ses", content=body).status_code
        statuses = []
        for record in records if isinstance(records, list) else [records]:
            notification = sns_notification(site.signer, {"Message": "x"})
            notification["Message"] = json.dumps(record) if not isinstance(record, str) else record
            statuses.append(c.post("/webhooks/ses", json=site.signer.sign(notification)).status_code)
        return max(statuses, default=200)
    return c.post(f"/webhooks/{provider}", content=body, headers=basic()).status_code


DEEP = b"[" * 50_000 + b"]" * 50_000
HUGE_NUMBER = b'[{"event": "open", "email": "u0@example.com", "time": ' + b"9" * 5000 + b"}]"
SURROGATE = b'[{"event": "open", "email": "u0@example.com", "error": "\\ud800", "CustomID": "\\udcff"}]'
NUL = b'[{"event": "open", "email": "u0@example.com\\u0000", "type": "delivery", "event_id": "a\\u0000"}]'
OVERFLOW = b'[{"event": "open", "email": "u0@example.com", "CustomID": "m99999999999999999999999-r1"}]'


def _fuzz(provider: str, site: Site, body: bytes) -> None:
    status = _post(site, provider, body)
    assert status < 500, (status, body[:300])
    inbox.apply_all(site.engine)  # what was stored can be applied: one odd event never stops the inbox


_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@pytest.mark.parametrize("provider", ["mailjet", "sparkpost", "mandrill", "brevo", "ses"])
def test_no_body_makes_a_5xx(provider: str, site: Site) -> None:
    """Random bytes, random JSON and mangled documented events, authenticated: always < 500, and the
    inbox still applies."""

    @_SETTINGS
    @given(body=_bodies(provider, site))
    @example(body=DEEP)
    @example(body=HUGE_NUMBER)
    @example(body=SURROGATE)
    @example(body=NUL)
    @example(body=OVERFLOW)
    def run(body: bytes) -> None:
        _fuzz(provider, site, body)

    run()
    with site.engine.connect() as conn:  # the fuzz reached the inbox, not only the parsers
        stored = conn.execute(select(func.count()).where(FeedbackEvent.source == provider)).scalar_one()
    assert stored > 0


def test_unauthenticated_random_posts_are_4xx(site: Site) -> None:
    """Without credentials, any body to any provider is 403 (or 200 for an empty probe), never 5xx."""

    @_SETTINGS
    @given(provider=st.sampled_from(["mailjet", "sparkpost", "mandrill", "brevo", "ses"]), body=st.binary(max_size=500))
    def run(provider: str, body: bytes) -> None:
        status = site.web.client.post(f"/webhooks/{provider}", content=body).status_code
        assert status in (200, 403), (status, body)

    run()
    assert TOPIC  # the signed SES posts above used the configured topic
