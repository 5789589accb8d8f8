"""ESP transports against fake provider servers over real HTTP (tests/fakes/esp.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from conftest import engine_for, make_settings
from fakes.esp import FakeEspServer, settings_for
from helpers import create, drive, recipients, seed
from mailshot_core.sending import sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import MailshotStatus, Recipient
from mailshot_core.transports import get_transport
from mailshot_core.transports.ses import sigv4_headers

PROVIDERS = ["mailjet", "sparkpost", "mandrill", "brevo", "ses"]
# Ids each provider echoes in its events, read from what the fake "delivered".
META_IDS = {
    "mailjet": lambda m: (m["m"], m["r"]),
    "sparkpost": lambda m: (int(m["mailshot_id"]), int(m["recipient_id"])),
    "mandrill": lambda m: (int(m["mailshot_id"]), int(m["recipient_id"])),
    "brevo": lambda m: (int(m["X-Mailin-custom"].split(":")[1]), None),
    "ses": lambda m: (int(m["mailshot_id"][0]), int(m["recipient_id"][0])),
}


def _ids(engine: object, mid: int) -> dict[str, int]:
    from sqlmodel import select

    with session_scope(engine) as session:  # type: ignore[arg-type]
        return {
            e: i for e, i in session.exec(select(Recipient.email, Recipient.id).where(Recipient.mailshot_id == mid))
        }


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_1000_recipient_sending_goes_out_personalised_with_its_ids(
    provider: str, sqlite_url: str, tmp_path: Path
) -> None:
    """Every recipient gets its own subject/body and the provider carries (sending, recipient) ids,
    in as few calls as the API's batch form allows."""
    server = FakeEspServer(provider)
    with server as fake:
        settings = make_settings(
            sqlite_url,
            transport=provider,
            batch_size=500,
            esp_connections=8,
            **settings_for(provider, server.url, fake),
        )
        engine = engine_for(settings)
        emails = seed(engine, tmp_path, 1000)
        mid = create(engine, settings)
        m = drive(engine, settings, mid)
    assert m.status == MailshotStatus.END and (m.total, m.sent, m.failed) == (1000, 1000, 0)
    got = {d.email: d for d in fake.delivered}
    assert sorted(got) == sorted(emails) and len(fake.delivered) == 1000
    ids = _ids(engine, mid)
    for i, address in enumerate(emails):
        d = got[address]
        assert d.subject == f"Hello User {i}"
        assert f"Hello User {i} ({address}, fr, lists: news)" in d.html
        assert f"Hello User {i} ({address}" in d.text
        mailshot_id, recipient_id = META_IDS[provider](d.meta)
        assert mailshot_id == mid and recipient_id in (None, ids[address])
        if provider in ("mailjet", "sparkpost", "ses"):  # per-recipient headers where the API has them
            assert d.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            assert d.headers["X-Mailshot-Recipient"] == str(ids[address])
        assert d.headers["List-Id"].endswith("<news.example.org>")
    batch = get_transport(provider, settings)
    per_call = getattr(batch, "batch_size", 1)
    assert len(fake.calls) == 2 * math.ceil(500 / per_call)  # two claim batches of 500
    rows = recipients(engine, mid)
    assert set(rows.values()) == {("sent", 1)}


def test_sigv4_matches_the_aws_documented_example() -> None:
    """Our SigV4 signer reproduces AWS's worked example (IAM ListUsers, 2015-08-30)."""
    from datetime import UTC, datetime

    headers = sigv4_headers(
        "GET",
        "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08",
        b"",
        {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        access_key="AKIDEXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        region="us-east-1",
        service="iam",
        now=datetime(2015, 8, 30, 12, 36, tzinfo=UTC),
    )
    assert headers["Authorization"].endswith(
        "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
    )


def _sending(
    provider: str, url: str, fake: object, tmp_path: Path, n: int, **extra: object
) -> tuple[object, object, int]:
    settings = make_settings(
        f"sqlite:///{tmp_path}/mailshot.db", transport=provider, **{**settings_for(provider, url, fake), **extra}
    )
    engine = engine_for(settings)
    seed(engine, tmp_path, n)
    return settings, engine, create(engine, settings)


# SparkPost and Brevo answer 401 like Mailjet (the shared call_error path); Mandrill and SES differ.
@pytest.mark.parametrize("provider", ["mailjet", "mandrill", "ses"])
def test_bad_credentials_pause_the_sending_without_consuming_tries(provider: str, tmp_path: Path) -> None:
    """401/403 (or Mandrill's Invalid_Key) pause the sending with a message naming the provider."""
    server = FakeEspServer(provider)
    with server as fake:
        settings, engine, mid = _sending(provider, server.url, fake, tmp_path, 3)
        fake.key = "another-key"  # the provider no longer knows our key
        m = drive(engine, settings, mid)
    assert m.status == MailshotStatus.PAUSE
    assert "refused" in (m.status_reason or "") and (
        "credentials" in (m.status_reason or "") or "Invalid_Key" in (m.status_reason or "")
    )
    assert set(recipients(engine, mid).values()) == {("todo", 0)}
    assert fake.delivered == []


def test_missing_credentials_pause_the_sending_naming_the_variable(tmp_path: Path) -> None:
    """An ESP transport without its API key: paused, the message names MAILSHOT_..._API_KEY."""
    settings = make_settings(f"sqlite:///{tmp_path}/mailshot.db", transport="brevo")
    engine = engine_for(settings)
    seed(engine, tmp_path, 2)
    mid = create(engine, settings)
    m = drive(engine, settings, mid)
    assert m.status == MailshotStatus.PAUSE and "MAILSHOT_BREVO_API_KEY" in (m.status_reason or "")
    assert set(recipients(engine, mid).values()) == {("todo", 0)}


def test_429_is_throttled_honouring_retry_after_and_5xx_is_retried(tmp_path: Path) -> None:
    """A 429 (Retry-After: 1) defers the call's recipients without counting a try; a 503 is a
    temporary failure (tries grow); both end delivered, once each."""
    import time

    server = FakeEspServer("mailjet")
    with server as fake:
        fake.fail_next(429, {"ErrorMessage": "Too many requests"}, {"Retry-After": "1"})
        fake.fail_next(503, {"ErrorMessage": "Service unavailable"})
        settings, engine, mid = _sending("mailjet", server.url, fake, tmp_path, 120, esp_connections=1)
        started = time.monotonic()
        m = drive(engine, settings, mid)
        elapsed = time.monotonic() - started
    assert m.status == MailshotStatus.END and m.sent == 120
    assert sorted(d.email for d in fake.delivered) == sorted(recipients(engine, mid))
    with session_scope(engine) as session:
        from sqlmodel import select

        rows = session.exec(select(Recipient.tries, Recipient.throttled).where(Recipient.mailshot_id == mid)).all()
    assert sorted(set(rows)) == [(1, 0), (2, 0), (2, 1)]  # untouched, 503 (a try), 429 (throttled)
    assert sum(1 for r in rows if r == (2, 1)) == 50 and sum(1 for r in rows if r == (2, 0)) == 50
    assert elapsed >= 1.0  # Retry-After honoured


@pytest.mark.parametrize("provider", ["mailjet", "mandrill", "ses"])
def test_a_recipient_the_provider_refuses_fails_alone(provider: str, tmp_path: Path) -> None:
    """A per-recipient rejection in an accepted call: that recipient fails (bounce event), not the others."""
    server = FakeEspServer(provider)
    with server as fake:
        fake.reject.add("u3@example.com")
        settings, engine, mid = _sending(provider, server.url, fake, tmp_path, 12)
        m = drive(engine, settings, mid)
    rows = recipients(engine, mid)
    assert rows.pop("u3@example.com") == ("fail", 1)
    assert set(rows.values()) == {("sent", 1)}
    assert (m.sent, m.failed) == (11, 1)
    with session_scope(engine) as session:
        assert sendings.stored_counters(sendings.get(session, mid)) == sendings.recount(session, mid)


def test_test_sends_go_through_an_esp_too(tmp_path: Path) -> None:
    """`mailshot test` on an ESP sending: one [TEST] message, outside the provider's campaign."""
    from mailshot_core.sending.one_message import send_test

    server = FakeEspServer("mailjet")
    with server as fake:
        settings, engine, mid = _sending("mailjet", server.url, fake, tmp_path, 2)
        send_test(engine, settings, mid, "someone@example.net")
    (call,) = fake.calls
    (message,) = call["Messages"]
    assert message["Subject"].strip() == "[TEST] Hello" and "CustomCampaign" not in message
    assert fake.delivered[0].email == "someone@example.net"
