"""Any body posted to a webhook gets a 4xx or a 2xx, never a 5xx, and whatever was stored can be applied.

Hypothesis posts random bytes, random JSON and the providers' documented events with random fields
(lone surrogates, NULs, huge numbers, ids beyond our columns, odd types), each authenticated the way
its provider authenticates, over real HTTP, on SQLite and PostgreSQL (which refuses NUL in text).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from fakes.webhooks import (
    BUILDERS,
    MANDRILL_KEY,
    TOPIC,
    Site,
    basic,
    sent_site,
    sns_notification,
)
from mailshot_core.feedback import inbox
from mailshot_core.store.models import FeedbackEvent
from mailshot_core.web.auth import mandrill_signature


@pytest.fixture(scope="module")
def site(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A sending of 25 recipients, sent, and the web app (SQLite, then PostgreSQL)."""
    with sent_site(module_db_url, tmp_path_factory.mktemp("fuzz"), ("news",)) as s:
        yield s


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
    email, rid = draw(st.sampled_from(sorted(site.ids.items())))
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
            # As SNS sends it: JSON with non-ASCII escaped (a lone surrogate travels as \ud800).
            content = json.dumps(site.signer.sign(notification)).encode()
            statuses.append(c.post("/webhooks/ses", content=content).status_code)
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
    site.web.settle()  # what was stored was applied on arrival: one odd event never stops the inbox
    inbox.apply_all(site.engine)


_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@pytest.mark.parametrize("provider", ["mailjet", "sparkpost", "mandrill", "brevo", "ses"])
def test_no_body_makes_a_5xx(provider: str, site: Site) -> None:
    """Random bytes, random JSON and mangled documented events, authenticated: always < 500, and the
    inbox still applies."""

    email, rid = sorted(site.ids.items())[0]
    documented = json.dumps([BUILDERS[provider](KINDS[provider][0], email, site.mailshot_id, rid)]).encode()

    @_SETTINGS
    @given(body=_bodies(provider, site))
    @example(body=documented)  # at least one event reaches the inbox, whatever hypothesis draws
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
