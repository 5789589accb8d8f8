"""Give a serialised message its :class:`MessageParts`, for the ESP APIs that take fields, not MIME.

The bulk headers are read back from the bytes ``message.build_message`` wrote, so an ESP message
carries exactly the List-Unsubscribe, List-Id and ids an SMTP one does (one place decides them).
"""

from __future__ import annotations

import dataclasses
from email.header import decode_header, make_header

from mailshot_core.content.message import Envelope
from mailshot_core.content.render import RenderedContent
from mailshot_core.transports.base import MessageParts, OutgoingMessage

# Headers an ESP must pass through; the rest (From, To, Subject, MIME) are API fields of their own.
PASSED_HEADERS = (
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
    "Precedence",
    "X-Mailshot-Id",
    "X-Mailshot-Recipient",
)


def _headers(data: bytes) -> dict[str, str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii", "replace")
    unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ")
    wanted = {name.lower(): name for name in PASSED_HEADERS}
    found: dict[str, str] = {}
    for line in unfolded.split("\r\n"):
        name, _, value = line.partition(":")
        canonical = wanted.get(name.strip().lower())
        if canonical is not None:
            value = value.strip()
            # List-Id's description may be RFC 2047 encoded words; JSON APIs take the text itself.
            found[canonical] = str(make_header(decode_header(value))) if "=?" in value else value
    return found


def with_parts(msg: OutgoingMessage, env: Envelope, to_name: str, content: RenderedContent) -> OutgoingMessage:
    parts = MessageParts(
        mailshot_id=env.mailshot_id,
        from_email=env.from_email,
        from_name=env.from_name,
        to_email=msg.envelope_to,
        to_name=to_name,
        subject=content.subject,
        html=content.html,
        text=content.text,
        reply_to=env.reply_to,
        headers=_headers(msg.data),
    )
    return dataclasses.replace(msg, parts=parts)


def parts_from_mime(msg: OutgoingMessage) -> MessageParts:
    """Fields read back from the MIME bytes: for the rare message built without parts (test sends).

    The stdlib parser costs milliseconds per message, which is why the batched path builds the parts
    directly (:func:`with_parts`).
    """
    import email
    import email.policy
    from email.message import EmailMessage
    from email.utils import parseaddr

    parsed = email.message_from_bytes(msg.data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    from_name, from_email = parseaddr(str(parsed["From"]))
    to_name, _ = parseaddr(str(parsed["To"]))
    html = parsed.get_body(("html",))
    text = parsed.get_body(("plain",))
    headers = _headers(msg.data)
    return MessageParts(
        mailshot_id=int(headers.get("X-Mailshot-Id", "0")),
        from_email=from_email,
        from_name=from_name,
        to_email=msg.envelope_to,
        to_name=to_name,
        subject=str(parsed["Subject"]),
        html=html.get_content() if isinstance(html, EmailMessage) else "",
        text=text.get_content() if isinstance(text, EmailMessage) else "",
        reply_to=str(parsed["Reply-To"]) if parsed["Reply-To"] else None,
        headers=headers,
        test=".t" in msg.message_id.split("@")[0],
    )
