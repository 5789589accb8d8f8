"""The follow-up pages over real HTTP (uvicorn + httpx): login, CSRF, escaping, bad input.

The browser side (what an operator sees and clicks) is test_pages_browser.py; both read the same
site (pagesite.py), built once per module.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from pathlib import Path

import httpx
import pytest

from conftest import engine_for, make_settings, runs_tagged
from fakes.webhooks import SnsSigner, WebServer, free_socket
from helpers import create, seed
from mailshot_core.devtools.relay import DevRelay
from mailshot_core.sending import claims, sendings
from mailshot_core.store.db import session_scope
from mailshot_core.web import login
from mailshot_core.web.login import AdminSession, LoginThrottle, Sessions
from pagesite import ADMIN_PASSWORD, ADMIN_USER, EVIL, EVIL_EMAIL, PREFECT_UI, RUN_ID, Site, csrf_of, page_site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with page_site(tmp_path_factory.mktemp("pages")) as s:
        yield s


@pytest.fixture
def admin(site: Site) -> Iterator[tuple[httpx.Client, str]]:
    with site.client() as client:
        yield client, site.login(client)


def test_every_page_requires_login(site: Site) -> None:
    """Without a session, a page redirects to the login form (keeping where to go back), a POST is refused."""
    with site.client() as c:
        for path in ("/admin/", f"/admin/sendings/{site.ids['ended']}?q=u1", "/admin/subscriber?email=u1@example.com"):
            r = c.get(path)
            assert r.status_code == 303
            assert r.headers["location"] == "/admin/login?" + httpx.QueryParams({"next": path}).__str__()
        assert c.get("/admin").headers["location"] == "/admin/"
        r = c.post(f"/admin/sendings/{site.ids['processing']}/pause", data={"csrf": "x"})
        assert r.status_code == 403
    assert site.status("processing") == "processing"


def test_login_cookie_is_httponly_strict_and_logout_ends_it(site: Site) -> None:
    """The session cookie is HttpOnly, SameSite=Strict, scoped to /admin; logging out deletes it."""
    with site.client() as c:
        csrf = site.login(c)
        r = c.post("/admin/logout", data={"csrf": csrf})
        assert r.status_code == 303 and r.headers["location"] == "/admin/login"
        assert 'mailshot_admin=""' in r.headers["set-cookie"]
        assert c.get("/admin/").status_code == 303
    with site.client() as c:
        form = c.get("/admin/login")
        r = c.post(
            "/admin/login",
            data={"csrf": csrf_of(form.text), "user": ADMIN_USER, "password": ADMIN_PASSWORD, "next": "/admin/"},
        )
        flags = r.headers["set-cookie"].lower()
        assert "httponly" in flags and "samesite=strict" in flags and "path=/admin" in flags
        assert "secure" not in flags  # http://127.0.0.1: a Secure cookie would never come back


def test_wrong_password_is_refused_and_slowed_down(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong login or password gives the form again (401) after a delay, and no logged-in session."""
    monkeypatch.setattr(login, "FAILURE_DELAY", 0.1)
    with site.client() as c:
        form = c.get("/admin/login")
        for user, password in ((ADMIN_USER, "wrong"), ("root", ADMIN_PASSWORD), (ADMIN_USER, "")):
            start = time.monotonic()
            r = c.post("/admin/login", data={"csrf": csrf_of(form.text), "user": user, "password": password})
            assert r.status_code == 401 and "Wrong login or password" in r.text
            assert time.monotonic() - start >= 0.1
            assert "set-cookie" not in r.headers
        assert c.get("/admin/").status_code == 303
        # A correct login from the same address works (and clears the failures).
        site.login(c)
        assert c.get("/admin/").status_code == 200


def test_login_throttle_locks_out_after_repeated_failures() -> None:
    """Past LOCKOUT_AFTER failures in FAILURE_WINDOW, an address is locked out until the window passes."""
    throttle = LoginThrottle()
    delays = [throttle.failed("10.0.0.1", now=float(i)) for i in range(login.LOCKOUT_AFTER)]
    assert delays[0] == login.FAILURE_DELAY and delays[-1] == login.MAX_FAILURE_DELAY
    assert throttle.locked_for("10.0.0.1", now=20.0) == pytest.approx(login.FAILURE_WINDOW - 20)
    assert throttle.locked_for("10.0.0.2", now=20.0) == 0  # per address
    assert throttle.locked_for("10.0.0.1", now=login.FAILURE_WINDOW + 0.5) == 0  # the oldest failure expired
    throttle.succeeded("10.0.0.1")
    assert throttle.locked_for("10.0.0.1", now=21.0) == 0


def test_locked_out_address_gets_429_even_with_the_right_password(site: Site) -> None:
    """The lock-out is checked before the password: guessing stops, whatever is guessed."""
    throttle: LoginThrottle = site.web.server.config.app.state.mailshot_login_throttle
    for _ in range(login.LOCKOUT_AFTER):
        throttle.failed("127.0.0.1")
    try:
        with site.client() as c:
            form = c.get("/admin/login")
            data = {"csrf": csrf_of(form.text), "user": ADMIN_USER, "password": ADMIN_PASSWORD}
            r = c.post("/admin/login", data=data)
            assert r.status_code == 429 and "Too many failed logins" in r.text
    finally:
        throttle.succeeded("127.0.0.1")


def test_session_cookie_cannot_be_forged_or_kept() -> None:
    """A cookie is only valid with our signature, before its expiry, and for the current password."""
    settings = make_settings("sqlite://", admin_user="op", admin_password="pw")
    sessions = Sessions(settings)
    session = sessions.new("op", now=1000.0)
    cookie = sessions.encode(session)
    assert sessions.decode(cookie, now=1001.0) == session
    payload, signature = cookie.split(".")
    forged = AdminSession("op", "x", 10**12)
    assert (
        sessions.decode(Sessions(make_settings("sqlite://", admin_user="op", admin_password="other")).encode(forged))
        is None
    )
    assert sessions.decode(payload + "." + signature[:-2] + "AA", now=1001.0) is None
    assert sessions.decode(payload, now=1001.0) is None and sessions.decode("", now=1001.0) is None
    assert sessions.decode(cookie, now=1000.0 + login.SESSION_LIFETIME + 1) is None  # expired
    # Changing the password (or the secret key) ends every session.
    assert (
        Sessions(make_settings("sqlite://", admin_user="op", admin_password="pw2")).decode(cookie, now=1001.0) is None
    )
    # The CSRF token is per session.
    assert sessions.check_csrf(session, sessions.csrf(session))
    assert not sessions.check_csrf(session, sessions.csrf(sessions.new("op")))
    assert not sessions.check_csrf(session, None)
    # Secure when the site is https.
    assert Sessions(make_settings("sqlite://", admin_password="pw")).secure  # base_url https://news.example.org


def test_login_redirects_only_to_these_pages(site: Site) -> None:
    """``next`` is followed only to a path under /admin/: never to another site (open redirect)."""
    for target, expected in (
        ("https://evil.example/", "/admin/"),
        ("//evil.example/admin/", "/admin/"),
        ("/\\evil.example", "/admin/"),
        ("/webhooks/mailjet", "/admin/"),
        (f"/admin/sendings/{site.ids['ended']}", f"/admin/sendings/{site.ids['ended']}"),
    ):
        with site.client() as c:
            form = c.get("/admin/login")
            data = {"csrf": csrf_of(form.text), "user": ADMIN_USER, "password": ADMIN_PASSWORD, "next": target}
            assert c.post("/admin/login", data=data).headers["location"] == expected, target


def test_posts_without_the_sessions_csrf_token_change_nothing(site: Site, admin: tuple[httpx.Client, str]) -> None:
    """A POST needs this session's CSRF token and, when the browser names one, this site's origin: 403 otherwise."""
    client, csrf = admin
    path = f"/admin/sendings/{site.ids['processing']}/pause"
    with site.client() as other:
        other_csrf = site.login(other)
    attempts = [
        ({}, {}),
        ({"csrf": ""}, {}),
        ({"csrf": "A" * 43}, {}),
        ({"csrf": other_csrf}, {}),  # a valid token, of another session
        ({"csrf": csrf}, {"Origin": "https://evil.example"}),
        ({"csrf": csrf}, {"Referer": "https://evil.example/page"}),
        ({"csrf": csrf}, {"Origin": "null"}),
    ]
    for data, headers in attempts:
        r = client.post(path, data=data, headers=headers)
        assert r.status_code == 403, (data, headers)
        assert site.status("processing") == "processing"
    # The login form checks its token too (no logging a victim into an attacker's session).
    with site.client() as c:
        c.get("/admin/login")
        r = c.post("/admin/login", data={"csrf": "x", "user": ADMIN_USER, "password": ADMIN_PASSWORD})
        assert r.status_code == 403 and "mailshot_admin" not in r.headers.get("set-cookie", "")
    # With it, the same request works (then undone).
    r = client.post(path, data={"csrf": csrf}, headers={"Origin": site.url})
    assert r.status_code == 303 and site.status("processing") == "pause"
    assert client.post(path.replace("pause", "resume"), data={"csrf": csrf}).status_code == 303
    assert site.status("processing") == "processing"


def test_cancel_then_archive(site: Site, admin: tuple[httpx.Client, str]) -> None:
    """Cancel (behind its confirmation) ends a sending: its waiting recipients become "not sent"; Archive then
    deletes the rows and keeps the counters."""
    client, csrf = admin
    mid = create(engine_for(site.settings), site.settings, subject="To be cancelled")
    with session_scope(engine_for(site.settings)) as session:
        claims.materialise(session, sendings.get(session, mid))
    page = client.get(f"/admin/sendings/{mid}").text
    assert f'action="/admin/sendings/{mid}/cancel"' in page and "To send (41)" in page
    r = client.post(f"/admin/sendings/{mid}/cancel", data={"csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == f"/admin/sendings/{mid}"
    page = client.get(f"/admin/sendings/{mid}").text
    assert "Not sent (cancelled, or left the lists) (41)" in page and "/cancel" not in page
    assert client.post(f"/admin/sendings/{mid}/pause", data={"csrf": csrf}).status_code == 409
    # Then the original's Archive: rows gone, counters kept.
    assert f'action="/admin/sendings/{mid}/archive"' in page
    assert client.post(f"/admin/sendings/{mid}/archive", data={"csrf": csrf}).status_code == 303
    page = client.get(f"/admin/sendings/{mid}").text
    assert "per-recipient detail was deleted" in page and "/archive" not in page
    assert re.search(r"<td>Failed</td><td class=\"num\">0</td>", page)
    assert re.search(r"<td>Cancelled \(never sent\)</td><td class=\"num\">41</td>", page)


def test_html_in_names_and_subjects_is_shown_as_text(site: Site, admin: tuple[httpx.Client, str]) -> None:
    """A subject or a subscriber name holding <script> is escaped on every page that shows it."""
    client, _ = admin
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    pages = [
        "/admin/",
        f"/admin/sendings/{site.ids['processing']}",
        f"/admin/subscriber?email={EVIL_EMAIL}",
    ]
    for path in pages:
        r = client.get(path)
        assert r.status_code == 200 and escaped in r.text, path
        assert EVIL not in r.text, path
        assert r.headers["content-security-policy"].startswith("default-src 'none'; script-src 'none'")
    # The newsletter preview: an escaped srcdoc in a sandbox without scripts.
    detail = client.get(f"/admin/sendings/{site.ids['ended']}").text
    assert re.search(r'<iframe class="preview" title="HTML part" sandbox srcdoc="&lt;html&gt;', detail)


def test_bad_input_gets_a_clear_page_never_a_500(site: Site, admin: tuple[httpx.Client, str]) -> None:
    """Unknown ids, malformed ids, bad page numbers, unknown addresses and actions: 400/404 with the reason."""
    client, csrf = admin
    cases = [
        ("/admin/sendings/999999", 404, "no sending with id 999999"),
        ("/admin/sendings/abc", 400, "mailshot_id"),
        ("/admin/sendings/0", 400, "mailshot_id"),
        ("/admin/sendings/99999999999999999999999", 400, "mailshot_id"),
        ("/admin/?completed=x", 400, "not a page number"),
        ("/admin/?completed=-1", 400, "not a page number"),
        ("/admin/?completed=0", 400, "page numbers start at 1"),
        ("/admin/?completed=7", 404, "there is no page 7"),
        (f"/admin/sendings/{site.ids['ended']}?page_sent=99", 404, "there is no page 99"),
        (f"/admin/sendings/{site.ids['ended']}?page_fail=2", 404, "no page 2"),
        (f"/admin/sendings/{site.ids['ended']}?q=" + "x" * 400, 400, "at most 320"),
        ("/admin/subscriber?email=nobody@example.com", 404, "no subscriber"),
        ("/admin/subscriber?email=%ff@example.com", 404, "no subscriber"),
        ("/admin/subscriber?email=a%00@example.com", 400, "control characters"),
        (f"/admin/sendings/{site.ids['ended']}?q=u%00", 400, "control characters"),
    ]
    for path, status, message in cases:
        r = client.get(path)
        assert (r.status_code, r.headers["content-type"]) == (status, "text/html; charset=utf-8"), path
        assert message in r.text, path
    r = client.post(f"/admin/sendings/{site.ids['processing']}/explode", data={"csrf": csrf})
    assert r.status_code == 404 and "no action" in r.text
    r = client.post("/admin/sendings/999999/pause", data={"csrf": csrf})
    assert r.status_code == 404
    r = client.post(f"/admin/sendings/{site.ids['ended']}/resume", data={"csrf": csrf})
    assert r.status_code == 409 and "not paused" in r.text


def test_pages_show_sections_groups_search_and_the_flow_run(site: Site, admin: tuple[httpx.Client, str]) -> None:
    """The list has the original's sections; the detail groups recipients by status, searches, links the run."""
    client, _ = admin
    html = client.get("/admin/").text
    sections = re.findall(r'<section id="(\w+)">', html)
    assert sections == ["drafts", "scheduled", "in_progress", "completed", "archived"]
    assert '<meta http-equiv="refresh"' in html  # a sending is processing
    detail = client.get(f"/admin/sendings/{site.ids['ended']}").text
    assert '<meta http-equiv="refresh"' not in detail
    groups = re.findall(r'<section class="group" id="group-(\w+)">', detail)
    assert groups == ["sent", "read", "clic", "bounce"]
    assert "Opened (4)" in detail and "Clicked (2)" in detail and "Sent (34)" in detail
    found = client.get(f"/admin/sendings/{site.ids['ended']}", params={"q": "U3"}).text
    assert set(re.findall(r">(u\d+@example\.com)</a>", found)) == {f"u{i}@example.com" for i in (3, *range(30, 40))}
    assert "(1 matching)" in found and "(10 matching)" in found
    # LIKE wildcards are searched as text.
    assert "No recipient address contains" in client.get(f"/admin/sendings/{site.ids['ended']}?q=u%25").text
    running = client.get(f"/admin/sendings/{site.ids['processing']}").text
    assert f'href="{PREFECT_UI}/runs/flow-run/{RUN_ID}"' in running
    assert ">Pause</button>" in running and "Resume" not in running
    archived = client.get(f"/admin/sendings/{site.ids['archived']}").text
    assert "per-recipient detail was deleted" in archived and "Pause" not in archived


def test_pages_are_disabled_without_an_admin_password(tmp_path: Path) -> None:
    """Secure by default: without MAILSHOT_ADMIN_PASSWORD every page says how to enable them (503)."""
    sock = free_socket()
    settings = make_settings(f"sqlite:///{tmp_path}/m.db", base_url=f"http://127.0.0.1:{sock.getsockname()[1]}")
    with WebServer(settings, sock, SnsSigner()) as web:
        for method, path in (("GET", "/admin/"), ("GET", "/admin/login"), ("POST", "/admin/login")):
            r = web.client.request(method, path, data={"user": "admin", "password": ""})
            assert r.status_code == 503 and "MAILSHOT_ADMIN_PASSWORD" in r.text, path
        assert web.client.get("/webhooks/mailjet").status_code == 200  # the webhooks are not behind the login


@pytest.mark.postgres
def test_list_detail_search_and_pause_on_postgresql(pg_server: object, tmp_path: Path) -> None:
    """The same pages and the pause button on PostgreSQL (the search's LIKE, the paging, the status change)."""
    with page_site(tmp_path, pg_server.create_database()) as pg_site, pg_site.client() as c:  # type: ignore[attr-defined]
        csrf = pg_site.login(c)
        assert re.findall(r'<section id="(\w+)">', c.get("/admin/").text) == [
            "drafts",
            "scheduled",
            "in_progress",
            "completed",
            "archived",
        ]
        found = c.get(f"/admin/sendings/{pg_site.ids['ended']}", params={"q": "@EXAMPLE", "page_sent": "4"}).text
        assert "page 4 of 4" in found and "(34 matching)" in found and "u39@example.com" in found
        assert c.get("/admin/subscriber", params={"email": "a\x00@example.com"}).status_code == 400
        assert c.get("/admin/subscriber", params={"email": "é@example.com"}).status_code == 404
        r = c.post(f"/admin/sendings/{pg_site.ids['processing']}/pause", data={"csrf": csrf})
        assert r.status_code == 303 and pg_site.status("processing") == "pause"


def test_base_layout_serves_public_pages_without_a_login() -> None:
    """base.html renders with no user (the public pages extend it): no admin navigation, no form."""
    from mailshot_core.web.templating import render

    html = render("error.html", {"title": "Gone", "message": "<b>x</b>"}, status_code=404).body.decode()
    assert "<title>Gone · Mailshot</title>" in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert "Log out" not in html and 'href="/admin/"' not in html.split("<main>")[0]


def test_a_draft_is_listed_apart_and_offers_send_test_and_cancel(site: Site, admin: tuple[httpx.Client, str]) -> None:
    """Drafts have their own section and label; a draft's page offers Send (to its lists, behind a
    confirmation), a test form and Cancel, not Pause; a test the relay cannot take is a 502 page that
    changes nothing; Send (with the session's CSRF token) starts it."""
    client, csrf = admin
    draft = site.ids["draft"]
    listing = client.get("/admin/").text
    section = listing[listing.index('<section id="drafts">') : listing.index('<section id="scheduled">')]
    assert f'data-id="{draft}"' in section and 'status-draft"><span class="dot dot-draft"></span>draft' in section
    page = client.get(f"/admin/sendings/{draft}").text
    for action in ("send", "test", "cancel"):
        assert f'action="/admin/sendings/{draft}/{action}"' in page, action
    assert ">Pause</button>" not in page and "To every subscriber of News" in page
    r = client.post(f"/admin/sendings/{draft}/test", data={"csrf": csrf, "email": "me@example.org"})
    assert r.status_code == 502 and "Test message not sent" in r.text  # the site's relay is gone
    r = client.post(f"/admin/sendings/{draft}/test", data={"csrf": csrf, "email": "not an address"})
    assert r.status_code == 400 and "invalid address" in r.text
    assert client.post(f"/admin/sendings/{draft}/send", data={"csrf": "wrong"}).status_code == 403
    assert site.status("draft") == "draft"
    r = client.post(f"/admin/sendings/{draft}/send", data={"csrf": csrf})
    assert r.status_code == 303 and site.status("draft") == "processing"
    page = client.get(f"/admin/sendings/{draft}").text
    assert f'action="/admin/sendings/{draft}/send"' not in page and ">Pause</button>" in page
    assert "dispatch-mailshots deployment starts one within 10 minutes" in page  # no run link yet


def test_test_then_send_from_the_pages_starts_a_prefect_run(
    send_now_deployment: str, tmp_path: Path, test_start: datetime
) -> None:
    """With a Prefect API (what `mailshot web` wires in then), a draft's test goes to the relay, and Send
    starts its send-mailshot/now run at once, tagged mailshot:<id>, linked from the page."""
    from flows.sending_runs import ensure_run

    sock = free_socket()
    with DevRelay() as relay:
        settings = make_settings(
            f"sqlite:///{tmp_path}/m.db",
            relay,
            base_url=f"http://127.0.0.1:{sock.getsockname()[1]}",
            admin_user=ADMIN_USER,
            admin_password=ADMIN_PASSWORD,
            prefect_ui_url=PREFECT_UI,
        )
        engine = engine_for(settings)
        seed(engine, tmp_path, 2)
        draft = create(engine, settings, subject="Draft {{ nom }}", send_now=False)
        start_run = partial(ensure_run, engine)
        with WebServer(settings, sock, SnsSigner(), start_run=start_run) as web:
            site = Site(web, settings, {"draft": draft})
            with site.client() as client:
                csrf = site.login(client)
                r = client.post(f"/admin/sendings/{draft}/test", data={"csrf": csrf, "email": "Me@Example.org"})
                assert r.status_code == 303 and r.headers["location"].endswith("?tested=me%40example.org")
                assert "A test message was sent to me@example.org." in client.get(r.headers["location"]).text
                (message,) = relay.messages
                assert message.rcpt_tos == ["me@example.org"] and b"Subject: [TEST] Draft" in message.data
                assert site.status("draft") == "draft"
                assert client.post(f"/admin/sendings/{draft}/send", data={"csrf": csrf}).status_code == 303
                page = client.get(f"/admin/sendings/{draft}").text
    (run,) = runs_tagged(draft, test_start)
    assert site.status("draft") == "processing"
    assert f'href="{PREFECT_UI}/runs/flow-run/{run.id}"' in page
