"""What each provider's event means: one :class:`Effect` per event, and the precedence of statuses.

Shared by the inbox (which applies effects to recipients) and the MAX_FAIL rule (which reads an
address's failures back from its stored events), so neither imports the other for it.  The tables
are data (STYLE §13): provider event name -> effect, with a rule where the payload decides (Mailjet
``hard_bounce``, SparkPost ``bounce_class``, SES ``bounceType``).

The mapping starts from the original plugin's (reference/original-mailshot.md §3.4-3.5) with its fixes:
Mandrill open/click mapped (an old revision compared with ``==`` and lost them), Mailjet ``bounce``
split on ``hard_bounce`` (the original made every Mailjet bounce soft), SparkPost ``click_tracking``
spelled right, ``unsub``/``unsubscribe`` events handled for every provider, deliveries recorded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any

from mailshot_core.feedback.esp_events import sub
from mailshot_core.store.models import RecipientStatus

log = logging.getLogger("mailshot.feedback")
S = RecipientStatus


class Effect(StrEnum):
    """What an event means for its recipient, whatever the provider."""

    DELIVERED = "delivered"
    READ = "read"
    CLIC = "clic"
    SOFT_BOUNCE = "soft_bounce"  # given up after retries: this message did not arrive
    HARD_BOUNCE = "hard_bounce"
    REJECT = "reject"  # refused before delivery (policy, block list, invalid)
    SPAM = "spam"
    UNSUB = "unsub"
    # An open or click that looks like a machine's (tracking.machine_reason): no status change, counted
    # apart (nb_read_machine / nb_clic_machine), once per recipient (_first_machine_hits).
    MACHINE_READ = "machine_read"
    MACHINE_CLIC = "machine_clic"
    IGNORE = "ignore"  # accepted, queued, deferred, proxy opens...: nothing to record


E = Effect
# The status each effect leads to, and the precedence: a recipient only moves to a higher rank.
# Engagement proves delivery (a read after a soft bounce wins, as in the original); a spam complaint
# or an unsubscribe is the last word.
TARGET: dict[Effect, str] = {
    E.DELIVERED: S.SENT,
    E.SOFT_BOUNCE: S.FAIL,
    E.REJECT: S.FAIL,
    E.HARD_BOUNCE: S.BOUNCE,
    E.READ: S.READ,
    E.CLIC: S.CLIC,
    E.UNSUB: S.UNSUB,
    E.SPAM: S.SPAM,
}
RANK: dict[str, int] = {
    S.TODO: 0,
    S.UNKNOWN: 0,  # in doubt after a crash: any event proves the message left
    S.KILL: 0,
    S.SENT: 1,
    S.FAIL: 2,
    S.BOUNCE: 3,
    S.READ: 4,
    S.CLIC: 5,
    S.UNSUB: 6,
    S.SPAM: 7,
}
MACHINE_COUNTERS: dict[Effect, str] = {E.MACHINE_READ: "nb_read_machine", E.MACHINE_CLIC: "nb_clic_machine"}
# Rows a worker is handing over right now: their result is not recorded yet, so an event waits.
IN_FLIGHT = {S.CLAIMED, S.SENDING}

Rule = Effect | Callable[[Mapping[str, Any]], Effect]


def _sparkpost_bounce(ev: Mapping[str, Any]) -> Effect:
    # Bounce classes (SparkPost "Bounce classification codes"): 10 invalid recipient, 30 no RCPT,
    # 90 unsubscribe are hard; 50-54 are blocks (our reputation or content, not the address) and 25/80
    # administrative: rejections; the rest are soft (SparkPost's own advice: only hard/admin suppress).
    try:
        cls = int(ev.get("bounce_class") or 1)
    except (TypeError, ValueError):
        cls = 1  # "Undetermined"
    if cls == 90:
        return E.UNSUB
    if cls in (10, 30):
        return E.HARD_BOUNCE
    if 50 <= cls <= 54 or cls in (25, 80):
        return E.REJECT
    return E.SOFT_BOUNCE


def _mailjet_bounce(ev: Mapping[str, Any]) -> Effect:
    # Greylisting (error_related_to "domain", error "greylisted" in Mailjet's error table) is the receiving
    # server asking Mailjet to come back later: a deferral (anymail maps it to "deferred"), not a failure of
    # the address, so no status change and nothing for the MAX_FAIL rule.
    reason = f"{ev.get('error_related_to') or ''} {ev.get('error') or ''}".lower()
    if "greylist" in reason:
        return E.IGNORE
    return E.HARD_BOUNCE if ev.get("hard_bounce") else E.SOFT_BOUNCE


def _ses_bounce(ev: Mapping[str, Any]) -> Effect:
    bounce = sub(ev, "bounce")
    return E.HARD_BOUNCE if bounce.get("bounceType") == "Permanent" else E.SOFT_BOUNCE


def _ses_complaint(ev: Mapping[str, Any]) -> Effect:
    complaint = sub(ev, "complaint")
    # A feedback report saying "not-spam" is the recipient taking a complaint back.
    return E.IGNORE if complaint.get("complaintFeedbackType") == "not-spam" else E.SPAM


# Provider event name -> effect (reference/email-standards.md §2.1 table).  Names absent here are
# recorded and ignored (a provider adding an event type never breaks the pipeline).
MAPPINGS: dict[str, dict[str, Rule]] = {
    "mailjet": {
        "sent": E.DELIVERED,  # Mailjet's `sent` is "accepted by the receiving server"
        "open": E.READ,
        "click": E.CLIC,
        "bounce": _mailjet_bounce,
        "blocked": E.REJECT,
        "spam": E.SPAM,
        "unsub": E.UNSUB,
    },
    "sparkpost": {
        "injection": E.IGNORE,
        "delivery": E.DELIVERED,
        "delay": E.IGNORE,
        "bounce": _sparkpost_bounce,
        "out_of_band": _sparkpost_bounce,
        "policy_rejection": E.REJECT,
        "generation_failure": E.REJECT,
        "generation_rejection": E.REJECT,
        "spam_complaint": E.SPAM,
        "open": E.READ,
        "initial_open": E.READ,
        "amp_open": E.READ,
        "amp_initial_open": E.READ,
        "click": E.CLIC,
        "amp_click": E.CLIC,
        "list_unsubscribe": E.UNSUB,
        "link_unsubscribe": E.UNSUB,
    },
    "mandrill": {
        "send": E.IGNORE,
        "delivered": E.DELIVERED,
        "deferral": E.IGNORE,
        "hard_bounce": E.HARD_BOUNCE,
        "soft_bounce": E.SOFT_BOUNCE,
        "open": E.READ,
        "click": E.CLIC,
        "spam": E.SPAM,
        "unsub": E.UNSUB,
        "reject": E.REJECT,
    },
    "brevo": {
        "request": E.IGNORE,
        "delivered": E.DELIVERED,
        "deferred": E.IGNORE,
        "hard_bounce": E.HARD_BOUNCE,
        "soft_bounce": E.SOFT_BOUNCE,
        "blocked": E.REJECT,
        # The address itself is invalid (Brevo "invalid_email": the recipient's address is not valid): a
        # hard bounce of that address, not a block of ours.
        "invalid_email": E.HARD_BOUNCE,
        "error": E.REJECT,
        "spam": E.SPAM,
        "complaint": E.SPAM,
        "opened": E.READ,
        "unique_opened": E.READ,
        # Apple Mail Privacy Protection loads every image: not a reader's open, a machine's, counted in
        # nb_read_machine like our own pixel's machine hits (tracking.py).
        "proxy_open": E.MACHINE_READ,
        "unique_proxy_open": E.MACHINE_READ,
        "unique_proxy_opened": E.MACHINE_READ,
        "click": E.CLIC,
        "unsubscribe": E.UNSUB,
        "unsubscribed": E.UNSUB,
    },
    "ses": {
        "Send": E.IGNORE,
        "Delivery": E.DELIVERED,
        "DeliveryDelay": E.IGNORE,
        "Bounce": _ses_bounce,
        "Complaint": _ses_complaint,
        "Reject": E.REJECT,
        "Rendering Failure": E.REJECT,
        "Open": E.READ,
        "Click": E.CLIC,
        "Subscription": E.UNSUB,
    },
}
# Sources whose events are written already in our own vocabulary (SMTP replies, bounce mail, pages).
_NATIVE = {effect.value: effect for effect in Effect}
# Event names (of any source) that may be a machine's open or click: the counters' queries select them,
# then classify() says which really are (tracking.machine_recount, inbox._first_machine_hits).
MACHINE_KINDS = sorted(
    {e.value for e in MACHINE_COUNTERS}
    | {kind for table in MAPPINGS.values() for kind, rule in table.items() if rule in MACHINE_COUNTERS}
)


def classify(source: str, kind: str, raw: str | None) -> Effect:
    """The effect of one stored event, by its provider's mapping table."""
    table = MAPPINGS.get(source)
    if table is None:
        return _NATIVE.get(kind, E.IGNORE)
    rule = table.get(kind, E.IGNORE)
    if isinstance(rule, Effect):
        return rule
    try:
        event = json.loads(raw or "{}")
    except json.JSONDecodeError:
        event = {}
    try:
        return rule(event if isinstance(event, dict) else {})
    except (TypeError, ValueError, AttributeError) as exc:
        # One odd event must not stop the inbox (it would be retried, and fail, every minute).
        log.warning("feedback: %s %s event not understood (%s): ignored", source, kind, exc)
        return E.IGNORE
