"""Reading the providers' webhook payloads into inbox rows (:class:`IncomingEvent`), nothing more.

Each reader takes the raw request body (already authenticated by ``web/webhooks.py``) and returns
one row per message event, with the provider's own event name as ``kind``: what an event *means*
for a recipient is decided later, by ``feedback.py``'s mapping tables, when the inbox is applied.
Bad input raises :class:`MalformedPayload` naming the event and the field.

Payload formats: reference/email-standards.md §2.2-2.5 (Mailjet event API, SparkPost webhooks,
Mandrill ``mandrill_events``, Brevo transactional webhooks, SES event publishing through SNS).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

# The inbox column is 20 characters: provider event names fit ("generation_rejection" is the longest).
KIND_LENGTH = 20
# Our ids are INTEGER columns (PostgreSQL: 32 bits).  A bigger number in a correlation field was not
# sent by us (``m99999999999999999999999-r1``): no sending, rather than an overflow in the database.
MAX_ID = 2**31 - 1
# What Mailshot itself puts in every message, the fallback when a provider's id fields are missing: the
# campaign / tag of the sending (transports/http.py campaign()), our headers, our Message-ID.
_CAMPAIGN = re.compile(r"^mailshot-(\d{1,10})$")
_MESSAGE_ID = re.compile(r"^<mailshot\.(\d{1,10})\.r(\d{1,10})@")


class MalformedPayload(ValueError):
    """The body is not what the provider documents; the message says where."""


@dataclass(frozen=True)
class IncomingEvent:
    source: str
    event_id: str  # the provider's unique id, or "sha256:<digest of the event>" when it has none
    kind: str  # the provider's event name, as sent
    email: str
    mailshot_id: int | None
    recipient_id: int | None
    occurred_at: datetime | None
    detail: str | None
    raw: str


def _canonical(event: Any) -> str:
    """The stored raw text of an event: compact JSON with sorted keys, so equal events are equal text.

    A lone surrogate (valid JSON escape, invalid Unicode) cannot be stored as text: such an event is
    kept whole with its non-ASCII characters escaped instead."""
    text = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(event, sort_keys=True, separators=(",", ":"))
    return text


def digest(raw: str) -> str:
    """Identity of an event without a provider id: the same content is the same event (retries)."""
    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


def sub(event: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """A nested object of an event, or an empty one: payloads omit what does not apply."""
    value = event.get(name)
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    """One of our ids (a positive INTEGER), or None: not given, not a number, or not one we could send."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        return None
    n = int(text)
    return n if 0 < n <= MAX_ID else None


def campaign_id(value: Any) -> int | None:
    """The sending of a campaign name or tag of ours (``mailshot-<id>``)."""
    match = _CAMPAIGN.match(value) if isinstance(value, str) else None
    return _int(match[1]) if match else None


def _when(value: Any) -> datetime | None:
    if isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
        try:
            return datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError):  # a timestamp out of any calendar: not given
            return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise MalformedPayload(f"{what} is not valid JSON: nested too deep") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a number of more than 4,300 digits
        raise MalformedPayload(f"{what} is not valid JSON: {exc}") from None


def _field(event: Mapping[str, Any], name: str, where: str) -> str:
    value = event.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedPayload(f"{where}: field {name!r} is missing or not a string")
    if "\x00" in value or not _encodable(value):
        raise MalformedPayload(f"{where}: field {name!r} is not valid text (a NUL or a lone surrogate)")
    return value


def _string(value: Any) -> str:
    """A field we only match against our own formats: a string, else nothing (never ``str()`` of an
    arbitrary, maybe deeply nested, value)."""
    return value if isinstance(value, str) else ""


def _optional_text(value: Any, where: str, name: str) -> str:
    """A text field that may be absent (""), but if given must be storable text."""
    if value is None or value == "":
        return ""
    text = str(value)
    if "\x00" in text or not _encodable(text):
        raise MalformedPayload(f"{where}: field {name!r} is not valid text (a NUL or a lone surrogate)")
    return text


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _objects(payload: Any, where: str) -> list[Mapping[str, Any]]:
    items = payload if isinstance(payload, list) else [payload]
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise MalformedPayload(f"{where} {i}: not a JSON object")
    return items


def _detail(*values: Any) -> str | None:
    """The provider's explanation, for people: shortened, and made storable (NUL, lone surrogates)."""
    # Scalars only: a nested object there is not an explanation, and printing one can recurse deeply.
    text = " ".join(str(v)[:1000] for v in values if isinstance(v, str | int | float) and v != "")[:1000]
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8") or None


# --- Mailjet ------------------------------------------------------------------------------------------

_CUSTOM_ID = re.compile(r"^m(\d{1,10})-r(\d{1,10})$")


def _mailjet_ids(ev: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """Our ``EventPayload`` ({"m": sending, "r": recipient}), else ``CustomID`` m<sending>-r<recipient>,
    else the sending from ``CustomCampaign`` (the recipient is then found by address)."""
    payload = ev.get("Payload")
    if isinstance(payload, str) and payload.startswith("{"):
        try:
            ids = json.loads(payload)
        except (ValueError, RecursionError):
            ids = None  # another sender's payload on the same account: not ours, try the other fields
        if isinstance(ids, dict) and _int(ids.get("m")) is not None:
            return _int(ids.get("m")), _int(ids.get("r"))
    match = _CUSTOM_ID.match(_string(ev.get("CustomID")))
    if match and _int(match[1]) is not None:
        return _int(match[1]), _int(match[2])
    return campaign_id(ev.get("customcampaign")), None


def mailjet(body: bytes) -> list[IncomingEvent]:
    """Event API, Version 1 (one object) or 2 (an array of the last second's events)."""
    events = []
    for i, ev in enumerate(_objects(_json(body, "Mailjet body"), "event")):
        where = f"event {i}"
        kind, email = _field(ev, "event", where), _field(ev, "email", where)
        raw = _canonical(ev)
        mailshot_id, recipient_id = _mailjet_ids(ev)
        events.append(
            IncomingEvent(
                "mailjet",
                digest(raw),
                kind[:KIND_LENGTH],
                email,
                mailshot_id,
                recipient_id,
                _when(ev.get("time")),
                _detail(ev.get("error_related_to"), ev.get("error"), ev.get("url"), ev.get("source")),
                raw,
            )
        )
    return events


# --- SparkPost ----------------------------------------------------------------------------------------


def sparkpost(body: bytes) -> list[IncomingEvent]:
    """An array of ``{"msys": {"<class>": {...}}}``; ``{"msys": {}}`` is the ping sent at set-up."""
    payload = _json(body, "SparkPost body")
    if not isinstance(payload, list):
        raise MalformedPayload("SparkPost body: expected a JSON array of {'msys': ...} objects")
    events = []
    for i, item in enumerate(_objects(payload, "event")):
        where = f"event {i}"
        msys = item.get("msys")
        if not isinstance(msys, dict):
            raise MalformedPayload(f"{where}: field 'msys' is missing or not an object")
        for cls, ev in msys.items():
            if not isinstance(ev, dict):
                raise MalformedPayload(f"{where}: msys.{_shown(cls)} is not an object")
            kind = _field(ev, "type", f"{where} ({_shown(cls)})")
            raw = _canonical(ev)
            event_id = _field(ev, "event_id", f"{where} ({_shown(cls)})")
            email = _optional_text(ev.get("rcpt_to") or ev.get("raw_rcpt_to"), f"{where} ({_shown(cls)})", "rcpt_to")
            meta = sub(ev, "rcpt_meta")
            # Transmission metadata (mailshot_id) and recipient metadata (recipient_id), merged by SparkPost;
            # else the transmission's campaign_id (ours: mailshot-<id>) and the address.
            mailshot_id = _int(meta.get("mailshot_id")) or campaign_id(ev.get("campaign_id"))
            events.append(
                IncomingEvent(
                    "sparkpost",
                    event_id,
                    kind[:KIND_LENGTH],
                    email,
                    mailshot_id,
                    _int(meta.get("recipient_id")),
                    _when(ev.get("timestamp")),
                    _detail(
                        ev.get("bounce_class"), ev.get("raw_reason") or ev.get("reason"), ev.get("target_link_url")
                    ),
                    raw,
                )
            )
    return events


def _shown(name: Any) -> str:
    return str(name)[:40].encode("utf-8", "backslashreplace").decode()


# --- Mandrill -----------------------------------------------------------------------------------------

# Sync events (Mandrill "Webhooks": whitelist/blacklist changes) have `type` and `action`, no `event` and
# no message: they say nothing about a message we sent.  Inbound messages neither.
MANDRILL_SYNC_TYPES = ("whitelist", "blacklist")


def mandrill_form(body: bytes) -> dict[str, str]:
    """The form fields of a Mandrill POST (application/x-www-form-urlencoded)."""
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body)))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedPayload(f"Mandrill body is not a form: {exc}") from None


def mandrill(body: bytes) -> list[IncomingEvent]:
    """Form field ``mandrill_events``: a JSON array of up to 1,000 events; sync events are skipped."""
    form = mandrill_form(body)
    if "mandrill_events" not in form:
        raise MalformedPayload("Mandrill body: form field 'mandrill_events' is missing")
    payload = _json(form["mandrill_events"].encode(), "field 'mandrill_events'")
    if not isinstance(payload, list):
        raise MalformedPayload("field 'mandrill_events': expected a JSON array")
    events = []
    for i, ev in enumerate(_objects(payload, "event")):
        where = f"event {i}"
        if "event" not in ev and ev.get("type") in MANDRILL_SYNC_TYPES and "action" in ev:
            continue  # acknowledged with the batch, nothing to store
        kind = _field(ev, "event", where)
        msg = ev.get("msg")
        if not isinstance(msg, dict):
            if kind in (*MANDRILL_SYNC_TYPES, "inbound"):
                continue
            raise MalformedPayload(f"{where}: field 'msg' is missing or not an object")
        email = _field(msg, "email", f"{where} msg")
        raw = _canonical(ev)
        meta = sub(msg, "metadata")
        tags = msg["tags"] if isinstance(msg.get("tags"), list) else []
        # metadata {mailshot_id} + recipient_metadata {recipient_id}, else our tag mailshot-<id>.
        mailshot_id = _int(meta.get("mailshot_id")) or next(filter(None, map(campaign_id, tags)), None)
        events.append(
            IncomingEvent(
                "mandrill",
                digest(raw),
                kind[:KIND_LENGTH],
                email,
                mailshot_id,
                _int(meta.get("recipient_id")),
                _when(ev.get("ts")),
                _detail(msg.get("bounce_description"), msg.get("diag"), ev.get("url")),
                raw,
            )
        )
    return events


# --- Brevo --------------------------------------------------------------------------------------------

_MAILIN_CUSTOM = re.compile(r"mailshot_id:(\d{1,10})")


def brevo(body: bytes) -> list[IncomingEvent]:
    """One event object, or an array of them (batched webhooks)."""
    events = []
    for i, ev in enumerate(_objects(_json(body, "Brevo body"), "event")):
        where = f"event {i}"
        kind, email = _field(ev, "event", where), _field(ev, "email", where)
        raw = _canonical(ev)
        match = _MAILIN_CUSTOM.search(_string(ev.get("X-Mailin-custom")))
        mailshot_id = _int(match[1]) if match else None
        if mailshot_id is None:
            tags = ev["tags"] if isinstance(ev.get("tags"), list) else [ev.get("tag")]
            mailshot_id = next(filter(None, map(campaign_id, tags)), None)
        events.append(
            IncomingEvent(
                "brevo",
                digest(raw),
                kind[:KIND_LENGTH],
                email,
                mailshot_id,
                None,  # versions carry no per-recipient data: found by (sending, address)
                _when(ev.get("ts_event") or ev.get("date")),
                _detail(ev.get("reason"), ev.get("link")),
                raw,
            )
        )
    return events


# --- Amazon SES through SNS ---------------------------------------------------------------------------


def _ses_ids(mail: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """Our ``EmailTags`` (mail.tags), else our X-Mailshot-Id / X-Mailshot-Recipient headers (mail.headers,
    when SES did not truncate them), else our Message-ID ``<mailshot.<sending>.r<recipient>@...>``."""
    tags = sub(mail, "tags")

    def tag(name: str) -> int | None:
        values = tags.get(name)
        return _int(values[0]) if isinstance(values, list) and values else None

    if tag("mailshot_id") is not None:
        return tag("mailshot_id"), tag("recipient_id")
    headers = {
        _string(h.get("name")).lower(): h.get("value")
        for h in (mail["headers"] if isinstance(mail.get("headers"), list) else [])
        if isinstance(h, dict)
    }
    if _int(headers.get("x-mailshot-id")) is not None:
        return _int(headers.get("x-mailshot-id")), _int(headers.get("x-mailshot-recipient"))
    match = _MESSAGE_ID.match(str(sub(mail, "commonHeaders").get("messageId") or ""))
    return (_int(match[1]), _int(match[2])) if match else (None, None)


def ses_event(notification: Mapping[str, Any], where: str = "SNS message") -> IncomingEvent | None:
    """One SES event-publishing record (the ``Message`` of an SNS notification); None when the Message
    is not JSON: SES posts a plain-text notice ("Successfully validated SNS topic...") to a new topic."""
    text = notification.get("Message", "")
    try:
        message = json.loads(text) if isinstance(text, str) else None
    except RecursionError:
        raise MalformedPayload(f"{where}: field 'Message' is nested too deep") from None
    except ValueError:
        return None
    if not isinstance(message, dict):
        raise MalformedPayload(f"{where}: field 'Message' is not a JSON object")
    kind = message.get("eventType") or message.get("notificationType")
    if not isinstance(kind, str) or not kind or not _encodable(kind) or "\x00" in kind:
        raise MalformedPayload(f"{where}: the SES record has no 'eventType'")
    mail = message.get("mail")
    if not isinstance(mail, dict):
        raise MalformedPayload(f"{where}: the SES record has no 'mail' object")
    mailshot_id, recipient_id = _ses_ids(mail)
    destination = mail["destination"] if isinstance(mail.get("destination"), list) else []
    email = _optional_text(destination[0] if destination else None, f"{where}: mail", "destination")
    bounce = sub(message, "bounce")
    bounced = bounce.get("bouncedRecipients")
    first = bounced[0] if isinstance(bounced, list) and bounced and isinstance(bounced[0], dict) else {}
    return IncomingEvent(
        "ses",
        _field(notification, "MessageId", where),
        kind[:KIND_LENGTH],
        email,
        mailshot_id,
        recipient_id,
        _when(notification.get("Timestamp")),
        _detail(bounce.get("bounceType"), bounce.get("bounceSubType"), first.get("diagnosticCode")),
        _canonical(message),
    )


READERS: dict[str, Callable[[bytes], list[IncomingEvent]]] = {
    "mailjet": mailjet,
    "sparkpost": sparkpost,
    "mandrill": mandrill,
    "brevo": brevo,
}
