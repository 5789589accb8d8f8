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
    """The stored raw text of an event: compact JSON with sorted keys, so equal events are equal text."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(raw: str) -> str:
    """Identity of an event without a provider id: the same content is the same event (retries)."""
    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


def sub(event: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """A nested object of an event, or an empty one: payloads omit what does not apply."""
    value = event.get(name)
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedPayload(f"{what} is not valid JSON: {exc}") from None


def _field(event: Mapping[str, Any], name: str, where: str) -> str:
    value = event.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedPayload(f"{where}: field {name!r} is missing or not a string")
    return value


def _objects(payload: Any, where: str) -> list[Mapping[str, Any]]:
    items = payload if isinstance(payload, list) else [payload]
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise MalformedPayload(f"{where} {i}: not a JSON object")
    return items


def _detail(*values: Any) -> str | None:
    text = " ".join(str(v) for v in values if v not in (None, "", [], {}))
    return text[:1000] or None


# --- Mailjet ------------------------------------------------------------------------------------------

_CUSTOM_ID = re.compile(r"^m(\d+)-r(\d+)$")


def mailjet(body: bytes) -> list[IncomingEvent]:
    """Event API, Version 1 (one object) or 2 (an array of the last second's events)."""
    events = []
    for i, ev in enumerate(_objects(_json(body, "Mailjet body"), "event")):
        where = f"event {i}"
        kind, email = _field(ev, "event", where), _field(ev, "email", where)
        raw = _canonical(ev)
        mailshot_id = recipient_id = None
        payload = ev.get("Payload")
        if isinstance(payload, str) and payload.startswith("{"):
            try:
                ids = json.loads(payload)
            except json.JSONDecodeError:
                raise MalformedPayload(f"{where}: field 'Payload' is not the JSON we sent") from None
            if isinstance(ids, dict):
                mailshot_id, recipient_id = _int(ids.get("m")), _int(ids.get("r"))
        match = _CUSTOM_ID.match(str(ev.get("CustomID") or ""))
        if mailshot_id is None and match:
            mailshot_id, recipient_id = int(match[1]), int(match[2])
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
                raise MalformedPayload(f"{where}: msys.{cls} is not an object")
            kind = _field(ev, "type", f"{where} ({cls})")
            raw = _canonical(ev)
            event_id = _field(ev, "event_id", f"{where} ({cls})")
            email = str(ev.get("rcpt_to") or ev.get("raw_rcpt_to") or "")
            meta = sub(ev, "rcpt_meta")
            events.append(
                IncomingEvent(
                    "sparkpost",
                    event_id,
                    kind[:KIND_LENGTH],
                    email,
                    _int(meta.get("mailshot_id")),
                    _int(meta.get("recipient_id")),
                    _when(ev.get("timestamp")),
                    _detail(
                        ev.get("bounce_class"), ev.get("raw_reason") or ev.get("reason"), ev.get("target_link_url")
                    ),
                    raw,
                )
            )
    return events


# --- Mandrill -----------------------------------------------------------------------------------------


def mandrill_form(body: bytes) -> dict[str, str]:
    """The form fields of a Mandrill POST (application/x-www-form-urlencoded)."""
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body)))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedPayload(f"Mandrill body is not a form: {exc}") from None


def mandrill(body: bytes) -> list[IncomingEvent]:
    """Form field ``mandrill_events``: a JSON array of up to 1,000 events."""
    form = mandrill_form(body)
    if "mandrill_events" not in form:
        raise MalformedPayload("Mandrill body: form field 'mandrill_events' is missing")
    payload = _json(form["mandrill_events"].encode(), "field 'mandrill_events'")
    if not isinstance(payload, list):
        raise MalformedPayload("field 'mandrill_events': expected a JSON array")
    events = []
    for i, ev in enumerate(_objects(payload, "event")):
        where = f"event {i}"
        kind = _field(ev, "event", where)
        msg = ev.get("msg")
        if not isinstance(msg, dict):
            if kind in ("whitelist", "blacklist", "inbound"):
                continue  # sync and inbound events: not about a message we sent
            raise MalformedPayload(f"{where}: field 'msg' is missing or not an object")
        email = _field(msg, "email", f"{where} msg")
        raw = _canonical(ev)
        meta = sub(msg, "metadata")
        events.append(
            IncomingEvent(
                "mandrill",
                digest(raw),
                kind[:KIND_LENGTH],
                email,
                _int(meta.get("mailshot_id")),
                _int(meta.get("recipient_id")),
                _when(ev.get("ts")),
                _detail(msg.get("bounce_description"), msg.get("diag"), ev.get("url")),
                raw,
            )
        )
    return events


# --- Brevo --------------------------------------------------------------------------------------------

_MAILIN_CUSTOM = re.compile(r"mailshot_id:(\d+)")
_TAG = re.compile(r"^mailshot-(\d+)$")


def brevo(body: bytes) -> list[IncomingEvent]:
    """One event object, or an array of them (batched webhooks)."""
    events = []
    for i, ev in enumerate(_objects(_json(body, "Brevo body"), "event")):
        where = f"event {i}"
        kind, email = _field(ev, "event", where), _field(ev, "email", where)
        raw = _canonical(ev)
        match = _MAILIN_CUSTOM.search(str(ev.get("X-Mailin-custom") or ""))
        if match is None:
            tags = ev["tags"] if isinstance(ev.get("tags"), list) else [ev.get("tag")]
            match = next((m for t in tags if (m := _TAG.match(str(t or "")))), None)
        events.append(
            IncomingEvent(
                "brevo",
                digest(raw),
                kind[:KIND_LENGTH],
                email,
                int(match[1]) if match else None,
                None,  # versions carry no per-recipient data: found by (sending, address)
                _when(ev.get("ts_event") or ev.get("date")),
                _detail(ev.get("reason"), ev.get("link")),
                raw,
            )
        )
    return events


# --- Amazon SES through SNS ---------------------------------------------------------------------------


def ses_event(notification: Mapping[str, Any], where: str = "SNS message") -> IncomingEvent:
    """One SES event-publishing record (the ``Message`` of an SNS notification)."""
    message = _json(str(notification.get("Message", "")).encode(), f"{where}: field 'Message'")
    if not isinstance(message, dict):
        raise MalformedPayload(f"{where}: field 'Message' is not a JSON object")
    kind = message.get("eventType") or message.get("notificationType")
    if not isinstance(kind, str):
        raise MalformedPayload(f"{where}: the SES record has no 'eventType'")
    mail = message.get("mail")
    if not isinstance(mail, dict):
        raise MalformedPayload(f"{where}: the SES record has no 'mail' object")
    tags = sub(mail, "tags")

    def tag(name: str) -> int | None:
        values = tags.get(name)
        return _int(values[0]) if isinstance(values, list) and values else None

    destination = mail["destination"] if isinstance(mail.get("destination"), list) else []
    email = str(destination[0]) if destination else ""
    bounce = sub(message, "bounce")
    bounced = bounce.get("bouncedRecipients") or [{}]
    return IncomingEvent(
        "ses",
        _field(notification, "MessageId", where),
        kind[:KIND_LENGTH],
        email,
        tag("mailshot_id"),
        tag("recipient_id"),
        _when(notification.get("Timestamp")),
        _detail(bounce.get("bounceType"), bounce.get("bounceSubType"), bounced[0].get("diagnosticCode")),
        _canonical(message),
    )


READERS: dict[str, Callable[[bytes], list[IncomingEvent]]] = {
    "mailjet": mailjet,
    "sparkpost": sparkpost,
    "mandrill": mandrill,
    "brevo": brevo,
}
