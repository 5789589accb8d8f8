"""Provider events that are not plain message events, and events missing their provider-side ids, over
real HTTP on SQLite and PostgreSQL, with the providers' documented payloads (reference/email-standards.md
§2.2-2.8; the exact samples are cited in each builder of fakes/webhooks.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from fakes.webhooks import BUILDERS, Site, post, sent_site, sns_notification, stored
from mailshot_core.feedback import fail_rule, inbox, tracking
from mailshot_core.sending import sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import FeedbackEvent, Recipient

PROVIDERS = ("mailjet", "sparkpost", "mandrill", "brevo", "ses")


@pytest.fixture(scope="module")
def site(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One sending per provider (25 recipients u<i>@<provider>.example each), sent, and the web app."""
    with sent_site(module_db_url, tmp_path_factory.mktemp("events"), PROVIDERS) as s:
        yield s


def _status(site: Site, provider: str, i: int) -> str:
    mid, _ = site.sendings[provider]
    with session_scope(site.engine) as session:
        return session.execute(
            select(Recipient.status).where(Recipient.mailshot_id == mid, Recipient.email == f"u{i}@{provider}.example")
        ).scalar_one()


def _event(site: Site, provider: str, kind: str, i: int, **extra: Any) -> dict[str, Any]:
    """The provider's documented event about recipient u<i> of its sending, with our correlation fields."""
    mid, ids = site.sendings[provider]
    email = f"u{i}@{provider}.example"
    return BUILDERS[provider](kind, email, mid, ids[email], **extra)


def test_mandrill_sync_events_are_skipped_and_the_batch_stored(site: Site) -> None:
    """Mandrill's sync events (blacklist/whitelist: `type` and `action`, no `event`) in the same batch as
    message events are acknowledged and skipped; the message events are stored and applied."""
    blacklist = {  # Mailchimp Transactional "Webhooks: sync events" sample
        "type": "blacklist",
        "action": "add",
        "reject": {
            "reason": "hard-bounce",
            "detail": " Example detail",
            "last_event_at": "2014-02-01 12:43:56",
            "email": "u1@mandrill.example",
            "created_at": "2014-01-15 11:32:19",
            "expires_at": "2014-03-01 12:43:56",
            "expired": False,
            "subaccount": None,
            "sender": None,
        },
        "ts": 1384954004,
    }
    whitelist = {
        "type": "whitelist",
        "action": "add",
        "entry": {"email": "u2@mandrill.example", "detail": "example details", "created_at": "2014-01-15 12:03:19"},
        "ts": 1384954004,
    }
    batch = [blacklist, _event(site, "mandrill", "open", 1), whitelist, _event(site, "mandrill", "hard_bounce", 2)]
    (r,) = post(site.web, "mandrill", batch, site.signer)
    assert r.status_code == 200, r.text
    assert r.json()["received"] == 2 and r.json()["stored"] == 2
    site.web.settle()  # applied on arrival
    assert (_status(site, "mandrill", 1), _status(site, "mandrill", 2)) == ("read", "bounce")


def test_a_greylisted_mailjet_bounce_is_a_deferral(site: Site) -> None:
    """Mailjet `bounce` with error "greylisted" (error_related_to "domain"): no status change, and the MAX_FAIL
    rule does not count it, even with a limit of one failure."""
    greylisted = _event(
        site, "mailjet", "bounce", 3, blocked=False, hard_bounce=False, error_related_to="domain", error="greylisted"
    )
    (r,) = post(site.web, "mailjet", [greylisted], site.signer)
    assert r.status_code == 200 and r.json()["stored"] == 1
    site.web.settle()  # applied on arrival
    report = inbox.apply_all(site.engine, max_fail=1)
    assert report.changed == 0 and report.unsubscribed == 0
    assert _status(site, "mailjet", 3) == "sent"
    with session_scope(site.engine) as session:
        assert fail_rule.evidence(session, "u3@mailjet.example", 1) is None


def test_brevo_invalid_email_is_a_hard_bounce(site: Site) -> None:
    """Brevo `invalid_email` says the address is not valid: a hard bounce of that address (the recipient
    moves to `bounce`, counted in nb_bounce), not a block of ours."""
    (r,) = post(site.web, "brevo", [_event(site, "brevo", "invalid_email", 4)], site.signer)
    assert r.status_code == 200
    site.web.settle()  # applied on arrival
    assert _status(site, "brevo", 4) == "bounce"
    with session_scope(site.engine) as session:
        mid, _ = site.sendings["brevo"]
        assert sendings.stored_counters(sendings.get(session, mid)) == sendings.recount(session, mid)


def test_brevo_proxy_opens_are_machine_opens(site: Site) -> None:
    """Brevo `proxy_open` / `unique_proxy_opened` (Apple Mail Privacy Protection) count once per recipient in
    nb_read_machine, like our own pixel's machine hits, without making the recipient `read`; the counter
    equals the recount from the events."""
    mid, _ = site.sendings["brevo"]
    with session_scope(site.engine) as session:
        before = sendings.get(session, mid).nb_read_machine
    events = [_event(site, "brevo", "proxy_open", 5), _event(site, "brevo", "unique_proxy_opened", 5)]
    events += [_event(site, "brevo", "proxy_open", 6)]
    assert post(site.web, "brevo", events, site.signer)[0].status_code == 200
    site.web.settle()  # applied on arrival
    assert post(site.web, "brevo", [_event(site, "brevo", "proxy_open", 5)], site.signer)[0].status_code == 200
    site.web.settle()  # a later proxy open of the same recipient: still counted once
    assert (_status(site, "brevo", 5), _status(site, "brevo", 6)) == ("sent", "sent")
    with session_scope(site.engine) as session:
        m = sendings.get(session, mid)
        assert m.nb_read_machine == before + 2 and m.nb_read == 0
        assert tracking.machine_recount(session, mid)["nb_read_machine"] == m.nb_read_machine


def test_the_plain_text_sns_notice_is_acknowledged(site: Site) -> None:
    """SES first posts "Successfully validated SNS topic for Amazon SES event publishing." as a
    Notification whose Message is not JSON: 200, nothing stored."""
    before = stored(site.engine, "ses")
    notice = sns_notification(site.signer, {})
    notice["Message"] = "Successfully validated SNS topic for Amazon SES event publishing."
    (r,) = post(site.web, "ses", [site.signer.sign(notice)], site.signer)
    assert r.status_code == 200 and r.json()["ignored"] == "not an SES event record"
    assert stored(site.engine, "ses") == before


def _without_primary_ids(site: Site, provider: str, kind: str, i: int) -> dict[str, Any]:
    """The event as the provider sends it when its id fields were lost (another integration, a relay):
    only what Mailshot itself put in the message is left: the campaign/tag, or our headers."""
    ev = _event(site, provider, kind, i)
    mid, ids = site.sendings[provider]
    if provider == "mailjet":
        ev.update(CustomID="", Payload="", customcampaign=f"mailshot-{mid}")
    elif provider == "sparkpost":
        inner = ev["msys"]["message_event"]
        inner.update(rcpt_meta={}, campaign_id=f"mailshot-{mid}")
    elif provider == "mandrill":
        ev["msg"].update(metadata={}, tags=[f"mailshot-{mid}"])
    elif provider == "brevo":
        ev.pop("X-Mailin-custom")
    else:
        ev["mail"]["tags"] = {"ses:configuration-set": ["mailshot"]}
        if i % 2:
            ev["mail"]["headers"] = [{"name": "X-Mailshot-Id", "value": str(mid)}]  # no X-Mailshot-Recipient
        else:
            ev["mail"]["commonHeaders"] = {
                "messageId": f"<mailshot.{mid}.r{ids[ev['mail']['destination'][0]]}@example.org>"
            }
    return ev


HARD = {"mailjet": "bounce", "sparkpost": "bounce", "mandrill": "hard_bounce", "brevo": "hard_bounce", "ses": "Bounce"}
EXTRA = {
    "mailjet": {"hard_bounce": True, "error_related_to": "recipient", "error": "user unknown"},
    "sparkpost": {"bounce_class": "10"},
    "ses": {"bounce": {"bounceType": "Permanent", "bounceSubType": "General"}},
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_events_without_the_primary_ids_fall_back_on_ours(
    site: Site, provider: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the provider's id fields, the sending comes from what Mailshot sends (campaign or tag
    ``mailshot-<id>``, X-Mailshot-Id, our Message-ID) and the recipient from (sending, address); events
    with nothing of ours are counted and logged once per batch, with the reason."""
    events = []
    for i in (7, 8):
        ev = _without_primary_ids(site, provider, HARD[provider], i)
        inner = ev["msys"]["message_event"] if provider == "sparkpost" else ev
        inner.update(EXTRA.get(provider, {}))
        events.append(ev)
    orphan = _event(site, provider, HARD[provider], 9)
    if provider == "sparkpost":
        orphan["msys"]["message_event"].update(rcpt_meta={}, campaign_id="another-campaign")
    elif provider == "mandrill":
        orphan["msg"].update(metadata={}, tags=[])
    elif provider == "ses":
        orphan["mail"].update(tags={})
    else:
        orphan.update({"CustomID": "", "Payload": "", "customcampaign": "", "X-Mailin-custom": "", "tags": []})
    caplog.set_level(logging.WARNING, logger="mailshot")
    responses = post(site.web, provider, [*events, orphan], site.signer)
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    untied = sum(r.json()["untied"].get("without any sending id of ours", 0) for r in responses)
    assert untied == 1
    assert any("not tied to a recipient: 1 without any sending id of ours" in m for m in caplog.messages)
    site.web.settle()  # applied on arrival
    assert (_status(site, provider, 7), _status(site, provider, 8), _status(site, provider, 9)) == (
        "bounce",
        "bounce",
        "sent",
    )
    with session_scope(site.engine) as session:  # tied by address: the event now names its recipient
        rids = session.execute(
            select(FeedbackEvent.recipient_id).where(
                FeedbackEvent.source == provider, FeedbackEvent.email == f"u7@{provider}.example"
            )
        ).scalars()
        assert set(rids) == {site.sendings[provider][1][f"u7@{provider}.example"]}


def test_events_of_our_sending_with_an_unknown_address_are_logged_at_apply(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    """An event naming one of our sendings but an address that is not among its recipients is applied
    (on arrival, by the web app) without effect, counted (ApplyReport.unmatched) and logged once per
    run with the reason."""
    mid = site.sendings["brevo"][0]
    ev = BUILDERS["brevo"]("delivered", "stranger@example.net", mid, 0)
    caplog.set_level(logging.WARNING, logger="mailshot")
    unmatched = site.web.applier.report.unmatched
    assert post(site.web, "brevo", [ev], site.signer)[0].status_code == 200
    site.web.settle()
    assert site.web.applier.report.unmatched == unmatched + 1
    assert inbox.apply_all(site.engine).applied == 0  # nothing left for the sweep
    assert any("1 event(s) not tied to a recipient" in m and "no such recipient" in m for m in caplog.messages)
