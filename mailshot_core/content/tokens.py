"""Signed identifiers carried in messages: unsubscribe and tracking tokens, VERP return paths.

Each signs a few ids (a sending and a subscriber or recipient) with HMAC-SHA256 under ``MAILSHOT_SECRET_KEY``
so that nobody can forge a link or a bounce address that would unsubscribe someone
else (the original accepted any address: original-mailshot.md §11 #1), and so that
sequential ids in URLs do not let anyone enumerate other subscribers' links.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class RecipientRef:
    mailshot_id: int
    recipient_id: int


@functools.lru_cache(maxsize=16)
def _keyed(key: bytes) -> hmac.HMAC:
    """An HMAC already keyed: copying it skips the key schedule, done once per message otherwise."""
    return hmac.new(key, digestmod=hashlib.sha256)


def _mac(key: bytes, purpose: str, message: str, size: int) -> str:
    mac = _keyed(key).copy()
    mac.update(f"{purpose}:{message}".encode())
    return base64.urlsafe_b64encode(mac.digest()[:size]).decode().rstrip("=")


# --- unsubscribe / tracking tokens ---------------------------------------------------------------

# 16 bytes of MAC = 128 bits: the floor recommended for unguessable one-click links (RFC 8058 §3 asks
# for an opaque, hard-to-forge component).
_TOKEN_MAC_BYTES = 16
_ID = r"\d{1,18}"
_TOKEN_RES = {n: re.compile(rf"^({_ID}(?:\.{_ID}){{{n - 1}}})\.([A-Za-z0-9_-]{{22}})$") for n in (1, 2, 3)}

# What each kind of link signs.  The unsubscribe link names the *subscriber*, not the recipient row:
# purging a sending's details (purge.py) deletes its recipient rows, and a year-old newsletter's link
# must still unsubscribe.  Tracking links name the recipient row, whose status they move.
UNSUBSCRIBE = "unsubscribe"  # (mailshot id, subscriber id; 0 for an address that is no subscriber)
# Messages sent by releases before the web app existed carry "unsub" links signing (mailshot id,
# recipient id): read through the recipient row (unsubscribe_links.read_link), never as a subscriber id.
LEGACY_UNSUBSCRIBE = "unsub"
TRACK = "track"  # (mailshot id, recipient id)
# Double opt-in: (subscriber id, issued at, in seconds since the epoch).  Following it confirms the
# subscriber's subscriptions pending since before that time, while the link is younger than
# MAILSHOT_CONFIRM_LINK_DAYS: no table of pending tokens to keep or purge.
CONFIRM = "confirm"
# The preferences page of one subscriber, reached from a message's unsubscribe page: (subscriber id,
# issued at), valid for web/preferences.py's LINK_DAYS.
PREFERENCES = "preferences"
# Clock skew between the hosts that make and read timed tokens, tolerated.
_SKEW = 300


def make_token(key: bytes, purpose: str, *ids: int) -> str:
    body = ".".join(str(i) for i in ids)
    return f"{body}.{_mac(key, purpose, body, _TOKEN_MAC_BYTES)}"


def read_token(key: bytes, token: str, purpose: str, count: int = 2) -> tuple[int, ...] | None:
    """The ``count`` ids a token signs for ``purpose``, or None when it is malformed, truncated or forged."""
    match = _TOKEN_RES[count].fullmatch(token)  # not .match: "$" also matches before a trailing newline
    if not match:
        return None
    if not hmac.compare_digest(match[2], _mac(key, purpose, match[1], _TOKEN_MAC_BYTES)):
        return None
    return tuple(int(i) for i in match[1].split("."))


def make_timed_token(key: bytes, purpose: str, ident: int, issued: int) -> str:
    """A token signing ``ident`` and the time it was issued (seconds since the epoch)."""
    return make_token(key, purpose, ident, issued)


def read_timed_token(key: bytes, token: str, purpose: str, max_age: float, now: float) -> tuple[int, int] | None:
    """(ident, issued) of a timed token no older than ``max_age`` seconds; None when forged or too old."""
    ids = read_token(key, token, purpose, 2)
    if ids is None:
        return None
    ident, issued = ids
    if not -_SKEW <= now - issued <= max_age:
        return None
    return ident, issued


# --- VERP ------------------------------------------------------------------------------------------

# Ids plus a short MAC instead of the raw address (email-standards.md §1.4): fits the 64-octet local
# part limit of RFC 5321, survives address changes, and a forged bounce address is ignored.  The MAC
# is lower-case hex because some MTAs change the case of local parts.
_VERP_MAC_HEX = 12
_VERP_RE = re.compile(
    # The base may itself contain "+" (bounces+news@...): the VERP part is the last "+m<id>.r<id>.<sig>".
    r"(?P<base>[^@]+)\+m(?P<m>\d{1,18})\.r(?P<r>\d{1,18})\.(?P<sig>[0-9a-f]{12})@(?P<domain>[^@]+)",
    re.I,
)


def _verp_mac(key: bytes, body: str) -> str:
    return hmac.new(key, f"verp:{body}".encode(), hashlib.sha256).hexdigest()[:_VERP_MAC_HEX]


def verp_address(key: bytes, bounce_address: str, ref: RecipientRef) -> str:
    local, domain = bounce_address.rsplit("@", 1)
    body = f"m{ref.mailshot_id}.r{ref.recipient_id}"
    return f"{local}+{body}.{_verp_mac(key, body)}@{domain}"


def parse_verp(key: bytes, address: str) -> RecipientRef | None:
    """The recipient a VERP address names, or None when unsigned, forged or not a VERP address."""
    match = _VERP_RE.fullmatch(address.strip().strip("<>"))
    if not match:
        return None
    body = f"m{match['m']}.r{match['r']}"
    if not hmac.compare_digest(match["sig"].lower(), _verp_mac(key, body)):
        return None
    return RecipientRef(int(match["m"]), int(match["r"]))
