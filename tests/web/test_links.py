"""The links every message carries, followed over real HTTP (uvicorn) as mail clients and readers do:
one-click unsubscribe (RFC 8058) read from the message the relay received, the unsubscribe page, the
open pixel and the click redirects (statuses, counters, machine hits), and forged links."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from conftest import TEST_KEY, engine_for, make_settings
from fakes.webhooks import WebServer, free_socket
from helpers import create, drive, seed
from mailshot_core.config import Settings
from mailshot_core.content.tokens import TRACK, UNSUBSCRIBE, make_token
from mailshot_core.devtools.relay import DevRelay
from mailshot_core.feedback import tracking
from mailshot_core.sending import archive, sendings, tracked_links
from mailshot_core.store import db
from mailshot_core.store.models import (
    FeedbackEvent,
    Mailshot,
    Recipient,
    Subscriber,
    Subscription,
    utcnow,
)
from pagesite import csrf_of

HTML = (
    "<html><body><p>Hello {{ nom }}</p>"
    '<p><a href="https://example.org/article?id=1&amp;utm=news">Read the article</a></p>'
    "<p><a href='https://example.org/agenda'>Agenda</a> <a href=\"mailto:team@example.org\">Write to us</a></p>"
    '<p><a href="{{ url_unsubscribe }}">Unsubscribe</a></p></body></html>'
)
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


@dataclass
class Site:
    engine: Engine
    settings: Settings
    web: WebServer
    mailshot_id: int
    messages: dict[str, EmailMessage]  # recipient address -> the message the relay received

    def html(self, address: str) -> str:
        return str(self.messages[address].get_body(("html",)).get_content())  # type: ignore[union-attr]

    def unsubscribe_url(self, address: str) -> str:
        return str(self.messages[address]["List-Unsubscribe"]).split(",")[0].strip().strip("<>")

    def pixel(self, address: str) -> str:
        match = re.search(r'<img src="([^"]+/o/[^"]+)"', self.html(address))
        assert match, "no open pixel in the HTML"
        return match[1]

    def links(self, address: str) -> list[str]:
        return re.findall(r'href="([^"]+/c/[^"]+)"', self.html(address))

    def counters(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """(stored, recount of the rows, stored machine counters == their recount)."""
        with Session(self.engine) as session:
            m = sendings.get(session, self.mailshot_id)
            machine = {"nb_read_machine": m.nb_read_machine, "nb_clic_machine": m.nb_clic_machine}
            assert machine == tracking.machine_recount(session, self.mailshot_id)
            return sendings.stored_counters(m), sendings.recount(session, self.mailshot_id), machine

    def status(self, address: str) -> str:
        with Session(self.engine) as session:
            return session.exec(
                select(Recipient.status).where(
                    Recipient.mailshot_id == self.mailshot_id, col(Recipient.email) == address
                )
            ).one()


def subscriptions(engine: Engine, address: str) -> dict[str, str]:
    from mailshot_core.store.models import MailingList

    with Session(engine) as session:
        rows = session.exec(
            select(MailingList.identifier, Subscription.status)
            .join(Subscription, col(Subscription.list_id) == MailingList.id)
            .join(Subscriber, col(Subscriber.id) == Subscription.subscriber_id)
            .where(Subscriber.email == address)
        ).all()
    return dict(rows)


def web_events(engine: Engine, address: str) -> list[tuple[str, str | None]]:
    with Session(engine) as session:
        rows = session.exec(
            select(FeedbackEvent.kind, FeedbackEvent.detail)
            .where(FeedbackEvent.email == address, FeedbackEvent.source == "web")
            .order_by(col(FeedbackEvent.id))
        ).all()
    return list(rows)


@contextmanager
def site(url: str, tmp: Path, **overrides: object) -> Iterator[Site]:
    """Eight subscribers of "news" (u0..u2 also on "offers"), one tracked sending to "news" sent through
    the dev relay with MAILSHOT_BASE_URL pointing at the web app, and the web app under uvicorn."""
    sock = free_socket()
    web_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with DevRelay() as relay:
        settings = make_settings(
            url, relay, base_url=web_url, tracking_machine_seconds=0, admin_password="links-test", **overrides
        )
        engine = engine_for(settings)
        seed(engine, tmp, 8)
        seed(engine, tmp, 3, list_name="offers")
        mid = create(engine, settings, html=HTML)
        drive(engine, settings, mid)
        received = {
            m.rcpt_tos[0]: email.message_from_bytes(m.data, policy=email.policy.default) for m in relay.messages
        }
    assert len(received) == 8
    with WebServer(settings, sock) as web:
        yield Site(engine, settings, web, mid, received)  # type: ignore[arg-type]


@pytest.fixture
def news(db_url: str, tmp_path: Path) -> Iterator[Site]:
    with site(db_url, tmp_path) as s:
        yield s
    db.dispose_engines()


# --- one-click and the unsubscribe page ----------------------------------------------------------------


def test_one_click_post_to_the_received_list_unsubscribe_url_unsubscribes(news: Site) -> None:
    """RFC 8058: the mail client POSTs ``List-Unsubscribe=One-Click`` (multipart, urlencoded, or no
    body) to the message's List-Unsubscribe URL, without cookies: 200 at once, no redirect, the address
    leaves the sending's list (and keeps its other lists), the recipient becomes ``unsub`` with the
    counters, the event is recorded; a repeat changes nothing."""
    msg = news.messages["u0@example.com"]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = news.unsubscribe_url("u0@example.com")
    assert url.startswith(news.web.url + "/u/") and url in news.html("u0@example.com")

    with httpx.Client(timeout=10, follow_redirects=False) as client:
        multipart = client.post(url, files={"List-Unsubscribe": (None, "One-Click")})
        assert multipart.status_code == 200, multipart.text
        assert "set-cookie" not in multipart.headers and not multipart.is_redirect
        assert subscriptions(news.engine, "u0@example.com") == {"news": "refused", "offers": "valid"}
        assert news.status("u0@example.com") == "unsub"
        [(kind, detail)] = web_events(news.engine, "u0@example.com")
        assert kind == "unsub" and detail is not None and "one-click" in detail and "list news" in detail

        again = client.post(url, files={"List-Unsubscribe": (None, "One-Click")})
        assert again.status_code == 200
        assert len(web_events(news.engine, "u0@example.com")) == 1  # nothing happened, nothing recorded

        urlencoded = client.post(
            news.unsubscribe_url("u1@example.com"),
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        no_body = client.post(news.unsubscribe_url("u5@example.com"))
    assert (urlencoded.status_code, no_body.status_code) == (200, 200)
    assert subscriptions(news.engine, "u1@example.com") == {"news": "refused", "offers": "valid"}
    assert subscriptions(news.engine, "u5@example.com") == {"news": "refused"}
    with Session(news.engine) as session:  # left every list it was on: the subscriber is unsubscribed
        assert (
            session.exec(select(Subscriber.status).where(Subscriber.email == "u5@example.com")).one() == "unsubscribed"
        )
    stored, recount, _ = news.counters()
    assert stored == recount and stored["nb_unsub"] == 3


def test_the_unsubscribe_page_asks_first_and_offers_one_list_or_all(news: Site) -> None:
    """GET (what link scanners do) shows a page and unsubscribes nobody; the page's POST leaves the
    chosen list, or every list; a choice that is not one of the sending's lists is refused."""
    url = news.unsubscribe_url("u2@example.com")
    page = httpx.get(url)
    assert page.status_code == 200 and "u2@example.com" in page.text
    assert 'value="news"' in page.text and 'value="*"' in page.text and "Hello {{ nom }}" not in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert subscriptions(news.engine, "u2@example.com") == {"news": "valid", "offers": "valid"}

    bad = httpx.post(url, data={"choice": "offers"})  # offers is a list, but not this sending's
    assert bad.status_code == 400 and "not one of this sending" in bad.text
    assert subscriptions(news.engine, "u2@example.com") == {"news": "valid", "offers": "valid"}

    done = httpx.post(url, data={"choice": "*"})
    assert done.status_code == 200 and "left all our lists" in done.text
    assert subscriptions(news.engine, "u2@example.com") == {"news": "refused", "offers": "refused"}
    assert news.status("u2@example.com") == "unsub"
    assert "Already unsubscribed" in httpx.get(url).text

    one = httpx.post(news.unsubscribe_url("u6@example.com"), data={"choice": "news"})
    assert one.status_code == 200 and "left the list" in one.text and "News" in one.text


def test_the_unsubscribe_link_still_works_once_the_sending_is_archived(news: Site) -> None:
    """The link names the subscriber, not the purged recipient row: a year-old message still unsubscribes."""
    with Session(news.engine) as session:
        archive.archive(session, sendings.get(session, news.mailshot_id), utcnow() + timedelta(days=400))
        session.commit()
    response = httpx.post(news.unsubscribe_url("u3@example.com"), files={"List-Unsubscribe": (None, "One-Click")})
    assert response.status_code == 200
    assert subscriptions(news.engine, "u3@example.com") == {"news": "refused"}


def test_links_of_messages_sent_before_the_upgrade_name_their_recipient(news: Site) -> None:
    """Earlier releases signed (sending, *recipient*) under the old purpose: such a link unsubscribes
    that recipient's address (the recipient id is no subscriber id), and once the row is purged it is
    refused rather than guessed."""
    from mailshot_core.content.tokens import LEGACY_UNSUBSCRIBE
    from mailshot_core.sending import lifecycle

    offers = create(news.engine, news.settings, lists=("offers",), html=HTML)
    lifecycle.start_sending(news.engine, news.settings, offers)  # recipients 9.. : no subscriber has those ids

    def recipient_id(mailshot_id: int, address: str) -> int:
        with Session(news.engine) as session:
            return session.exec(
                select(Recipient.id).where(Recipient.mailshot_id == mailshot_id, col(Recipient.email) == address)
            ).one()

    rid = recipient_id(offers, "u0@example.com")
    with Session(news.engine) as session:
        assert session.get(Subscriber, rid) is None
    old = make_token(TEST_KEY.encode(), LEGACY_UNSUBSCRIBE, offers, rid)
    assert httpx.post(f"{news.web.url}/u/{old}").status_code == 200
    assert subscriptions(news.engine, "u0@example.com") == {"news": "valid", "offers": "refused"}

    archived = make_token(
        TEST_KEY.encode(), LEGACY_UNSUBSCRIBE, news.mailshot_id, recipient_id(news.mailshot_id, "u1@example.com")
    )
    with Session(news.engine) as session:
        archive.archive(session, sendings.get(session, news.mailshot_id), utcnow())
        session.commit()
    assert httpx.get(f"{news.web.url}/u/{archived}").status_code == 404


def test_a_link_followed_before_the_recipient_s_turn_leaves_the_row_to_the_claim(
    sqlite_url: str, tmp_path: Path
) -> None:
    """An address that unsubscribes (with a test message's link) while its row is still ``todo``: the
    row is not marked ``unsub`` (that would count a message never sent); the claim kills it."""
    settings = make_settings(sqlite_url)
    engine = engine_for(settings)
    seed(engine, tmp_path, 2)
    mid = create(engine, settings, html=HTML)
    from mailshot_core.feedback import unsubscribe_links
    from mailshot_core.sending import lifecycle

    lifecycle.start_sending(engine, settings, mid)
    with Session(engine) as session:
        sid = session.exec(select(Subscriber.id).where(Subscriber.email == "u1@example.com")).one()
    token = make_token(TEST_KEY.encode(), UNSUBSCRIBE, mid, sid)
    target = unsubscribe_links.read_link(engine, TEST_KEY.encode(), token)
    assert target is not None and unsubscribe_links.unsubscribe(engine, target, None, one_click=True) == 1
    with Session(engine) as session:
        status = session.exec(select(Recipient.status).where(col(Recipient.email) == "u1@example.com")).one()
        assert status == "todo" and sendings.get(session, mid).nb_unsub == 0
    with DevRelay() as relay:
        drive(engine, make_settings(sqlite_url, relay), mid)
    assert [m.rcpt_tos for m in relay.messages] == [["u0@example.com"]]
    with Session(engine) as session:
        status = session.exec(select(Recipient.status).where(col(Recipient.email) == "u1@example.com")).one()
        assert status == "kill" and sendings.stored_counters(sendings.get(session, mid)) == sendings.recount(
            session, mid
        )


def test_a_test_message_link_unsubscribes_nobody(news: Site) -> None:
    """A test message to an address that is no subscriber carries a link that names nobody."""
    token = make_token(TEST_KEY.encode(), UNSUBSCRIBE, news.mailshot_id, 0)
    page = httpx.get(f"{news.web.url}/u/{token}")
    assert page.status_code == 200 and "Nothing to unsubscribe" in page.text
    assert httpx.post(f"{news.web.url}/u/{token}").status_code == 200


# --- opens and clicks ---------------------------------------------------------------------------------


def test_opening_and_clicking_a_received_message_updates_statuses_and_counters(news: Site) -> None:
    """The pixel and the links of the HTML the relay received: a person's open makes the recipient
    ``read``, a click ``clic`` and redirects to the link's own URL; repeats count once; the counters
    equal a recount.  The text part keeps the real URLs; the unsubscribe and mailto links are not
    rewritten."""
    address = "u4@example.com"
    html = news.html(address)
    text = str(news.messages[address].get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert "https://example.org/article?id=1&utm=news" in text and "/c/" not in text
    assert 'href="mailto:team@example.org"' in html and f'href="{news.unsubscribe_url(address)}"' in html
    article, agenda = news.links(address)
    headers = {"User-Agent": BROWSER}

    with httpx.Client(timeout=10, follow_redirects=False, headers=headers) as client:
        pixel = client.get(news.pixel(address))
        assert pixel.status_code == 200 and pixel.headers["content-type"] == "image/gif"
        assert pixel.content.startswith(b"GIF89a") and "no-store" in pixel.headers["cache-control"]
        assert news.status(address) == "read"
        client.get(news.pixel(address))  # a second open: one reader still
        stored, recount, machine = news.counters()
        assert stored == recount and stored["nb_read"] == 1 and stored["nb_clic"] == 0

        jump = client.get(article)
        assert jump.status_code == 302 and jump.headers["location"] == "https://example.org/article?id=1&utm=news"
        assert news.status(address) == "clic"
        assert client.get(agenda).headers["location"] == "https://example.org/agenda"
        client.get(article)
    stored, recount, machine = news.counters()
    assert stored == recount and (stored["nb_read"], stored["nb_clic"]) == (1, 1)
    assert machine == {"nb_read_machine": 0, "nb_clic_machine": 0}
    with Session(news.engine) as session:
        clicks = tracking.per_link_clicks(session, news.mailshot_id)
    assert clicks == [("https://example.org/article?id=1&utm=news", 1, 0), ("https://example.org/agenda", 1, 0)]
    assert [kind for kind, _ in web_events(news.engine, address)] == ["read", "clic", "clic"]


def test_machine_opens_and_clicks_are_counted_apart(news: Site) -> None:
    """Apple Mail Privacy Protection's proxy (a bare ``Mozilla/5.0``), a HEAD from a link scanner and a
    known scanner's user agent do not make anyone ``read``/``clic``: they are counted apart, once per
    recipient, and the scanner is still redirected."""
    with httpx.Client(timeout=10, follow_redirects=False) as client:
        client.get(news.pixel("u6@example.com"), headers={"User-Agent": "Mozilla/5.0"})
        client.get(news.pixel("u6@example.com"), headers={"User-Agent": "Mozilla/5.0"})
        head = client.head(news.links("u7@example.com")[0], headers={"User-Agent": BROWSER})
        for link in news.links("u6@example.com"):  # a scanner fetches every link: one recipient counted
            scanner = client.get(link, headers={"User-Agent": "Mimecast URL Protect"})
    assert head.status_code == 302 and scanner.status_code == 302
    assert (news.status("u6@example.com"), news.status("u7@example.com")) == ("sent", "sent")
    stored, recount, machine = news.counters()
    assert stored == recount and (stored["nb_read"], stored["nb_clic"]) == (0, 0)
    assert machine == {"nb_read_machine": 1, "nb_clic_machine": 2}
    [(_, why)] = web_events(news.engine, "u7@example.com")
    assert why is not None and "HEAD" in why


def test_a_click_soon_after_sending_is_a_machine_s(news: Site, tmp_path: Path) -> None:
    """Within MAILSHOT_TRACKING_MACHINE_SECONDS of the message leaving, a browser-like click is taken
    for a gateway's scan; the same click later is a person's."""
    assert tracking.machine_reason("GET", BROWSER, 3.0, 10.0) is not None
    assert tracking.machine_reason("GET", BROWSER, 30.0, 10.0) is None
    assert tracking.machine_reason("GET", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) GoogleImageProxy", 60, 10) is None
    assert tracking.machine_reason("GET", "", 60, 10) == "no user agent"
    slow = news.settings.model_copy(update={"tracking_machine_seconds": 3600.0})
    with WebServer(slow, free_socket()) as web:
        link = news.links("u3@example.com")[0].replace(news.web.url, web.url)
        assert web.client.get(link, headers={"User-Agent": BROWSER}).status_code == 302
    assert news.status("u3@example.com") == "sent"
    assert news.counters()[2]["nb_clic_machine"] == 1


def test_the_sending_page_shows_the_clicks_per_link(news: Site) -> None:
    """The follow-up page of a tracked sending lists its links with people's and machines' clicks."""
    with httpx.Client(base_url=news.web.url, timeout=10, headers={"User-Agent": BROWSER}) as client:
        client.get(news.links("u1@example.com")[1])
        client.head(news.links("u2@example.com")[1])
        form = client.get("/admin/login")
        login = {"csrf": csrf_of(form.text), "user": "admin", "password": "links-test", "next": "/admin/"}
        assert client.post("/admin/login", data=login).status_code == 303
        page = client.get(f"/admin/sendings/{news.mailshot_id}").text
    assert "open pixel and click redirects" in page
    rows = re.findall(
        r'<tr><td class="small"><a href="([^"]+)"[^>]*>[^<]*</a></td><td class="num">(\d+)</td><td class="num">(\d+)</td>',
        page,
    )
    assert rows == [
        ("https://example.org/article?id=1&amp;utm=news", "0", "0"),
        ("https://example.org/agenda", "1", "1"),
    ]


# --- forged links and open redirects -------------------------------------------------------------------


def _altered(token: str) -> list[str]:
    body, mac = token.rsplit(".", 1)
    flipped = "A" if mac[0] != "A" else "B"
    first, second = body.split(".")
    return [token[:-1], token[:-6], f"{body}.{flipped}{mac[1:]}", f"{first}.{int(second) + 1}.{mac}", body, "x"]


def test_forged_or_truncated_tokens_get_404_and_change_nothing(news: Site) -> None:
    address = "u1@example.com"
    unsubscribe = news.unsubscribe_url(address)
    pixel = news.pixel(address)
    link = news.links(address)[0]
    base, token, link_id = link.rsplit("/", 2)
    for bad in _altered(unsubscribe.rsplit("/", 1)[1]):
        assert httpx.get(f"{news.web.url}/u/{bad}").status_code == 404, bad
        assert httpx.post(f"{news.web.url}/u/{bad}").status_code == 404, bad
    for bad in _altered(pixel.rsplit("/", 1)[1]):
        assert httpx.get(f"{news.web.url}/o/{bad}").status_code == 404, bad
    for bad in _altered(token):
        assert httpx.get(f"{base}/{bad}/{link_id}").status_code == 404, bad
    # A token of one purpose is worth nothing for another.
    assert httpx.post(f"{news.web.url}/u/{token}").status_code == 404
    assert httpx.get(f"{news.web.url}/o/{unsubscribe.rsplit('/', 1)[1]}").status_code == 404
    huge = httpx.post(
        unsubscribe, content=b"x" * 100_000, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert huge.status_code == 413
    assert subscriptions(news.engine, address) == {"news": "valid", "offers": "valid"}
    assert news.status(address) == "sent" and web_events(news.engine, address) == []


def test_no_redirect_outside_the_sending_s_link_table(news: Site, tmp_path: Path) -> None:
    """Only the sending's stored links are redirect targets: another sending's link id, an unknown id,
    a URL smuggled in the path or the query string all get 404 or go to the stored link."""
    other = create(news.engine, news.settings, html='<a href="https://elsewhere.example/x">x</a>')
    with Session(news.engine) as session:
        foreign = tracked_links.links_for(session, sendings.get(session, other))["https://elsewhere.example/x"]
    link = news.links("u1@example.com")[0]
    base, token, link_id = link.rsplit("/", 2)
    client = httpx.Client(timeout=10, follow_redirects=False, headers={"User-Agent": BROWSER})
    with client:
        assert client.get(f"{base}/{token}/{foreign}").status_code == 404
        assert client.get(f"{base}/{token}/999999").status_code == 404
        assert client.get(f"{base}/{token}/https:%2F%2Fevil.example").status_code == 404
        assert client.get(f"{base}/{token}/{link_id}/https://evil.example").status_code == 404
        assert client.get(f"{base}/{token}/-1").status_code == 404
        assert client.get(f"{base}/{token}/%C2%B2").status_code == 404  # a digit to str.isdigit, not to int()
        smuggled = client.get(f"{link}?url=https://evil.example&next=//evil.example")
        assert smuggled.headers["location"] == "https://example.org/article?id=1&utm=news"
        # A valid-looking token for a recipient of another sending does not open that sending's links.
        forged_pair = make_token(TEST_KEY.encode(), TRACK, other, 1)
        assert client.get(f"{base}/{forged_pair}/{link_id}").status_code == 404


# --- which sendings are tracked ---------------------------------------------------------------------------


def test_tracking_follows_the_setting_and_the_sending_s_choice(sqlite_url: str, tmp_path: Path) -> None:
    """MAILSHOT_TRACKING=smtp tracks SMTP sendings, not ESP ones (they track themselves); ``off``
    tracks nothing; a sending's own choice wins; an untracked message has no pixel and real links."""
    settings = make_settings(sqlite_url)
    engine = engine_for(settings)
    seed(engine, tmp_path, 1)

    def tracked(settings: Settings, **kw: object) -> bool:
        with Session(engine) as session:
            return bool(session.get(Mailshot, create(engine, settings, html=HTML, **kw)).track)  # type: ignore[union-attr]

    assert tracked(settings) and not tracked(settings, transport="mailjet")
    assert tracked(settings.model_copy(update={"tracking": "all"}), transport="mailjet")
    off = settings.model_copy(update={"tracking": "off"})
    assert not tracked(off) and tracked(off, track=True) and not tracked(settings, track=False)

    with DevRelay() as relay:
        plain = make_settings(sqlite_url, relay, tracking="off")
        mid = create(engine, plain, html=HTML)
        drive(engine, plain, mid)
        [received] = relay.messages
    html = email.message_from_bytes(received.data, policy=email.policy.default).get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "/o/" not in html and "/c/" not in html and 'href="https://example.org/article?id=1&amp;utm=news"' in html
