"""ESP webhooks over real HTTP (uvicorn) -> the inbox -> apply-feedback -> statuses and counters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import select

from conftest import make_settings
from fakes.webhooks import (
    BUILDERS,
    MANDRILL_KEY,
    SECRET,
    Site,
    SnsSigner,
    WebServer,
    basic,
    free_socket,
    post,
    sent_site,
    sns_notification,
    stored,
)
from mailshot_core.feedback import inbox
from mailshot_core.sending import sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import Recipient, Subscriber
from mailshot_core.web.auth import mandrill_signature

# provider -> [(event name, extra fields, expected recipient status)]: every documented event type.
ROUND_TRIPS: dict[str, list[tuple[str, dict[str, Any], str]]] = {
    "mailjet": [
        ("sent", {"smtp_reply": "sent (250 2.0.0 OK)"}, "sent"),
        ("open", {"ip": "127.0.0.1", "geo": "FR", "agent": "Mozilla/5.0"}, "read"),
        ("click", {"url": "https://example.org/a", "ip": "127.0.0.1"}, "clic"),
        (
            "bounce",
            {"blocked": False, "hard_bounce": True, "error_related_to": "recipient", "error": "user unknown"},
            "bounce",
        ),
        (
            "bounce",
            {"blocked": False, "hard_bounce": False, "error_related_to": "recipient", "error": "quota exceeded"},
            "fail",
        ),
        (
            "bounce",  # greylisting: a deferral, Mailjet retries
            {"blocked": False, "hard_bounce": False, "error_related_to": "domain", "error": "greylisted"},
            "sent",
        ),
        ("blocked", {"error_related_to": "mailjet", "error": "preblocked"}, "fail"),
        ("spam", {"source": "JMRPP"}, "spam"),
        ("unsub", {"mj_list_id": 1, "ip": "127.0.0.1"}, "unsub"),
    ],
    "sparkpost": [
        ("injection", {}, "sent"),
        ("delivery", {}, "sent"),
        ("delay", {"num_retries": "1", "reason": "451 try later"}, "sent"),
        ("bounce", {"bounce_class": "10", "raw_reason": "550 5.1.1 no such user"}, "bounce"),
        ("bounce", {"bounce_class": "21", "raw_reason": "DNS failure"}, "fail"),
        ("bounce", {"bounce_class": "51", "raw_reason": "spam block"}, "fail"),
        ("out_of_band", {"bounce_class": "30"}, "bounce"),
        ("policy_rejection", {"reason": "recipient on the suppression list"}, "fail"),
        ("generation_failure", {}, "fail"),
        ("generation_rejection", {}, "fail"),
        ("spam_complaint", {"fbtype": "abuse"}, "spam"),
        ("open", {"user_agent": "Mozilla/5.0"}, "read"),
        ("initial_open", {}, "read"),
        ("amp_open", {}, "read"),
        ("amp_initial_open", {}, "read"),
        ("click", {"target_link_url": "https://example.org/a"}, "clic"),
        ("amp_click", {}, "clic"),
        ("list_unsubscribe", {}, "unsub"),
        ("link_unsubscribe", {}, "unsub"),
    ],
    "mandrill": [
        ("send", {}, "sent"),
        ("delivered", {}, "sent"),
        ("deferral", {}, "sent"),
        ("hard_bounce", {}, "bounce"),
        ("soft_bounce", {}, "fail"),
        ("open", {"ip": "127.0.0.1", "user_agent": "Mozilla/5.0"}, "read"),
        ("click", {"url": "https://example.org/a"}, "clic"),
        ("spam", {}, "spam"),
        ("unsub", {}, "unsub"),
        ("reject", {}, "fail"),
    ],
    "brevo": [
        ("request", {}, "sent"),
        ("delivered", {}, "sent"),
        ("deferred", {"reason": "greylisted"}, "sent"),
        ("hard_bounce", {"reason": "unknown user"}, "bounce"),
        ("soft_bounce", {"reason": "mailbox full"}, "fail"),
        ("blocked", {}, "fail"),
        ("invalid_email", {}, "bounce"),  # the address is invalid: a hard bounce, not a block of ours
        ("error", {}, "fail"),
        ("spam", {}, "spam"),
        ("complaint", {}, "spam"),
        ("opened", {}, "read"),
        ("unique_opened", {}, "read"),
        ("proxy_open", {}, "sent"),  # Apple MPP: a machine's open, counted in nb_read_machine
        ("unique_proxy_open", {}, "sent"),
        ("click", {"link": "https://example.org/a"}, "clic"),
        ("unsubscribed", {}, "unsub"),
    ],
    "ses": [
        ("Send", {"send": {}}, "sent"),
        ("Delivery", {"delivery": {"processingTimeMillis": 546, "smtpResponse": "250 ok"}}, "sent"),
        ("DeliveryDelay", {"deliveryDelay": {"delayType": "MailboxFull"}}, "sent"),
        (
            "Bounce",
            {
                "bounce": {
                    "bounceType": "Permanent",
                    "bounceSubType": "General",
                    "bouncedRecipients": [{"diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
                }
            },
            "bounce",
        ),
        ("Bounce", {"bounce": {"bounceType": "Transient", "bounceSubType": "MailboxFull"}}, "fail"),
        ("Complaint", {"complaint": {"complaintFeedbackType": "abuse"}}, "spam"),
        ("Reject", {"reject": {"reason": "Bad content"}}, "fail"),
        ("Rendering Failure", {"failure": {"errorMessage": "x"}}, "fail"),
        ("Open", {"open": {"ipAddress": "192.0.2.1"}}, "read"),
        ("Click", {"click": {"link": "https://example.org/a"}}, "clic"),
        ("Subscription", {"subscription": {"source": "UnsubscribeHeader"}}, "unsub"),
    ],
}
COUNTED = {
    "sent": ("sent",),
    "read": ("sent", "nb_read"),
    "clic": ("sent", "nb_read", "nb_clic"),
    "fail": ("failed",),
    "bounce": ("sent", "nb_bounce"),
    "spam": ("sent", "nb_spam"),
    "unsub": ("sent", "nb_unsub"),
}


@pytest.fixture
def site(sqlite_url: str, tmp_path: Path) -> Iterator[Site]:
    with sent_site(sqlite_url, tmp_path, ("news",)) as s:
        yield s


@pytest.fixture(scope="module")
def every_provider(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One database (SQLite, then PostgreSQL) with a sending per provider, shared by the round trips."""
    with sent_site(module_db_url, tmp_path_factory.mktemp("round-trips"), tuple(ROUND_TRIPS)) as s:
        yield s


@pytest.mark.parametrize("provider", list(ROUND_TRIPS))
def test_every_documented_event_reaches_its_recipient(provider: str, every_provider: Site) -> None:
    """Each event type of the provider, posted to its webhook, gives the mapped status and counters at
    once (applied on arrival, not by the hourly sweep); spam and unsubscribe events unsubscribe the
    address; posting again and re-applying change nothing."""
    site = every_provider
    mid, ids = site.sendings[provider]
    cases = ROUND_TRIPS[provider]
    build = BUILDERS[provider]
    address = [f"u{i}@{provider}.example" for i in range(len(cases))]
    events = [build(kind, address[i], mid, ids[address[i]], **extra) for i, (kind, extra, _) in enumerate(cases)]
    if provider == "ses":
        events = [sns_notification(site.signer, e) for e in events]
    before = site.web.applier.applied
    for r in post(site.web, provider, events, site.signer):
        assert r.status_code == 200, r.text
    assert stored(site.engine, provider) == len(events)
    for r in post(site.web, provider, events, site.signer):  # the provider retries: stored once
        assert r.status_code == 200 and r.json()["stored"] == 0
    assert stored(site.engine, provider) == len(events)

    site.web.settle()
    assert site.web.applier.applied - before == len(events)  # by the web app, on arrival
    assert inbox.apply_all(site.engine).applied == 0  # nothing left for the sweep
    with session_scope(site.engine) as session:
        status = dict(
            session.execute(select(Recipient.email, Recipient.status).where(Recipient.mailshot_id == mid)).all()
        )
        m = sendings.get(session, mid)
        assert sendings.stored_counters(m) == sendings.recount(session, mid)
        subs = dict(session.execute(select(Subscriber.email, Subscriber.status)).all())
    for i, (kind, _, expected) in enumerate(cases):
        assert status[address[i]] == expected, (kind, expected)
        unsubscribed = expected in ("spam", "unsub")
        assert (subs[address[i]] == "unsubscribed") is unsubscribed, kind
    expected_counts: dict[str, int] = {}
    for e in [*(c[2] for c in cases), *["sent"] * (25 - len(cases))]:
        for name in COUNTED[e]:
            expected_counts[name] = expected_counts.get(name, 0) + 1
    for name in ("sent", "failed", "nb_read", "nb_clic", "nb_spam", "nb_bounce", "nb_unsub"):
        assert getattr(m, name) == expected_counts.get(name, 0), name
    # Idempotent: nothing pending, and applying again changes nothing.
    assert inbox.apply_all(site.engine).applied == 0


def test_late_events_never_move_a_recipient_backwards(site: Site) -> None:
    """A click then a late delivery/open keeps `clic`; an open after a hard bounce wins (engagement
    proves delivery); a late delivery does not undo a complaint."""
    mid, ids = site.mailshot_id, site.ids
    ev = BUILDERS["mailjet"]
    events = [
        ev("click", "u0@example.com", mid, ids["u0@example.com"]),
        ev("sent", "u0@example.com", mid, ids["u0@example.com"], time=1),
        ev("open", "u0@example.com", mid, ids["u0@example.com"], time=2),
        ev("spam", "u1@example.com", mid, ids["u1@example.com"]),
        ev("sent", "u1@example.com", mid, ids["u1@example.com"], time=3),
    ]
    for e in events:  # one at a time, applied after each: the worst ordering
        post(site.web, "mailjet", [e], site.signer)
        site.web.settle()
    with session_scope(site.engine) as session:
        status = dict(
            session.execute(select(Recipient.email, Recipient.status).where(Recipient.mailshot_id == mid)).all()
        )
        assert sendings.stored_counters(sendings.get(session, mid)) == sendings.recount(session, mid)
    assert status["u0@example.com"] == "clic" and status["u1@example.com"] == "spam"


def test_forged_and_unauthenticated_requests_get_403_and_store_nothing(site: Site) -> None:
    """Wrong Basic password, wrong token, bad Mandrill signature, tampered or foreign SNS messages,
    a certificate URL that is not SNS's: 403, nothing stored."""
    mid, rid = site.mailshot_id, site.ids["u0@example.com"]
    c = site.web.client
    for provider in ("mailjet", "sparkpost", "brevo"):
        body = [BUILDERS[provider]("open" if provider != "brevo" else "opened", "u0@example.com", mid, rid)]
        assert c.post(f"/webhooks/{provider}", json=body).status_code == 403
        assert c.post(f"/webhooks/{provider}", json=body, headers=basic("wrong")).status_code == 403
        assert c.post(f"/webhooks/{provider}?token=wrong", json=body).status_code == 403
        assert c.post(f"/webhooks/{provider}", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 403
    form = {"mandrill_events": json.dumps([BUILDERS["mandrill"]("open", "u0@example.com", mid, rid)])}
    forged = mandrill_signature("not-the-key", f"{site.web.url}/webhooks/mandrill", form)
    headers = {"X-Mandrill-Signature": forged, "Content-Type": "application/x-www-form-urlencoded"}
    assert c.post("/webhooks/mandrill", content=urlencode(form), headers=headers).status_code == 403
    right_key_wrong_url = mandrill_signature(MANDRILL_KEY, f"{site.web.url}/webhooks/mandrill/", form)
    headers["X-Mandrill-Signature"] = right_key_wrong_url
    assert c.post("/webhooks/mandrill", content=urlencode(form), headers=headers).status_code == 403
    record = BUILDERS["ses"]("Open", "u0@example.com", mid, rid)
    tampered = sns_notification(site.signer, record)
    tampered["Message"] = tampered["Message"].replace('"Open"', '"Complaint"')
    assert c.post("/webhooks/ses", json=tampered).status_code == 403
    assert (
        c.post(
            "/webhooks/ses", json=sns_notification(site.signer, record, topic="arn:aws:sns:eu-west-1:666:evil")
        ).status_code
        == 403
    )
    elsewhere = sns_notification(site.signer, record)
    elsewhere["SigningCertURL"] = "https://evil.example.com/cert.pem"
    assert c.post("/webhooks/ses", json=elsewhere).status_code == 403
    assert stored(site.engine) == 0
    # The right credentials, each way they can be given, are accepted.
    body = [BUILDERS["mailjet"]("open", "u0@example.com", mid, rid)]
    assert c.post(f"/webhooks/mailjet?token={SECRET}", json=body).status_code == 200
    assert (
        c.post(
            "/webhooks/brevo",
            json=[BUILDERS["brevo"]("opened", "u1@example.com", mid, 0)],
            headers={"Authorization": f"Bearer {SECRET}"},
        ).status_code
        == 200
    )


def test_a_provider_without_webhook_credentials_refuses_everything(sqlite_url: str) -> None:
    """Secure by default: no secret configured -> every event is refused with 403, even 'signed' ones."""
    sock = free_socket()
    signer = SnsSigner()
    settings = make_settings(sqlite_url)  # no webhook settings at all
    with WebServer(settings, sock, signer) as web:
        for provider, events in (("mailjet", [{"event": "open", "email": "a@b.c"}]), ("ses", None)):
            if provider == "ses":
                r = web.client.post(
                    "/webhooks/ses", json=sns_notification(signer, BUILDERS["ses"]("Open", "a@b.c", 1, 1))
                )
            else:
                r = web.client.post(f"/webhooks/{provider}", json=events, headers=basic())
            assert r.status_code == 403 and "not configured" in r.json()["error"]
        form = {"mandrill_events": json.dumps([{"event": "open", "msg": {"email": "a@b.c"}}])}
        sig = mandrill_signature("", f"{web.url}/webhooks/mandrill", form)
        r = web.client.post(
            "/webhooks/mandrill",
            content=urlencode(form),
            headers={"X-Mandrill-Signature": sig, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 403


def test_probes_get_200_and_malformed_bodies_get_400_with_the_reason(site: Site) -> None:
    """GET/HEAD and empty probes (Mandrill's test-webhook batch, SparkPost's ping) answer 200 without
    credentials; an authenticated body that is not the documented format gets 400 naming what is wrong."""
    c = site.web.client
    for provider in ("mailjet", "sparkpost", "mandrill", "brevo", "ses"):
        assert c.get(f"/webhooks/{provider}").status_code == 200
        assert c.head(f"/webhooks/{provider}").status_code == 200
        assert c.post(f"/webhooks/{provider}", content=b"").status_code == 200
    assert c.get("/webhooks/nobody").status_code == 404
    form = {"mandrill_events": "[]"}
    sig = mandrill_signature("test-webhook", f"{site.web.url}/webhooks/mandrill", form)
    r = c.post(
        "/webhooks/mandrill",
        content=urlencode(form),
        headers={"X-Mandrill-Signature": sig, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200
    assert c.post("/webhooks/sparkpost", json=[{"msys": {}}]).status_code == 200

    r = c.post("/webhooks/mailjet", json=[{"email": "u0@example.com"}], headers=basic())
    assert r.status_code == 400 and r.json()["error"] == "event 0: field 'event' is missing or not a string"
    r = c.post("/webhooks/sparkpost", json=[{"msys": {"message_event": {"type": "delivery"}}}], headers=basic())
    assert r.status_code == 400 and "event 0 (message_event): field 'event_id'" in r.json()["error"]
    r = c.post("/webhooks/brevo", content=b"{not json", headers=basic())
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    form = {"mandrill_events": json.dumps([{"event": "open"}])}
    sig = mandrill_signature(MANDRILL_KEY, f"{site.web.url}/webhooks/mandrill", form)
    r = c.post(
        "/webhooks/mandrill",
        content=urlencode(form),
        headers={"X-Mandrill-Signature": sig, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 400 and "event 0: field 'msg'" in r.json()["error"]
    assert stored(site.engine) == 0


def test_sns_subscription_is_confirmed_and_events_for_other_sites_are_ignored(site: Site) -> None:
    """A signed SubscriptionConfirmation is confirmed by GETting its SubscribeURL; events whose ids are
    not a sending of ours (another site on the same ESP account) are answered 200 and not stored."""
    confirm = site.signer.sign(
        {
            "Type": "SubscriptionConfirmation",
            "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
            "Token": "2336412f37",
            "TopicArn": "arn:aws:sns:eu-west-1:123456789012:mailshot-events",
            "Message": "You have chosen to subscribe to the topic",
            "SubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=2336412f37",
            "Timestamp": "2012-04-26T20:45:04.751Z",
        }
    )
    r = site.web.client.post(
        "/webhooks/ses", json=confirm, headers={"x-amz-sns-message-type": "SubscriptionConfirmation"}
    )
    assert r.status_code == 200 and confirm["SubscribeURL"] in site.signer.fetched
    other = BUILDERS["mailjet"]("open", "u0@example.com", 9999, 1)
    r = site.web.client.post("/webhooks/mailjet", json=[other], headers=basic())
    assert r.status_code == 200 and r.json()["ignored"] == 1 and stored(site.engine) == 0
