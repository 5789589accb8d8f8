"""Bounce mail -> what happened to which address: VERP, RFC 3464 DSNs, RFC 5965 ARF, flufl.bounce.

Reading a returned message answers two questions, kept apart on purpose:

* **Who** (:func:`verp_candidates`): the signed VERP return path the message was returned to
  (tokens.py) names the sending and the recipient exactly, whatever address the report quotes
  (forwarding, aliases).  A VERP-looking address whose signature does not verify is reported as
  forged and never trusted.  Without VERP, the report's copy of our message (its Message-ID) is the
  only other link to a recipient (bounce_sources.py resolves both against the database).
* **What** (:func:`parse`): the standard reports first, since they say exactly what failed and why:
  RFC 3464 delivery status notifications (Action, Status, Final-Recipient, Diagnostic-Code) and
  RFC 5965 feedback reports (spam complaints); then flufl.bounce's detectors for the non-standard
  bounces of old or odd MTAs (Exim/qmail/Yahoo prose ...), which give addresses but no status.

Classification (reference/email-standards.md §1, RFC 3463 status codes):

* ``5.7.x`` (security/policy), ``5.6.x`` (content) and ``5.3.4`` (message too big) are about *our*
  message, IP or reputation, not the address: ``reject``, which never counts against the subscriber;
* ``5.2.2`` (mailbox full) and every ``4.x.x`` a server gave up on are ``soft_bounce``;
* every other ``5.x.x`` (unknown user, bad domain, mailbox disabled ...) is ``hard_bounce``;
* ``Action: delayed`` reports and flufl's warnings are recognised but change nothing (``ignore``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses

from flufl.bounce import all_failures

from mailshot_core.content.tokens import RecipientRef, parse_verp
from mailshot_core.feedback.effects import Effect

E = Effect
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_CODE = re.compile(r"\b([245])\d\d\b")
# Where the VERP return path shows up on a returned message: the envelope recipient as recorded by
# the delivering MTA (Postfix X-Original-To/Delivered-To, Exim Envelope-To), then the To header
# (bounces are addressed to the envelope sender, RFC 3464 §2 / RFC 5321 §4.5.5).  In an ARF report
# the VERP address is the Return-Path of the quoted original (feedback loops answer an FBL address).
_ENVELOPE_HEADERS = ("x-original-to", "delivered-to", "envelope-to", "x-envelope-to", "to")
_VERP_HINT = re.compile(r"[^\s<>\"',;:]+\+m\d+\.r\d+\.[0-9a-fA-F]+@[^\s<>\"',;]+")
# ARF Feedback-Type values (RFC 5965 §7.3): all but not-spam mean "this recipient complained".
_COMPLAINT_TYPES = {"abuse", "fraud", "virus", "other", "auth-failure", "dmarc"}


@dataclass(frozen=True)
class Failure:
    """One address a report names, with what happened to it."""

    email: str  # lower-case, as quoted by the report (Original/Final-Recipient, Original-Rcpt-To, prose)
    effect: Effect  # hard_bounce, soft_bounce, reject, spam or ignore (a delay warning, not-spam)
    status: str | None = None  # RFC 3463 enhanced status code, when the report has one
    diagnostic: str = ""


@dataclass(frozen=True)
class BounceReport:
    """Everything a returned message tells, before any database look-up."""

    message_id: str  # the bounce's own Message-ID ("" when it has none)
    format: str  # "dsn", "arf", "flufl" or "unknown"
    failures: tuple[Failure, ...]
    verp: RecipientRef | None  # from a correctly signed VERP return path
    forged_verp: str | None  # a VERP-looking address whose signature did not verify
    original_message_id: str | None  # Message-ID of the returned copy of our message

    @property
    def effect(self) -> Effect:
        """The most serious effect of the report (for the recipient named by VERP)."""
        order = [E.SPAM, E.HARD_BOUNCE, E.SOFT_BOUNCE, E.REJECT]
        found = {f.effect for f in self.failures}
        return next((e for e in order if e in found), E.IGNORE)


def classify_status(status: str | None, action: str = "failed", diagnostic: str = "") -> Effect:
    """The effect of one DSN recipient block (RFC 3464 §2.3.3 Action, §2.3.4 Status)."""
    action = action.strip().lower()
    if action and action != "failed":
        return E.IGNORE  # delayed, delivered, relayed, expanded: nothing has failed (yet)
    match = _STATUS.search(status or "") or _STATUS.search(diagnostic)
    if match is None:
        code = _SMTP_CODE.search(diagnostic)
        if code is None:
            return E.HARD_BOUNCE if action == "failed" else E.IGNORE
        klass, subject, detail = code[1], "", ""
    else:
        klass, subject, detail = match[1], match[2], match[3]
    if klass == "2":
        return E.IGNORE
    if klass == "4":
        return E.SOFT_BOUNCE  # a failed action with a 4.x.x status: the server gave up retrying
    if subject in ("6", "7") or (subject, detail) == ("3", "4"):
        return E.REJECT
    if (subject, detail) == ("2", "2"):
        return E.SOFT_BOUNCE  # mailbox full: the address exists
    return E.HARD_BOUNCE


def _address(field: str | None) -> str:
    """``rfc822; User@Example.org`` -> ``user@example.org`` (RFC 3464 §2.3.2 address-type prefix)."""
    if not field:
        return ""
    value = str(field).split(";", 1)[-1].strip().strip("<>").strip()
    return value.lower() if "@" in value else ""


def _blocks(part: Message) -> list[Message]:
    """The header blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    # Some MTAs send the status as text/plain-ish or base64: parse the decoded text as header blocks.
    raw = part.get_payload(decode=True)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload)
    return [HeaderParser().parsestr(block) for block in re.split(r"\r?\n\s*\r?\n", text.strip()) if block]


def _dsn_failures(msg: Message) -> list[Failure]:
    failures = []
    for part in msg.walk():
        if part.get_content_type() not in ("message/delivery-status", "message/global-delivery-status"):
            continue
        for block in _blocks(part)[1:]:  # the first block holds the per-message fields
            # Original-Recipient is the address *we* gave at RCPT TO (RFC 3461 ORCPT, RFC 3464 §2.3.1);
            # Final-Recipient may be a rewritten or internal one (e.g. "userx@sims-ms-daemon").
            email = _address(block.get("Original-Recipient")) or _address(block.get("Final-Recipient"))
            if not email:
                continue
            status = (block.get("Status") or "").strip() or None
            diagnostic = " ".join(str(block.get("Diagnostic-Code") or "").split())
            effect = classify_status(status, str(block.get("Action") or "failed"), diagnostic)
            failures.append(Failure(email, effect, status, diagnostic[:500]))
    return failures


def _quoted_original(msg: Message) -> Message | None:
    """The returned copy (or headers) of our message inside a report."""
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                return inner[0]
        if ctype in ("text/rfc822-headers", "message/rfc822-headers", "message/global-headers"):
            raw = part.get_payload(decode=True)
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(part.get_payload())
            return HeaderParser().parsestr(text)
    return None


def _arf_failures(msg: Message, original: Message | None) -> list[Failure] | None:
    """RFC 5965: None when the message is no feedback report."""
    for part in msg.walk():
        if part.get_content_type() != "message/feedback-report":
            continue
        fields = _blocks(part)
        block = fields[0] if fields else Message()
        kind = str(block.get("Feedback-Type") or "abuse").strip().lower()
        effect = E.SPAM if kind in _COMPLAINT_TYPES else E.IGNORE
        who = _address(block.get("Original-Rcpt-To")) or _address(block.get("Removal-Recipient"))
        if not who and original is not None:
            who = next((a.lower() for _, a in getaddresses([str(original.get("To") or "")]) if "@" in a), "")
        return [Failure(who, effect, None, f"feedback report: {kind}")]
    return None


def _flufl_failures(msg: Message) -> list[Failure]:
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # its detectors re-raise on odd input (e.g. Yale's on a message without From)
        return []

    def text(a: bytes | str) -> str:
        return (a.decode("utf-8", "replace") if isinstance(a, bytes) else a).strip().lower()

    found = [Failure(text(a), E.HARD_BOUNCE, None, "non-standard bounce (flufl.bounce)") for a in permanent]
    found += [Failure(text(a), E.IGNORE, None, "delay warning (flufl.bounce)") for a in temporary]
    return [f for f in found if "@" in f.email]


def verp_candidates(msg: Message, original: Message | None) -> list[str]:
    """VERP-looking addresses, most trustworthy place first (see _ENVELOPE_HEADERS)."""
    values: list[str] = []
    for name in _ENVELOPE_HEADERS:
        values += [str(v) for v in msg.get_all(name, [])]
    if original is not None:
        values += [str(v) for v in original.get_all("return-path", [])]
    found: list[str] = []
    for value in values:
        found += [m for m in _VERP_HINT.findall(value) if m not in found]
    return found


def _first_signed(key: bytes, candidates: Iterable[str]) -> tuple[RecipientRef | None, str | None]:
    forged = None
    for address in candidates:
        ref = parse_verp(key, address)
        if ref is not None:
            return ref, None
        forged = forged or address
    return None, forged


def parse(raw: bytes, key: bytes) -> BounceReport:
    """Read one returned message (any bytes: a broken message gives an ``unknown`` report)."""
    msg = message_from_bytes(raw, policy=policy.compat32)
    original = _quoted_original(msg)
    arf = _arf_failures(msg, original)
    failures: list[Failure]
    if arf is not None:
        fmt, failures = "arf", arf
    elif dsn := _dsn_failures(msg):
        fmt, failures = "dsn", dsn
    elif flufl := _flufl_failures(msg):
        fmt, failures = "flufl", flufl
    else:
        fmt, failures = "unknown", []
    ref, forged = _first_signed(key, verp_candidates(msg, original))
    original_id = str(original.get("Message-ID") or "").strip() or None if original is not None else None
    return BounceReport(
        message_id=str(msg.get("Message-ID") or "").strip(),
        format=fmt,
        failures=tuple(failures),
        verp=ref,
        forged_verp=forged,
        original_message_id=original_id,
    )
