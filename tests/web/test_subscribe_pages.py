"""The public subscription pages over real HTTP (uvicorn), on SQLite and PostgreSQL, with the dev relay
receiving the confirmation messages: the double opt-in journey, bad links, graceful, no enumeration,
the honeypot, the throttles, the preferences page, and the access log that never shows a token."""

from __future__ import annotations

import email
import email.policy
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from conftest import engine_for, make_settings
from fakes.webhooks import WebServer, free_socket
from helpers import create, drive, recipients
from mailshot_core.audience import lists, subscribers, subscriptions
from mailshot_core.config import Settings
from mailshot_core.content.tokens import UNSUBSCRIBE, make_token
from mailshot_core.devtools.relay import DevRelay
from mailshot_core.sending import confirmations
from mailshot_core.store import db
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import Subscriber
from mailshot_core.web import preferences
from mailshot_core.web.server import ACCESS_LOGGER
from pagesite import csrf_of

CONFIRM_LINK = re.compile(r"(http://127\.0\.0\.1:\d+/confirm/(\S+))")
SENT = "Check your inbox"
ADMIN_PASSWORD = "subscribe-pages-test"


@dataclass
class Site:
    engine: Engine
    settings: Settings
    web: WebServer
    relay: DevRelay

    def client(self, **headers: str) -> httpx.Client:
        return httpx.Client(base_url=self.web.url, timeout=30, headers=headers)

    def subscribe(self, client: httpx.Client, address: str, *chosen: str, **fields: str) -> httpx.Response:
        return client.post("/subscribe", data={"email": address, "nom": "", "list": list(chosen), **fields})

    def confirmation(self, address: str, count: int) -> tuple[str, str]:
        """(link, token) of the latest confirmation message to ``address``, once the relay has ``count``
        messages in all (they are sent after the answer)."""
        assert self.relay.wait_for(count, timeout=30) >= count, "the confirmation message did not arrive"
        mine = [m for m in self.relay.messages if m.rcpt_tos == [address]]
        assert mine, f"no message to {address}"
        msg = email.message_from_bytes(mine[-1].data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        found = CONFIRM_LINK.search(msg.get_content())
        assert found, "no confirmation link in the message"
        return found[1], found[2]

    def states(self, address: str) -> dict[str, str]:
        with session_scope(self.engine) as session:
            return {name: state for name, state, _ in subscribers.history(session, address).subscriptions}

    def trail(self, address: str) -> list[tuple[str, str, str]]:
        with session_scope(self.engine) as session:
            sub = subscribers.get_subscriber(session, address)
            return [(e.action, e.list, e.source) for e in subscriptions.trail(session, sub.id or 0)]

    def subscriber_id(self, address: str) -> int:
        with session_scope(self.engine) as session:
            sub_id = subscribers.get_subscriber(session, address).id
            assert sub_id is not None
            return sub_id

    def exists(self, address: str) -> bool:
        with session_scope(self.engine) as session:
            return session.exec(select(Subscriber).where(Subscriber.email == address)).first() is not None


@contextmanager
def public_site(url: str) -> Iterator[Site]:
    """Lists: news (open, double opt-in, with a description), offers (open, double opt-in, French),
    direct (open, single opt-in), staff (closed).  known@ is on news; left@ left every list.  The web
    app logs its access lines (to check that no token is in them)."""
    sock = free_socket()
    with DevRelay() as relay:
        web_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = make_settings(url, relay, base_url=web_url, admin_password=ADMIN_PASSWORD)
        engine = engine_for(settings)
        with session_scope(engine) as session:
            lists.create_list(
                session, "news", "Weekly news", open=True, description="Every Friday, the week's articles."
            )
            lists.create_list(session, "offers", "Offres", open=True, lang="fr")
            lists.create_list(session, "direct", "Announcements", open=True, double_optin=False)
            lists.create_list(session, "staff", "Staff only")
            subscriptions.subscribe(session, "known@example.com", ["news"], force=True, source="cli")
            subscriptions.subscribe(session, "left@example.com", ["news", "staff"], force=True, source="cli")
            subscribers.unsubscribe(session, "left@example.com", None, reason="left")
        with WebServer(settings, sock, log_level="info") as web:
            yield Site(engine, settings, web, relay)


@pytest.fixture
def site(db_url: str) -> Iterator[Site]:
    with public_site(db_url) as s:
        yield s
    db.dispose_engines()


@pytest.fixture
def sqlite_site(sqlite_url: str) -> Iterator[Site]:
    with public_site(sqlite_url) as s:
        yield s


@contextmanager
def access_log() -> Iterator[list[str]]:
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    keep = Keep()
    logging.getLogger(ACCESS_LOGGER).addHandler(keep)
    try:
        yield lines
    finally:
        logging.getLogger(ACCESS_LOGGER).removeHandler(keep)


# --- the journey ------------------------------------------------------------------------------------


def test_a_visitor_subscribes_confirms_by_the_emailed_link_and_receives_the_next_sending(site: Site) -> None:
    """Form -> "check your inbox" -> the relay receives the confirmation -> GET shows a button and
    changes nothing (mail scanners) -> POST confirms -> the next sending reaches the address; a second
    POST says it is already done.  The access log shows none of the link's token."""
    with access_log() as lines, site.client() as client:
        form = client.get("/subscribe", params={"list": "news"})
        assert form.status_code == 200
        assert 'value="news" checked' in form.text and 'value="offers">' in form.text
        assert "Every Friday" in form.text and "staff" not in form.text  # open lists only
        assert (
            form.headers["referrer-policy"] == "same-origin"
            and "script-src 'none'" in form.headers["content-security-policy"]
        )

        answer = site.subscribe(client, "Visitor@Example.com", "news", nom="Vi")
        assert answer.status_code == 200 and SENT in answer.text and "visitor@example.com" in answer.text
        link, token = site.confirmation("visitor@example.com", 1)
        assert site.states("visitor@example.com") == {"news": "pending"}

        page = client.get(link)
        assert page.status_code == 200 and "Confirm my subscription" in page.text
        assert page.headers["referrer-policy"] == "no-referrer"  # the token never leaves in a Referer
        assert site.states("visitor@example.com") == {"news": "pending"}  # a GET changes nothing

        before = create(site.engine, site.settings)
        drive(site.engine, site.settings, before)
        assert "visitor@example.com" not in recipients(site.engine, before)

        done = client.post(link)
        assert done.status_code == 200 and "You are subscribed" in done.text and "Weekly news" in done.text
        assert site.states("visitor@example.com") == {"news": "valid"}
        again = client.post(link)
        assert again.status_code == 200 and "already confirmed" in again.text
        assert "already confirmed" in client.get(link).text
    assert site.trail("visitor@example.com") == [("requested", "news", "page"), ("confirmed", "news", "link")]
    after = create(site.engine, site.settings)
    drive(site.engine, site.settings, after)
    assert recipients(site.engine, after)["visitor@example.com"][0] == "sent"
    confirms = [line for line in lines if "/confirm/" in line]
    assert len(confirms) == 4 and all("/confirm/***" in line for line in confirms), lines
    assert not any(token in line for line in lines)


def test_an_altered_or_expired_link_confirms_nothing_and_says_so(site: Site) -> None:
    """A link with one character changed, another subscriber's id, or older than
    MAILSHOT_CONFIRM_LINK_DAYS: a page saying it is invalid or expired, linking to /subscribe; the
    subscription stays pending."""
    with site.client() as client:
        site.subscribe(client, "a@example.com", "news")
        _, token = site.confirmation("a@example.com", 1)
        ids, mac = token.rsplit(".", 1)
        sub_id, issued = ids.split(".")
        altered = [
            f"{ids}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",
            f"{int(sub_id) + 1}.{issued}.{mac}",
            f"{sub_id}.{int(issued) + 1}.{mac}",
        ]
        old = int(time.time()) - (site.settings.confirm_link_days * 86400 + 60)
        expired = confirmations.link_for(site.settings, int(sub_id), issued=old).rsplit("/", 1)[1]
        for bad in [*altered, expired]:
            for response in (client.get(f"/confirm/{bad}"), client.post(f"/confirm/{bad}")):
                assert response.status_code == 404
                assert "invalid or has expired" in response.text and 'href="/subscribe"' in response.text
    assert site.states("a@example.com") == {"news": "pending"}


def test_same_answer_whatever_the_address_and_graceful_never_resubscribes(site: Site) -> None:
    """New, already subscribed, pending, unsubscribed: the same page (no enumeration).  The address
    that left is not subscribed again and gets no message; the known one gets none either (nothing to
    confirm); the new and the pending one get their link."""
    with site.client() as client:
        site.subscribe(client, "pending@example.com", "news")
        site.confirmation("pending@example.com", 1)
        answers = {
            address: site.subscribe(client, address, "news")
            for address in ("new@example.com", "known@example.com", "pending@example.com", "left@example.com")
        }
    bodies = {a: r.text.replace(a, "ADDRESS") for a, r in answers.items()}
    assert {r.status_code for r in answers.values()} == {200}
    assert len(set(bodies.values())) == 1, "the answer tells one address from another"
    assert site.states("left@example.com") == {"news": "refused", "staff": "refused"}
    with session_scope(site.engine) as session:
        assert subscribers.get_subscriber(session, "left@example.com").status == "unsubscribed"
    assert ("requested", "news", "page") not in site.trail("left@example.com")
    site.confirmation("new@example.com", 3)
    site.confirmation("pending@example.com", 3)
    assert sorted(m.rcpt_tos[0] for m in site.relay.messages) == [
        "new@example.com",
        "pending@example.com",
        "pending@example.com",
    ]


def test_single_opt_in_lists_are_joined_at_once_with_the_same_answer(sqlite_site: Site) -> None:
    with sqlite_site.client() as client:
        answer = sqlite_site.subscribe(client, "b@example.com", "direct")
    assert answer.status_code == 200 and SENT in answer.text
    assert sqlite_site.states("b@example.com") == {"direct": "valid"}
    assert sqlite_site.relay.received_count == 0


# --- bad input and abuse ----------------------------------------------------------------------------


def test_bad_input_shows_the_form_again_with_its_values_and_changes_nothing(sqlite_site: Site) -> None:
    site = sqlite_site
    with site.client() as client:
        bad = site.subscribe(client, "not an address", "news", "offers", nom="Ann <b>", lang="it")
        assert bad.status_code == 400 and "invalid address" in bad.text
        assert 'value="not an address"' in bad.text and 'value="Ann &lt;b&gt;"' in bad.text
        assert 'value="news" checked' in bad.text and 'value="offers" checked' in bad.text
        assert '<option value="it" selected>' in bad.text
        none = site.subscribe(client, "c@example.com")
        assert none.status_code == 400 and "Choose at least one list" in none.text
        closed = site.subscribe(client, "c@example.com", "staff")
        assert closed.status_code == 400 and "not open to subscription" in closed.text
        crlf = site.subscribe(client, "c@example.com", "news", nom="x\r\nBcc: y@example.com")
        assert crlf.status_code == 400
    assert not site.exists("c@example.com")


def test_honeypot_same_answer_nothing_done(sqlite_site: Site) -> None:
    """A bot fills the hidden ``website`` field: the visitor's answer, and nothing stored or sent."""
    with sqlite_site.client() as client:
        answer = sqlite_site.subscribe(client, "bot@example.com", "news", website="http://spam.example")
        real = sqlite_site.subscribe(client, "person@example.com", "news")
    assert answer.text.replace("bot@example.com", "X") == real.text.replace("person@example.com", "X")
    assert not sqlite_site.exists("bot@example.com")
    sqlite_site.confirmation("person@example.com", 1)
    assert [m.rcpt_tos for m in sqlite_site.relay.messages] == [["person@example.com"]]


def test_another_sites_form_and_oversized_bodies_are_refused(sqlite_site: Site) -> None:
    site = sqlite_site
    with site.client(origin="https://evil.example") as client:
        foreign = site.subscribe(client, "d@example.com", "news")
    with site.client() as client:
        huge = client.post(
            "/subscribe",
            content=b"email=d%40example.com&list=news&x=" + b"a" * 17_000,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        ours = site.subscribe(client, "e@example.com", "news", nom="")
    assert foreign.status_code == 403 and huge.status_code == 413
    assert not site.exists("d@example.com")
    assert ours.status_code == 200  # the form posted from this site (no Origin, or ours) works


def test_per_client_and_per_address_throttles(sqlite_site: Site) -> None:
    """Five posts per client in ten minutes, the sixth is 429; an address gets at most three
    confirmation requests a day: the fourth gets the same answer, and nothing is recorded or sent."""
    site = sqlite_site
    with site.client() as client:
        answers = [site.subscribe(client, "f@example.com", "news") for _ in range(4)]
        assert [r.status_code for r in answers] == [200] * 4
        assert len({r.text for r in answers}) == 1
        fifth = site.subscribe(client, "g@example.com", "news")
        sixth = site.subscribe(client, "h@example.com", "news")
    assert fifth.status_code == 200
    assert sixth.status_code == 429 and "Too many requests" in sixth.text and int(sixth.headers["retry-after"]) > 0
    assert not site.exists("h@example.com")
    assert [a for a, _, _ in site.trail("f@example.com")] == ["requested"] * 3
    site.confirmation("g@example.com", 4)
    assert sorted(m.rcpt_tos[0] for m in site.relay.messages) == ["f@example.com"] * 3 + ["g@example.com"]


def test_french_pages_from_the_list_or_the_browser(sqlite_site: Site) -> None:
    """The pages speak the list's language, else the browser's; the visitor chooses the messages'."""
    with sqlite_site.client(**{"accept-language": "de-CH, fr;q=0.8, en;q=0.5"}) as client:
        assert "M&#39;inscrire" in client.get("/subscribe").text
    with sqlite_site.client() as client:
        assert "M&#39;inscrire" in client.get("/subscribe", params={"list": "offers"}).text  # the list's language
        assert "M&#39;inscrire" not in client.get("/subscribe").text
        answer = sqlite_site.subscribe(client, "i@example.com", "offers")
        german = sqlite_site.subscribe(client, "k@example.com", "news", lang="de")
        kept = sqlite_site.subscribe(client, "l@example.com", "offers", page_lang="en")
    assert "Consultez votre boîte" in answer.text
    assert SENT in kept.text  # the answer keeps the language the form was shown in
    assert SENT in german.text  # the page speaks English; the messages will be in German
    sqlite_site.confirmation("k@example.com", 3)
    [to_k] = [m for m in sqlite_site.relay.messages if m.rcpt_tos == ["k@example.com"]]
    assert "Bitte bestätigen" in str(email.message_from_bytes(to_k.data, policy=email.policy.default)["Subject"])


# --- preferences ------------------------------------------------------------------------------------


def test_preferences_from_the_unsubscribe_page_join_and_leave(site: Site) -> None:
    """The unsubscribe page of a message links to the preferences page; it shows the open lists and
    the closed ones the address is on; saving joins and leaves (trail source "preferences").  Altered
    or expired links show nothing; no token reaches the access log."""
    with session_scope(site.engine) as session:
        subscriptions.subscribe(session, "known@example.com", ["staff"], force=True, source="cli")
    sending = create(site.engine, site.settings)
    sub_id = site.subscriber_id("known@example.com")
    key = site.settings.secret_key.get_secret_value().encode()
    with access_log() as lines, site.client() as client:
        unsub = client.get(f"/u/{make_token(key, UNSUBSCRIBE, sending, sub_id)}")
        found = re.search(r'href="(http://[^"]+/preferences/([^"]+))"', unsub.text)
        assert unsub.status_code == 200 and found, unsub.text
        link, token = found[1], found[2]
        page = client.get(link)
        assert page.status_code == 200 and "known@example.com" in page.text
        assert 'value="news" checked' in page.text and 'value="offers">' in page.text
        assert 'value="staff" checked' in page.text and "closed: you can leave it" in page.text
        saved = client.post(link, data={"list": ["offers", "direct"]})
        assert saved.status_code == 200 and "Your choices are saved" in saved.text
        assert site.states("known@example.com") == {
            "news": "refused",
            "offers": "valid",
            "direct": "valid",
            "staff": "refused",
        }
        refused = client.post(link, data={"list": ["offers", "staff"]})  # a closed list cannot be joined
        assert refused.status_code == 400 and "cannot be chosen here" in refused.text
        assert site.states("known@example.com")["staff"] == "refused"
        expired = preferences.link_for(site.settings, sub_id, issued=int(time.time()) - 8 * 86400)
        for bad in (expired, link[:-2] + ("AA" if not link.endswith("AA") else "BB")):
            assert client.get(bad).status_code == 404
            assert client.post(bad, data={"list": ["news"]}).status_code == 404
    assert site.states("known@example.com")["news"] == "refused"
    trail = site.trail("known@example.com")
    assert ("subscribed", "offers", "preferences") in trail and ("unsubscribed", "news", "preferences") in trail
    prefs = [line for line in lines if "/preferences/" in line]
    assert len(prefs) == 7 and all("/preferences/***" in line for line in prefs), lines
    assert not any(token in line for line in lines)


# --- the operator's view ----------------------------------------------------------------------------


def test_the_admin_subscriber_page_shows_pending_subscriptions_and_the_trail(sqlite_site: Site) -> None:
    site = sqlite_site
    with site.client() as visitor:
        site.subscribe(visitor, "j@example.com", "news", "offers")
    with site.client() as operator:
        form = operator.get("/admin/login")
        login = {"csrf": csrf_of(form.text), "user": "admin", "password": ADMIN_PASSWORD, "next": "/admin/"}
        assert operator.post("/admin/login", data=login).status_code == 303
        page = operator.get("/admin/subscriber", params={"email": "j@example.com"}).text
    assert "Waiting for the address to confirm (double opt-in): news, offers." in page
    trail = page.split("Opt-in trail", 1)[1]
    rows = re.findall(
        r"<tr><td[^>]*>[^<]*</td><td>(\w+)</td><td>(\w+)</td><td>(\w+)</td>\s*<td[^>]*>([^<]*)</td>", trail
    )
    assert sorted(rows) == [("requested", "news", "page", "127.0.0.1"), ("requested", "offers", "page", "127.0.0.1")]
