"""Sendings through the API, over real HTTP on SQLite and PostgreSQL: created, tested and started through
the API, a sending goes out exactly like the one `mailshot create --send` makes (same recipients, same
messages but for their ids and dates); its id and counters come back; the operator's actions keep the
CLI's rules; the recipients page through by status."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from apisite import ApiSite, problem, serve
from helpers import HTML, drive
from mailshot_core.cli import main
from mailshot_core.config import get_settings
from mailshot_core.devtools.relay import ReceivedMessage

SUBJECT = "Hello {{ nom }}"
PEOPLE = [{"email": f"p{i}@example.com", "nom": f"Person {i}", "lang": "fr"} for i in range(5)]
# What differs between two sendings of the same content: their ids (in Message-ID, the signed links, the
# VERP address, X-Mailshot-*) and the time.
_VARYING = re.compile(r"(?m)^(Date|Message-ID): .*$|https://news\.example\.org/\S+?(?=[\s\"<>)]|$)|=_mailshot_[0-9_]+")


@pytest.fixture(scope="module")
def api_site(module_db_url: str) -> Iterator[ApiSite]:
    with serve(module_db_url) as site:
        with site.client() as c:
            assert c.post("/subscribers/import?list=news", json=PEOPLE).json()["new_subscriptions"] == 5
        yield site


def _shape(message: ReceivedMessage) -> tuple[str, str]:
    """(recipient, the message with what varies between sendings masked), headers unfolded."""
    parsed = message_from_bytes(message.data, policy=policy.default)
    lines = [
        f"{k}: {re.sub(r'[0-9]+', 'N', v) if k.lower().startswith('x-mailshot') else v}" for k, v in parsed.items()
    ]
    parts = [p.get_content() for p in parsed.walk() if not p.is_multipart()]
    return message.rcpt_tos[0], _VARYING.sub("*", "\n".join(lines + parts))


def _cli_sending(
    site: ApiSite, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> int:
    s = site.settings
    env = {
        "MAILSHOT_DATABASE_URL": s.database_url,
        "MAILSHOT_SMTP_HOST": s.smtp_host,
        "MAILSHOT_SMTP_PORT": str(s.smtp_port),
        "MAILSHOT_FROM_EMAIL": s.from_email,
        "MAILSHOT_BASE_URL": s.base_url,
        "MAILSHOT_SECRET_KEY": s.secret_key.get_secret_value(),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "news.html").write_text(HTML)
    args = ["create", "--subject", SUBJECT, "--html", str(tmp_path / "news.html"), "--list", "news", "--send"]
    monkeypatch.setattr(sys, "argv", ["mailshot", *args])
    get_settings.cache_clear()
    try:
        main()
    finally:
        get_settings.cache_clear()
    return int(capsys.readouterr().out.split()[-1])


def test_an_api_sending_goes_out_like_the_cli_one(
    api_site: ApiSite, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """create (a draft) -> test -> send through the API, delivered: the same messages as `mailshot create
    --send`'s to the same recipients; the id and the counters come back through the API."""
    relay = api_site.relay
    with api_site.client("send") as c:
        created = c.post("/sendings", json={"subject": SUBJECT, "html": HTML, "lists": ["news"]})
        assert created.status_code == 201 and created.json()["status"] == "draft"
        sending = created.json()["id"]
        before = len(relay.messages)
        tested = c.post(f"/sendings/{sending}/test", json={"email": "Checker@Example.org"})
        assert tested.status_code == 200 and tested.json()["email"] == "checker@example.org"
        test_message = relay.messages[before]
        assert test_message.rcpt_tos == ["checker@example.org"] and b"Subject: [TEST] " in test_message.data
        assert c.get(f"/sendings/{sending}").json()["counters"]["total"] == 0  # a test changes nothing
        sent = c.post(f"/sendings/{sending}/send")
        assert sent.status_code == 200 and sent.json()["status"] == "processing"
        assert api_site.started[-1] == (sending, None)  # the run is started now, as the pages' Send starts it
    first = len(relay.messages)
    drive(api_site.engine, api_site.settings, sending)
    through_api = sorted(_shape(m) for m in relay.messages[first:])

    cli = _cli_sending(api_site, monkeypatch, tmp_path, capsys)
    second = len(relay.messages)
    drive(api_site.engine, api_site.settings, cli)
    through_cli = sorted(_shape(m) for m in relay.messages[second:])

    assert [r for r, _ in through_api] == sorted(p["email"] for p in PEOPLE)
    assert through_api == through_cli
    with api_site.client("read") as c:
        got = c.get(f"/sendings/{sending}").json()
    assert got["id"] == sending and got["status"] == "end"
    assert got["counters"] | {"total": 5, "sent": 5, "current": 5} == got["counters"]


def test_actions_keep_the_cli_rules(api_site: ApiSite) -> None:
    """pause only what runs, resume only what is paused (409 otherwise, nothing changes); cancel kills the rest."""
    with api_site.client("send") as c:
        sending = c.post("/sendings", json={"subject": "s", "html": "<p>x</p>", "lists": ["news"]}).json()["id"]
        problem(c.post(f"/sendings/{sending}/pause"), 409)
        problem(c.post(f"/sendings/{sending}/resume"), 409)
        assert c.get(f"/sendings/{sending}").json()["status"] == "draft"
        assert c.post(f"/sendings/{sending}/send").json()["status"] == "processing"
        paused = c.post(f"/sendings/{sending}/pause").json()
        assert paused["status"] == "pause" and "API" in paused["reason"]
        assert c.post(f"/sendings/{sending}/resume").json()["status"] == "processing"
        assert c.post(f"/sendings/{sending}/cancel").json()["status"] == "cancel"
        problem(c.post(f"/sendings/{sending}/send"), 409)
        problem(c.post("/sendings/999999/send"), 404)


def test_recipients_page_by_status_and_sendings_list(api_site: ApiSite) -> None:
    """Recipients by id, a page at a time, filtered by status; the sendings list pages newest first."""
    with api_site.client("send") as c:
        sending = c.post(
            "/sendings", json={"subject": "s", "html": "<p>x</p>", "lists": ["news"], "send": True}
        ).json()["id"]
    drive(api_site.engine, api_site.settings, sending)
    with api_site.client("read") as c:
        seen, cursor = [], None
        while True:
            page = c.get(
                f"/sendings/{sending}/recipients", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
            ).json()
            seen += [r["email"] for r in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(p["email"] for p in PEOPLE) and len(seen) == 5
        assert c.get(f"/sendings/{sending}/recipients", params={"status": "todo"}).json()["items"] == []
        problem(c.get(f"/sendings/{sending}/recipients", params={"status": "nonsense"}), 422)
        listed = c.get("/sendings", params={"limit": 1}).json()
        assert listed["items"][0]["id"] == sending and listed["next_cursor"]
        older = c.get("/sendings", params={"limit": 1, "cursor": listed["next_cursor"]}).json()
        assert older["items"][0]["id"] < sending


def test_one_message_and_feedback_go_through_the_same_paths(api_site: ApiSite) -> None:
    """POST /messages sends one message of a sending to any address ([TEST] or as recipients get it, with
    the sending's headers); POST /feedback records an event through the inbox: a hard bounce moves the
    recipient and its counter; the same event id twice is recorded once."""
    with api_site.client("send") as c:
        sending = c.post("/sendings", json={"subject": SUBJECT, "html": HTML, "lists": ["news"], "send": True}).json()[
            "id"
        ]
        drive(api_site.engine, api_site.settings, sending)
        before = len(api_site.relay.messages)
        for test in (True, False):
            r = c.post("/messages", json={"sending_id": sending, "email": "p1@example.com", "test": test})
            assert r.status_code == 201 and r.json()["email"] == "p1@example.com"
        test_copy, real_copy = api_site.relay.messages[before:]
        assert b"Subject: [TEST] Hello Person 1" in test_copy.data
        assert b"Subject: Hello Person 1" in real_copy.data and b"List-Unsubscribe:" in real_copy.data
        assert c.get(f"/sendings/{sending}").json()["counters"]["sent"] == 5  # a copy is no recipient's
        event = {"sending_id": sending, "email": "P2@example.com", "kind": "hard_bounce", "event_id": "bp-1"}
        assert c.post("/feedback", json=event).json() == {"event_id": "bp-1", "recorded": True}
        assert c.post("/feedback", json=event).json() == {"event_id": "bp-1", "recorded": False}
        api_site.web.settle()
        got = c.get(f"/sendings/{sending}").json()["counters"]
        assert got["nb_bounce"] == 1
        bounced = c.get(f"/sendings/{sending}/recipients", params={"status": "bounce"}).json()["items"]
        assert [r["email"] for r in bounced] == ["p2@example.com"]
        problem(c.post("/feedback", json={**event, "sending_id": 999999, "event_id": "bp-2"}), 404)
        problem(c.post("/feedback", json={**event, "kind": "machine_read", "event_id": "bp-3"}), 422)


def test_a_scheduled_sending_gets_its_run_for_its_time(api_site: ApiSite) -> None:
    """As `mailshot create --start-at` does: the sending is scheduled (init) and its run made for that time."""
    when = datetime.now(UTC) + timedelta(days=2)
    with api_site.client("send") as c:
        r = c.post(
            "/sendings", json={"subject": "s", "html": "<p>x</p>", "lists": ["news"], "start_at": when.isoformat()}
        )
    assert r.status_code == 201 and r.json()["status"] == "init"
    assert api_site.started[-1] == (r.json()["id"], when)
