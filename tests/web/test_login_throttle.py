"""The login throttle over real HTTP: keyed on the connection's address unless a configured proxy says
otherwise, so X-Forwarded-For can neither escape a lock nor lock a victim out; per-account and
site-wide caps against rotating addresses, which never lock out an address that logged in before."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import engine_for, make_settings
from fakes.webhooks import WebServer, free_socket
from mailshot_core.web import login, server
from mailshot_core.web.app import create_app
from mailshot_core.web.login import LoginThrottle
from pagesite import csrf_of

USER, PASSWORD = "operator", "correct horse battery staple"


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """No answer delay (what is tested is who gets locked, not how slowly), small caps."""
    monkeypatch.setattr(login, "FAILURE_DELAY", 0.0)
    monkeypatch.setattr(login, "ACCOUNT_LOCKOUT_AFTER", 12)
    monkeypatch.setattr(login, "SITE_LOCKOUT_AFTER", 20)


def _web(tmp_path: Path, **settings: object) -> WebServer:
    sock = free_socket()
    values = make_settings(
        f"sqlite:///{tmp_path}/m.db",
        base_url=f"http://127.0.0.1:{sock.getsockname()[1]}",
        admin_user=USER,
        admin_password=PASSWORD,
        **settings,
    )
    engine_for(values)
    return WebServer(values, sock)


@pytest.fixture
def direct(tmp_path: Path) -> Iterator[WebServer]:
    """`mailshot web` exposed directly (no proxy configured): the peer address is the client."""
    with _web(tmp_path) as web:
        yield web


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[WebServer]:
    """Behind a reverse proxy on 127.0.0.1 (MAILSHOT_FORWARDED_ALLOW_IPS): the tests play the proxy, which
    appends the real client address to whatever X-Forwarded-For the client sent."""
    with _web(tmp_path, forwarded_allow_ips="127.0.0.1") as web:
        yield web


def attempt(web: WebServer, password: str, forwarded: str | None = None, user: str = USER) -> httpx.Response:
    """One login from a new visitor (its own anonymous session and CSRF token)."""
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    with WebServer.client_for(web.url) as c:
        form = c.get("/admin/login", headers=headers)
        data = {"csrf": csrf_of(form.text), "user": user, "password": password}
        return c.post("/admin/login", data=data, headers=headers)


def test_rotating_x_forwarded_for_does_not_escape_the_address_lock(direct: WebServer) -> None:
    """Without a configured proxy, X-Forwarded-For is ignored: ten failures lock the connection's address,
    whatever address each request claims; the right password then gets 429 too."""
    for i in range(login.LOCKOUT_AFTER):
        assert attempt(direct, "guess", forwarded=f"198.51.100.{i}").status_code == 401
    r = attempt(direct, PASSWORD, forwarded="198.51.100.200")
    assert r.status_code == 429 and "from your address" in r.text


def test_a_victims_address_in_the_header_cannot_lock_it_out(proxied: WebServer) -> None:
    """Behind a proxy, the client is the address the proxy saw (the rightmost untrusted one): an attacker
    writing the victim's address first in X-Forwarded-For locks only its own address."""
    victim, attacker = "203.0.113.7", "198.51.100.66"
    for _ in range(login.LOCKOUT_AFTER):
        assert attempt(proxied, "guess", forwarded=f"{victim}, {attacker}").status_code == 401
    assert attempt(proxied, PASSWORD, forwarded=f"{victim}, {attacker}").status_code == 429
    assert attempt(proxied, PASSWORD, forwarded=victim).status_code == 303  # the victim logs in


def test_rotating_addresses_hit_the_account_then_the_site_cap(proxied: WebServer) -> None:
    """Each guess from a new address: past ACCOUNT_LOCKOUT_AFTER the admin login is refused to new
    addresses, past SITE_LOCKOUT_AFTER every login is (other names too); an address that logged in before
    still logs in, so the operator is never locked out by someone else's guesses."""
    assert attempt(proxied, PASSWORD, forwarded="192.0.2.1").status_code == 303  # the operator, earlier
    for i in range(login.ACCOUNT_LOCKOUT_AFTER):
        assert attempt(proxied, f"guess{i}", forwarded=f"198.51.100.{i}").status_code == 401
    r = attempt(proxied, PASSWORD, forwarded="198.51.100.99")
    assert r.status_code == 429 and "for this account" in r.text
    for i in range(login.SITE_LOCKOUT_AFTER - login.ACCOUNT_LOCKOUT_AFTER):
        assert attempt(proxied, "guess", forwarded=f"198.51.101.{i}", user=f"root{i}").status_code == 401
    r = attempt(proxied, "guess", forwarded="198.51.102.1", user="someone-else")
    assert r.status_code == 429 and "on this site" in r.text
    assert attempt(proxied, PASSWORD, forwarded="192.0.2.1").status_code == 303  # known address: exempt


def test_locks_expire_with_the_window_and_known_addresses_with_time() -> None:
    """The account and site locks last FAILURE_WINDOW after the failures that made them; an address stays
    known (exempt from them) for KNOWN_FOR after its last successful login."""
    throttle = LoginThrottle()
    throttle.succeeded("192.0.2.1", USER, now=0.0)
    for i in range(login.SITE_LOCKOUT_AFTER):
        throttle.failed(f"198.51.100.{i}", USER, now=10.0 + i)
    lock = throttle.locked("198.51.100.200", USER, now=30.0)
    oldest_counted = (
        10.0 + login.SITE_LOCKOUT_AFTER - login.ACCOUNT_LOCKOUT_AFTER
    )  # the ACCOUNT_LOCKOUT_AFTER-th last failure
    assert lock is not None and lock.scope == "account"
    assert lock.seconds == pytest.approx(oldest_counted + login.FAILURE_WINDOW - 30.0)
    lock = throttle.locked("198.51.100.200", "other", now=30.0)
    assert lock is not None and lock.scope == "site"
    assert throttle.locked("192.0.2.1", USER, now=30.0) is None
    assert throttle.locked("198.51.100.200", USER, now=10.0 + login.FAILURE_WINDOW + login.SITE_LOCKOUT_AFTER) is None
    for i in range(login.SITE_LOCKOUT_AFTER):
        throttle.failed(f"198.51.101.{i}", "x", now=login.KNOWN_FOR + i)
    assert throttle.locked("192.0.2.1", USER, now=login.KNOWN_FOR + 50.0) is not None  # no longer known


def test_mailshot_web_believes_proxy_headers_only_from_configured_proxies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn's default (trust 127.0.0.1) is not `mailshot web`'s: no proxy headers unless
    MAILSHOT_FORWARDED_ALLOW_IPS (or uvicorn's FORWARDED_ALLOW_IPS) names the proxies."""
    settings = make_settings(f"sqlite:///{tmp_path}/m.db")
    app = create_app(settings)
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    assert server.config(app, settings).proxy_headers is False
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.5")
    config = server.config(app, settings)
    assert config.proxy_headers is True and config.forwarded_allow_ips == "10.0.0.5"
    ours = make_settings(f"sqlite:///{tmp_path}/m.db", forwarded_allow_ips="10.1.0.0/16")
    assert server.config(app, ours).forwarded_allow_ips == "10.1.0.0/16"
