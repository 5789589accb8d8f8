"""Login and CSRF for the follow-up pages: one signed cookie, no server-side session store.

- **The session cookie** is ``base64url(json {u, n, e}) . base64url(HMAC-SHA256)``: the user (empty
  before login), a random nonce and an expiry.  The HMAC key is derived from MAILSHOT_SECRET_KEY and
  from the admin login and password, so changing the password ends every session; a domain label
  keeps these signatures apart from the unsubscribe tokens signed with the same secret (tokens.py).
  HttpOnly, SameSite=Strict, Path=/admin, Secure when MAILSHOT_BASE_URL is https.
- **CSRF**: every form carries ``HMAC(key, "csrf:" + nonce)`` in a hidden field; every POST must bring
  the one of its own session (403 otherwise), and its Origin (or Referer), when the browser sends
  one, must be this site.  The login form has a session too (anonymous), so logging someone in to
  an attacker's account is refused as well; a successful login starts a new nonce (no fixation).
- **Passwords** are compared in constant time (user and password both, always).  Failed logins
  slow down the next ones from the same client address and, past ``LOCKOUT_AFTER`` failures in
  ``FAILURE_WINDOW`` seconds, are refused outright until the window has passed; per account and for
  the whole site too (:class:`LoginThrottle`), so that rotating addresses does not buy unlimited
  guesses.  The count is per process (one ``mailshot web``), which is what a single admin login needs.
- **Logout** deletes the cookie.  There is no server-side revocation: a copied cookie stays valid
  until it expires (``SESSION_LIFETIME``) or the password changes.

Without MAILSHOT_ADMIN_PASSWORD the pages are disabled: nothing can log in (secure by default).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request, Response

from mailshot_core.config import Settings
from mailshot_core.web.forms import FormRefused, form_fields, same_origin
from mailshot_core.web.throttle import SlidingWindow

COOKIE = "mailshot_admin"
COOKIE_PATH = "/admin"
SESSION_LIFETIME = 12 * 3600  # a working day: long enough to follow a sending, short enough to expire
ANONYMOUS_LIFETIME = 3600  # the login form's own session
FAILURE_WINDOW = 15 * 60
LOCKOUT_AFTER = 10  # failures from one address in FAILURE_WINDOW
ACCOUNT_LOCKOUT_AFTER = 30  # failures for one login name, from any addresses
SITE_LOCKOUT_AFTER = 100  # failures on the whole site: at most ~10,000 guesses a day, whatever the botnet
KNOWN_FOR = 30 * 24 * 3600  # an address that logged in is exempt from the account and site locks this long
MAX_TRACKED = 10_000  # client addresses with recent failures kept in memory before expired ones are dropped
FAILURE_DELAY = 0.5  # seconds per recent failure before answering a wrong password, capped below
MAX_FAILURE_DELAY = 5.0
MAX_FORM_BYTES = 64 * 1024  # our forms carry a few fields; a bigger body is not one of them


class LoginRequired(Exception):
    """No valid session: the page answers with a redirect to the login form."""


class Refused(Exception):
    """A POST without this session's CSRF token, or from another site: 403, nothing changed."""


class Disabled(Exception):
    """MAILSHOT_ADMIN_PASSWORD is not set: the pages say so."""


@dataclass(frozen=True)
class AdminSession:
    user: str  # "" before login
    nonce: str
    expires: int

    @property
    def logged_in(self) -> bool:
        return bool(self.user)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Signs and reads the session cookie; makes and checks CSRF tokens."""

    def __init__(self, settings: Settings) -> None:
        if settings.admin_password is None or not settings.admin_password.get_secret_value():
            raise Disabled()
        self.user = settings.admin_user
        self._password = settings.admin_password.get_secret_value()
        material = "\0".join(
            ("mailshot admin session v1", settings.secret_key.get_secret_value(), self.user, self._password)
        )
        self._key = hashlib.sha256(material.encode()).digest()
        self.secure = settings.base_url.startswith("https://")
        self.site = urlsplit(settings.base_url).netloc

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def new(self, user: str = "", now: float | None = None) -> AdminSession:
        lifetime = SESSION_LIFETIME if user else ANONYMOUS_LIFETIME
        return AdminSession(user, secrets.token_urlsafe(16), int((time.time() if now is None else now) + lifetime))

    def encode(self, session: AdminSession) -> str:
        payload = _b64(json.dumps({"u": session.user, "n": session.nonce, "e": session.expires}).encode())
        return f"{payload}.{self._sign(payload)}"

    def decode(self, cookie: str | None, now: float | None = None) -> AdminSession | None:
        """The session in a cookie we signed and that has not expired, else None."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            data = json.loads(_unb64(payload))
            session = AdminSession(str(data["u"]), str(data["n"]), int(data["e"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None  # signed by us, so only a format change of ours gets here
        if session.expires < (time.time() if now is None else now):
            return None
        if session.user and session.user != self.user:
            return None  # the login was renamed (the key would differ anyway)
        return session

    def csrf(self, session: AdminSession) -> str:
        return _b64(hmac.new(self._key, f"csrf:{session.nonce}".encode(), hashlib.sha256).digest())

    def check_csrf(self, session: AdminSession, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf(session).encode())

    def check_password(self, user: str, password: str) -> bool:
        # Both comparisons always run: the time taken says nothing about which one failed.
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        password_ok = hmac.compare_digest(password.encode(), self._password.encode())
        return user_ok and password_ok

    def set_cookie(self, response: Response, session: AdminSession) -> None:
        response.set_cookie(
            COOKIE,
            self.encode(session),
            max_age=max(0, session.expires - int(time.time())),
            path=COOKIE_PATH,
            secure=self.secure,
            httponly=True,
            samesite="strict",
        )

    def clear_cookie(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path=COOKIE_PATH, secure=self.secure, httponly=True, samesite="strict")

    def same_origin(self, request: Request) -> bool:
        return same_origin(request, self.site)


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body, the first value of each field."""
    try:
        fields = await form_fields(request, MAX_FORM_BYTES)
    except FormRefused as exc:
        raise Refused(str(exc)) from None
    return {name: values[0] for name, values in fields.items()}


@dataclass(frozen=True)
class Lock:
    """A refusal before the password is even checked: how long, and why (for the page)."""

    seconds: float
    scope: str  # "address", "account" or "site"

    @property
    def message(self) -> str:
        minutes = int(self.seconds // 60) + 1
        if self.scope == "address":
            return f"Too many failed logins from your address: try again in {minutes} minute(s)."
        if self.scope == "account":
            return (
                f"Too many failed logins for this account: try again in {minutes} minute(s), "
                "or from an address that logged in before."
            )
        return (
            f"Too many failed logins on this site: logins are paused for {minutes} minute(s), "
            "except from addresses that logged in before."
        )


class LoginThrottle:
    """Recent failed logins: the delay before answering, and three lock-outs.

    - **Per client address**: LOCKOUT_AFTER failures in FAILURE_WINDOW.  The address is the connection's
      peer, unless a proxy listed in MAILSHOT_FORWARDED_ALLOW_IPS says otherwise (web/server.py): a client
      cannot name itself another address to escape its lock, nor lock a victim's address out.
    - **Per account** (the login name tried): ACCOUNT_LOCKOUT_AFTER failures from any addresses, and
    - **for the whole site**: SITE_LOCKOUT_AFTER failures, so rotating addresses (a botnet) still gets only
      a few hundred guesses a day.  Addresses that logged in successfully in the last KNOWN_FOR seconds are
      exempt from these two: an attacker can slow the site down, not lock its operator out.
    """

    def __init__(self) -> None:
        self._by_address = SlidingWindow(FAILURE_WINDOW, MAX_TRACKED)
        self._by_account = SlidingWindow(FAILURE_WINDOW, MAX_TRACKED)
        self._site: deque[float] = deque()
        self._known: dict[str, float] = {}  # address -> last successful login
        self._lock = threading.Lock()

    def _forget_expired(self, now: float) -> None:
        while self._site and self._site[0] <= now - FAILURE_WINDOW:
            self._site.popleft()
        if len(self._known) >= MAX_TRACKED:
            for address, when in list(self._known.items()):
                if when <= now - KNOWN_FOR:
                    del self._known[address]

    def _is_known(self, client: str, now: float) -> bool:
        return self._known.get(client, -KNOWN_FOR - 1.0) > now - KNOWN_FOR

    def locked(self, client: str, account: str = "", now: float | None = None) -> Lock | None:
        """Why and how long this client may not try now; None: it may."""
        now = time.monotonic() if now is None else now
        account = _account_key(account)
        with self._lock:
            self._forget_expired(now)
            mine = self._by_address.recent(client, now)
            if len(mine) >= LOCKOUT_AFTER:
                return Lock(mine[-LOCKOUT_AFTER] + FAILURE_WINDOW - now, "address")
            if self._is_known(client, now):
                return None
            tried = self._by_account.recent(account, now)
            if len(tried) >= ACCOUNT_LOCKOUT_AFTER:
                return Lock(tried[-ACCOUNT_LOCKOUT_AFTER] + FAILURE_WINDOW - now, "account")
            if len(self._site) >= SITE_LOCKOUT_AFTER:
                return Lock(self._site[-SITE_LOCKOUT_AFTER] + FAILURE_WINDOW - now, "site")
        return None

    def locked_for(self, client: str, now: float | None = None) -> float:
        """Seconds until this client may try again (0: it may)."""
        lock = self.locked(client, now=now)
        return lock.seconds if lock else 0.0

    def failed(self, client: str, account: str = "", now: float | None = None) -> float:
        """Record a failure; returns how long to wait before answering it."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._forget_expired(now)
            times = self._by_address.add(client, now)
            self._by_account.add(_account_key(account), now)
            self._site.append(now)
        return min(FAILURE_DELAY * len(times), MAX_FAILURE_DELAY)

    def succeeded(self, client: str, account: str = "", now: float | None = None) -> None:
        """The address is known from now on; its failures, and the account's, are forgotten."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._by_address.forget(client)
            self._by_account.forget(_account_key(account))
            self._known[client] = now


def _account_key(user: str) -> str:
    return user.strip().lower()[:100]
