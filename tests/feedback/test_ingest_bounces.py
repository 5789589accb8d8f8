"""Send, bounce into a real Dovecot (IMAP over TLS), `ingest-bounces`, `apply-feedback`: the right state.

Rules checked: a signed VERP bounce changes its recipient only (hard -> bounce, soft and 5.7.x ->
fail), a feedback report unsubscribes at once, a forged VERP or a non-bounce changes nothing and stays
in the mailbox, processed messages are moved (never deleted), and a second run changes nothing.
"""

from __future__ import annotations

import imaplib
import os
import ssl
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from bouncemail import arf, dsn
from conftest import TEST_KEY, engine_for, make_settings
from helpers import create, drive, recipients, seed
from imapserver import PASSWORD, USER, ImapServer, ImapServerError
from mailshot_core.audience.subscribers import get_subscriber
from mailshot_core.cli import main
from mailshot_core.config import get_settings
from mailshot_core.devtools.relay import DevRelay
from mailshot_core.feedback.inbox import apply_all
from mailshot_core.feedback.mailboxes import BounceSourceError, ImapBox, MaildirBox, ingest, ingest_configured
from mailshot_core.sending import sendings
from mailshot_core.store.db import get_engine, session_scope

BOUNCES = "bounces@news.example.org"


@pytest.fixture(scope="module")
def dovecot() -> Iterator[ImapServer]:
    server = ImapServer()
    try:
        server.start()
    except ImapServerError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Dovecot unavailable: {exc}")
    yield server
    server.stop()


def _client(server: ImapServer) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(
        "127.0.0.1", server.port, ssl_context=ssl.create_default_context(cafile=str(server.ca_file))
    )
    client.login(USER, PASSWORD)
    return client


def _count(client: imaplib.IMAP4_SSL, folder: str) -> int:
    typ, data = client.status(f'"{folder}"', "(MESSAGES)")
    if typ != "OK":
        return 0
    return int(data[0].decode().rsplit("MESSAGES ", 1)[1].rstrip(")"))  # type: ignore[union-attr]


def _empty(server: ImapServer) -> None:
    client = _client(server)
    for folder in ("INBOX", "mailshot-processed"):
        typ, data = client.select(f'"{folder}"')
        if typ == "OK" and data[0] != b"0":
            client.store("1:*", "+FLAGS.SILENT", r"(\Deleted)")
            client.expunge()
    client.logout()


def _ingest_bounces() -> dict[str, Any]:
    """What the ingest-bounces flow does (without Prefect's test server: ~40 s to start on this machine)."""
    return asdict(ingest_configured(get_settings()))


def _apply_feedback() -> dict[str, Any]:
    """What the apply-feedback flow does."""
    settings = get_settings()
    return asdict(apply_all(get_engine(settings.database_url), max_fail=settings.max_fail))


def test_send_bounce_into_dovecot_ingest_then_apply(
    dovecot: ImapServer,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _empty(dovecot)
    env = {
        "DATABASE_URL": db_url,
        "SECRET_KEY": TEST_KEY,
        "BASE_URL": "https://news.example.org",
        "FROM_EMAIL": "news@example.org",
        "BOUNCE_ADDRESS": BOUNCES,
        "BOUNCE_IMAP_HOST": "127.0.0.1",
        "BOUNCE_IMAP_PORT": str(dovecot.port),
        "BOUNCE_IMAP_USER": USER,
        "BOUNCE_IMAP_PASSWORD": PASSWORD,
        "BOUNCE_IMAP_CA_FILE": str(dovecot.ca_file),
    }
    for name, value in env.items():
        monkeypatch.setenv(f"MAILSHOT_{name}", value)
    get_settings.cache_clear()
    settings = make_settings(db_url, bounce_address=BOUNCES)
    engine = engine_for(settings)
    emails = seed(engine, tmp_path, 6)  # type: ignore[arg-type]
    with DevRelay() as relay:
        mailshot_id = create(engine, make_settings(db_url, relay, bounce_address=BOUNCES))
        drive(engine, make_settings(db_url, relay, bounce_address=BOUNCES), mailshot_id)
        sent = {m.rcpt_tos[0]: m for m in relay.messages}
    assert set(sent) == set(emails)

    def verp(email: str) -> str:
        return sent[email].envelope_from

    client = _client(dovecot)
    for raw in [
        dsn(verp(emails[0]), emails[0], "5.1.1", "550 5.1.1 user unknown", original=sent[emails[0]].data),
        dsn(verp(emails[1]), emails[1], "5.2.2", "552 5.2.2 mailbox full"),
        arf("fbl@news.example.org", emails[2], f"Return-Path: <{verp(emails[2])}>\r\n".encode() + sent[emails[2]].data),
        dsn(verp(emails[4]), emails[4], "5.7.1", "550 5.7.1 rejected by policy (spam score)"),
        dsn(verp(emails[5]), emails[5], "4.4.1", "451 4.4.1 no answer yet", action="delayed"),
        dsn(verp(emails[3]).replace(".r", ".r9", 1), emails[3], "5.1.1", "550 forged"),  # bad signature
        b"From: reader@example.net\r\nSubject: Re: hello\r\n\r\nThanks!\r\n",  # an auto-reply, not a bounce
    ]:
        assert client.append("INBOX", None, None, raw)[0] == "OK"

    first = _ingest_bounces()
    assert (first["seen"], first["processed"], first["events"], len(first["left"])) == (7, 5, 4, 2)
    assert _apply_feedback()["changed"] == 4
    got = recipients(engine, mailshot_id)
    assert {e: got[e][0] for e in emails} == {
        emails[0]: "bounce",  # hard bounce
        emails[1]: "fail",  # mailbox full: soft
        emails[2]: "spam",  # feedback report
        emails[3]: "sent",  # the forged bounce changed nothing
        emails[4]: "fail",  # 5.7.1: our problem, recorded, not counted against the address
        emails[5]: "sent",  # a delay warning
    }
    with session_scope(engine) as session:
        assert get_subscriber(session, emails[2]).status == "unsubscribed"
        assert "spam complaint" in (get_subscriber(session, emails[2]).unsubscribe_reason or "")
        assert {get_subscriber(session, e).status for e in emails if e != emails[2]} == {"valid"}
        assert sendings.recount(session, mailshot_id) == sendings.stored_counters(sendings.get(session, mailshot_id))
    assert (_count(client, "INBOX"), _count(client, "mailshot-processed")) == (2, 5)  # nothing deleted

    # `mailshot ingest-bounces` again: what could not be processed is reported again, nothing else changes.
    monkeypatch.setattr(sys, "argv", ["mailshot", "ingest-bounces"])
    main()
    out, err = capsys.readouterr()
    assert "2 message(s) read: 0 processed, 0 new event(s), 2 left" in out
    assert "has no valid signature" in err and "no delivery failure found" in err
    assert _apply_feedback()["applied"] == 0
    client.logout()
    get_settings.cache_clear()


def test_imap_errors_say_what_and_where(dovecot: ImapServer) -> None:
    """A wrong password or an unverifiable certificate is one clear error; nothing is read."""
    base = {
        "bounce_imap_host": "127.0.0.1",
        "bounce_imap_port": dovecot.port,
        "bounce_imap_user": USER,
        "bounce_imap_ca_file": str(dovecot.ca_file),
    }
    with pytest.raises(BounceSourceError, match=rf"IMAP 127.0.0.1:{dovecot.port}: login as 'bounces' refused"):
        ImapBox(make_settings("sqlite://", **base, bounce_imap_password="wrong"))  # type: ignore[arg-type]
    untrusted = base | {"bounce_imap_ca_file": None}
    with pytest.raises(BounceSourceError, match=r"cannot connect over TLS: .*CERTIFICATE_VERIFY_FAILED"):
        ImapBox(make_settings("sqlite://", **untrusted, bounce_imap_password=PASSWORD))  # type: ignore[arg-type]


def test_the_flow_reads_a_maildir(prefect_harness: None, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ingest-bounces flow itself (Prefect run): no mailbox is a no-op; a non-bounce is read, not moved."""
    import mailbox

    from flows.ingest_bounces import ingest_bounces
    from mailshot_core.store.db import get_engine as engine_of

    engine_of(sqlite_url)  # migrated
    path = os.path.join(os.getcwd(), "bounces")
    box = mailbox.Maildir(path, create=True)
    box.add(b"From: reader@example.net\nSubject: hi\n\nthanks\n")
    monkeypatch.setenv("MAILSHOT_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    assert ingest_bounces()["seen"] == 0  # no mailbox configured (a site on an ESP): a quiet no-op, not a failure
    monkeypatch.setenv("MAILSHOT_BOUNCE_MAILDIR", path)
    get_settings.cache_clear()
    try:
        result = ingest_bounces()
    finally:
        get_settings.cache_clear()
    assert (result["seen"], result["processed"], len(result["left"])) == (1, 0, 1)
    assert len(box) == 1


def test_without_verp_the_quoted_message_id_and_address_must_match(sqlite_url: str, tmp_path: Path) -> None:
    """VERP off: a bounce quoting our Message-ID for that recipient counts; with VERP on it is not trusted."""
    import mailbox

    settings = make_settings(sqlite_url)
    engine = engine_for(settings)
    emails = seed(engine, tmp_path, 2)
    with DevRelay() as relay:
        mailshot_id = create(engine, make_settings(sqlite_url, relay))
        drive(engine, make_settings(sqlite_url, relay), mailshot_id)
        sent = {m.rcpt_tos[0]: m for m in relay.messages}
    assert sent[emails[0]].envelope_from == "news@example.org"  # no VERP
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    original = sent[emails[0]].data
    box.add(dsn("news@example.org", emails[0], "5.1.1", "550 5.1.1 unknown", original=original))
    box.add(dsn("news@example.org", emails[1], "5.1.1", "550 5.1.1 unknown", original=original))  # wrong pair
    strict = ingest(engine, TEST_KEY.encode(), MaildirBox(tmp_path / "bounces", "done"), trust_message_id=False)
    assert (strict.processed, len(strict.left)) == (0, 2)
    report = ingest(engine, TEST_KEY.encode(), MaildirBox(tmp_path / "bounces", "done"), trust_message_id=True)
    assert (report.processed, report.events, len(report.left)) == (1, 1, 1)
    apply_all(engine)
    assert recipients(engine, mailshot_id) == {emails[0]: ("bounce", 1), emails[1]: ("sent", 1)}
