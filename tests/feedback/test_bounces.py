"""Bounce mail parsing (bounces.py): the real-world corpus, generated DSNs and ARF reports, VERP trust."""

from __future__ import annotations

import json

import pytest

from bouncemail import arf, dsn
from conftest import REPO
from mailshot_core.content.tokens import RecipientRef, verp_address
from mailshot_core.feedback import bounces
from mailshot_core.feedback.effects import Effect

KEY = b"test-secret"
CORPUS = REPO / "tests" / "data" / "bounces" / "flufl"
VERP = verp_address(KEY, "bounces@news.example.org", RecipientRef(3, 7))


def test_real_world_corpus_extraction_rate() -> None:
    """The right address is extracted from >= 95% of flufl.bounce's real-world bounces (issue 5)."""
    expected = json.loads((CORPUS / "expected.json").read_text())
    cases = {name: set(e["addresses"]) for name, e in expected.items() if e["addresses"]}
    missed = []
    for name, wanted in cases.items():
        report = bounces.parse((CORPUS / name).read_bytes(), KEY)
        if not wanted <= {f.email for f in report.failures}:
            missed.append(name)
    rate = 1 - len(missed) / len(cases)
    print(f"\nbounce corpus: {len(cases) - len(missed)}/{len(cases)} = {rate:.1%} extracted; missed: {missed}")
    assert rate >= 0.95, missed


def test_corpus_messages_without_address_give_no_failure() -> None:
    """A message the corpus says holds no detectable address (not a bounce) yields nothing to record."""
    report = bounces.parse((CORPUS / "dumbass_01.txt").read_bytes(), KEY)
    assert [f for f in report.failures if f.effect is not Effect.IGNORE] == []


@pytest.mark.parametrize(
    ("status", "diagnostic", "effect"),
    [
        ("5.1.1", "550 5.1.1 <u@example.com>: Recipient address rejected: User unknown", Effect.HARD_BOUNCE),
        ("5.1.2", "550 5.1.2 bad destination system", Effect.HARD_BOUNCE),
        ("5.2.1", "550 5.2.1 mailbox disabled", Effect.HARD_BOUNCE),
        ("5.2.2", "552 5.2.2 mailbox full", Effect.SOFT_BOUNCE),
        ("4.4.7", "451 4.4.7 delivery time expired", Effect.SOFT_BOUNCE),
        ("5.7.1", "550 5.7.1 Service unavailable; client host blocked using Spamhaus", Effect.REJECT),
        ("5.7.26", "550 5.7.26 unauthenticated mail (DMARC)", Effect.REJECT),
        ("5.3.4", "552 5.3.4 message too big", Effect.REJECT),
        ("5.0.0", "550 5.7.1 Message rejected as spam", Effect.HARD_BOUNCE),  # Status wins when present
    ],
)
def test_generated_dsn_classification(status: str, diagnostic: str, effect: Effect) -> None:
    """RFC 3464: Status drives the class: 5.7.x policy / 5.6 / 5.3.4 are ours (reject), 5.2.2 and 4.x soft."""
    report = bounces.parse(dsn(VERP, "u@example.com", status, diagnostic), KEY)
    assert report.format == "dsn"
    assert [(f.email, f.effect, f.status) for f in report.failures] == [("u@example.com", effect, status)]
    assert report.verp == RecipientRef(3, 7)


def test_delayed_dsn_changes_nothing() -> None:
    """Action: delayed is a warning; the server is still trying."""
    report = bounces.parse(dsn(VERP, "u@example.com", "4.4.1", "451 4.4.1 no answer", action="delayed"), KEY)
    assert report.effect is Effect.IGNORE


def test_status_from_diagnostic_when_status_missing() -> None:
    assert bounces.classify_status(None, "failed", "smtp; 550 5.7.1 blocked") is Effect.REJECT
    assert bounces.classify_status(None, "failed", "smtp; 550 no such user") is Effect.HARD_BOUNCE
    assert bounces.classify_status(None, "failed", "smtp; 452 too many") is Effect.SOFT_BOUNCE


def test_arf_report_is_a_complaint_of_the_quoted_recipient() -> None:
    """RFC 5965: a feedback report is a spam complaint; the VERP is the quoted original's Return-Path."""
    original = f"Return-Path: <{VERP}>\r\nTo: u@example.com\r\nMessage-ID: <mailshot.3.r7@x>\r\n\r\nhi\r\n".encode()
    report = bounces.parse(arf("fbl@news.example.org", "u@example.com", original), KEY)
    assert report.format == "arf"
    assert report.effect is Effect.SPAM
    assert report.verp == RecipientRef(3, 7)
    assert report.original_message_id == "<mailshot.3.r7@x>"
    not_spam = bounces.parse(arf("fbl@news.example.org", "u@example.com", original, "not-spam"), KEY)
    assert not_spam.effect is Effect.IGNORE


@pytest.mark.parametrize(
    "address",
    [
        "bounces+m3.r7.000000000000@news.example.org",  # forged signature
        verp_address(b"someone-else", "bounces@news.example.org", RecipientRef(3, 7)),  # other key
        VERP.replace("r7", "r8"),  # signature of another recipient
    ],
)
def test_forged_verp_is_never_trusted(address: str) -> None:
    report = bounces.parse(dsn(address, "u@example.com", "5.1.1", "550 5.1.1 unknown"), KEY)
    assert report.verp is None
    assert report.forged_verp == address


def test_garbage_does_not_raise() -> None:
    report = bounces.parse(b"\x00\xff not a message at all", KEY)
    assert report.failures == ()
    assert report.format == "unknown"
