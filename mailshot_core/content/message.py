"""MIME assembly: one RFC 5322 message per recipient, with the headers bulk mail needs.

- multipart/alternative, text first then HTML (clients show the last part they can);
- UTF-8 subject and display names as RFC 2047 encoded words (``email.policy``);
- a deterministic Message-ID per (sending, recipient), so a duplicate is recognisable;
- ``List-Unsubscribe`` (HTTPS, plus mailto when configured) and
  ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058; Gmail/Yahoo 2024 rules);
- ``List-Id`` (RFC 2919), ``Precedence: bulk`` (stops auto-responders);
- ``X-Mailshot-Id`` / ``X-Mailshot-Recipient``, returned in DSNs and ARF reports;
- a per-recipient VERP envelope sender when ``MAILSHOT_BOUNCE_ADDRESS`` is set.

Header values with CR or LF are refused (header injection): :func:`check_header_value`.
"""

from __future__ import annotations

import binascii
import functools
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.charset import Charset
from email.header import Header
from email.utils import formatdate
from typing import Any, Final

from mailshot_core.content.render import CompiledMailshot, Personalisation, RenderedContent, Skeleton, Slot
from mailshot_core.content.tokens import RecipientRef, verp_address


@dataclass(frozen=True, slots=True)
class MessageParts:
    """The same message as fields, for HTTP APIs that assemble the MIME themselves (ESPs).

    Rendered by our own sandbox like the SMTP bytes, so variables behave the same on every transport.
    """

    mailshot_id: int
    from_email: str
    from_name: str
    to_email: str
    to_name: str
    subject: str
    html: str
    text: str
    reply_to: str | None
    headers: Mapping[str, str]  # List-Unsubscribe(-Post), List-Id, Precedence, X-Mailshot-*: as in the MIME
    test: bool = False  # a [TEST] message: kept out of the provider's campaign (deduplication, stats)


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One personalised message, ready for the wire."""

    recipient_id: int
    envelope_from: str
    envelope_to: str
    data: bytes
    message_id: str
    parts: MessageParts | None = None  # set on the batched (ESP) path only
    # No line of ``data`` starts with '.' (message.py's messages: a leading dot is encoded =2E), so the
    # SMTP session sends it without searching 10 KB for transparency dots (RFC 5321 §4.5.2).
    dot_safe: bool = False


class HeaderError(ValueError):
    """A header value is unusable (CR/LF, bad address); the message says which."""


# RFC 5322 §2.1.1: a line is at most 998 characters.  A display name or a subject longer than one
# line is a mistake or an attack (a 100,000-character name in every To:), never a newsletter.
MAX_HEADER_TEXT = 998


def check_header_value(what: str, value: str, max_length: int | None = None) -> str:
    """``value`` if it can be a header's text: one line, and at most ``max_length`` characters."""
    if "\r" in value or "\n" in value:
        raise HeaderError(f"{what} must be a single line (it contains a CR or LF character): {value[:200]!r}")
    if max_length is not None and len(value) > max_length:
        raise HeaderError(f"{what} is {len(value)} characters long; at most {max_length}: {value[:40]!r}...")
    return value


@dataclass(frozen=True)
class Envelope:
    """Per-sending header values, computed once."""

    mailshot_id: int
    from_name: str
    from_email: str
    list_id: str  # full List-Id value, e.g. '"Weekly news" <weekly.news.example.org>'
    domain: str  # right-hand side of Message-IDs
    secret_key: bytes
    reply_to: str | None = None
    bounce_address: str | None = None
    unsubscribe_mailto: str | None = None


def message_id(mailshot_id: int, recipient_id: int, domain: str, test: bool = False) -> str:
    kind = "t" if test else "r"
    return f"<mailshot.{mailshot_id}.{kind}{recipient_id}@{domain}>"


# Printable US-ASCII and space: anything else (non-ASCII, controls, tabs) goes out as RFC 2047 encoded
# words.  So does ASCII text that looks like an encoded word ("=?...?="), or a reader would decode it
# (Python's parser does so even inside a quoted-string).
_PLAIN = re.compile(r"[\x20-\x7e]*")
_LOOKS_ENCODED = re.compile(r"=\?[^?\s]*\?[bBqQ]\?[^?\s]*\?=")
# A display name that needs no quoting: atoms separated by single spaces (RFC 5322 §3.2.3/§3.2.5).  Any
# other ASCII name is sent as a quoted-string, which keeps double spaces and specials exactly.
_ATOMS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
# Where a header line may be folded: before a run of spaces that has text on both sides, so no line
# ends with a space and no continuation line is blank (RFC 5322 §3.2.2).
_FOLD_AT = re.compile(r"(?<! ) +(?=[^ ])")
_LINE = 78  # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters, MUST be at most 998
_MAX_LINE = 998
_UTF8 = Charset("utf-8")


def _is_plain(value: str) -> bool:
    return _PLAIN.fullmatch(value) is not None and _LOOKS_ENCODED.search(value) is None


def _fold(name: str, value: str) -> bytes | None:
    """``Name: value`` folded at spaces into lines of at most 78 characters where spaces allow it.

    None when a piece would still exceed 998 characters (the caller then encodes the value).
    """
    line = f"{name}: {value}"
    if len(line) <= _LINE:
        return f"{line}\r\n".encode("ascii")
    breaks = [m.start() for m in _FOLD_AT.finditer(line) if m.start() > len(name) + 1]
    pieces: list[str] = []
    start, previous = 0, 0
    for cut in [*breaks, len(line)]:
        if cut - start > _LINE and previous > start:
            pieces.append(line[start:previous])
            start = previous
        previous = cut
    pieces.append(line[start:])
    if any(len(piece) > _MAX_LINE for piece in pieces):
        return None
    return ("\r\n".join(pieces) + "\r\n").encode("ascii")


def _encoded_words(value: str, header_name: str) -> str:
    """RFC 2047 encoded words, folded with CRLF (``Header.encode`` folds with a bare LF by default)."""
    return Header(value, "utf-8", header_name=header_name).encode(linesep="\r\n")


def _header(name: str, value: str) -> bytes:
    """One unstructured header (Subject): plain ASCII folded at spaces, anything else as encoded words."""
    if _is_plain(value):
        folded = _fold(name, value)
        if folded is not None:
            return folded
    return f"{name}: {_encoded_words(value, name)}\r\n".encode("ascii")


def _structured(name: str, value: str) -> bytes:
    """One structured header whose value is already ASCII (addresses, URLs, ids): folded, never encoded.

    Encoding a whole structured value would hide the address or id inside an encoded word (RFC 2047 §5
    allows encoded words only in phrases, comments and unstructured text).
    """
    if value.isascii():
        folded = _fold(name, value)
        if folded is not None:
            return folded
    return _header(name, value)  # not expected from this module's callers: keep the old behaviour


def _phrase(name: str) -> str:
    """A display name as one RFC 5322 phrase on one line: atoms, a quoted-string, or one encoded word.

    One encoded word rather than several: a long name makes a word longer than RFC 2047's 75
    characters (what ``email.utils.formataddr`` also does), but Python's own parser (3.11) puts a space
    between adjacent encoded words in a phrase, where RFC 2047 §6.2 says to ignore it.
    """
    if _ATOMS.fullmatch(name) and _is_plain(name):
        return name
    if _is_plain(name.replace("\t", " ")):  # a quoted-string keeps a tab; an encoded word may not
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return _UTF8.header_encode(name)


def _address(header_name: str, role: str, name: str, email: str) -> bytes:
    """``From``/``To``: the display name encoded on its own, the address itself left readable."""
    check_header_value(f"{role} name", name, MAX_HEADER_TEXT)
    check_header_value(f"{role} address", email)
    if "@" not in email or any(c in email for c in ' <>"') or not email.isprintable():
        raise HeaderError(f"{role} address: not a usable address {email!r}")
    if not email.isascii():
        # formataddr raised a bare UnicodeEncodeError here, which the send loop did not catch.
        raise HeaderError(f"{role} address: internationalised addresses (SMTPUTF8) are not supported: {email!r}")
    value = f"{_phrase(name)} <{email}>" if name else email
    folded = _fold(header_name, value)
    if folded is None:  # a name too long for one line, with no space to fold at: several encoded words
        folded = f"{header_name}: {_encoded_words(name, header_name)} <{email}>\r\n".encode("ascii")
    return folded


def _list_id(value: str) -> str:
    """List-Id with only its description encoded: the ``<list.example.org>`` part must stay readable."""
    check_header_value("list id", value)
    match = re.fullmatch(r"\s*(.*?)\s*(<[\x21-\x7e]+>)\s*", value)
    if match is None or _is_plain(match[1]):
        return value
    description = match[1]
    if len(description) >= 2 and description[0] == description[-1] == '"':
        description = description[1:-1]
    return f"{_phrase(description)} {match[2]}"


def _qp(text: str) -> bytes:
    """Quoted-printable with CRLF line ends; '=' is always encoded, so '=_' never starts a line, and
    neither does '.' (:func:`_dot_safe`)."""
    body = text.replace("\r\n", "\n").replace("\r", "\n")
    encoded = binascii.b2a_qp(body.encode("utf-8"), quotetabs=False, istext=True, header=False)
    return _dot_safe(encoded).replace(b"\n", b"\r\n")


_QP_LINE: Final = 76  # RFC 2045 §6.7: encoded lines of at most 76 characters, the soft break's '=' included


def _escape_safe(encoded: bytes, cut: int) -> int:
    """``cut``, moved back so that a soft break there never splits an ``=XX`` escape."""
    if encoded[cut - 1 : cut] == b"=":
        return cut - 1
    if encoded[cut - 2 : cut - 1] == b"=":
        return cut - 2
    return cut


def _dot_safe(encoded: bytes) -> bytes:
    """Quoted-printable (LF line ends) in which no line starts with '.' (such a dot becomes ``=2E``)
    and none is longer than 76 characters.

    The SMTP session then has nothing to dot-stuff (RFC 5321 §4.5.2), which spared a search of every
    10 KB body on the hot path (bench/RESULTS.md); decoders read ``=2E`` as the same '.'.  A line that
    grows past 76 characters is split with a soft break, never inside an ``=XX`` escape.  (binascii
    itself lets a line reach 77 when it ends with a space it encodes as ``=20``.)
    """
    if b"\n" not in encoded and len(encoded) <= _QP_LINE and not encoded.startswith(b"."):
        return encoded  # the common case of a personal value, on the hot path
    lines = encoded.split(b"\n")
    if not any(line[:1] == b"." or len(line) > _QP_LINE for line in lines):
        return encoded
    out: list[bytes] = []
    for line in lines:
        while True:
            if line.startswith(b"."):
                line = b"=2E" + line[1:]
            if len(line) <= _QP_LINE:
                break
            cut = _escape_safe(line, _QP_LINE - 1)  # room for the soft break's '='
            out.append(line[:cut] + b"=")
            line = line[cut:]  # may start with '.' again, or still be too long
        out.append(line)
    return b"\n".join(out)


def _qp_piece(text: str) -> bytes:
    """Quoted-printable of one piece of a part, ending with a line break or a soft line break.

    Pieces so ended can be concatenated into a valid body: each starts on a fresh line, and no line
    grows past 76 characters (RFC 2045 §6.7).  Soft breaks vanish when decoding, so the reader sees
    exactly the text :func:`_qp` of the whole part would give.
    """
    if (
        len(text) <= _QP_LINE - 1
        and text.isascii()
        and text.isprintable()  # no control character: no line break, no tab
        and "=" not in text
        and not text.endswith(" ")
        and not text.startswith(".")
    ):
        # A short plain value (a name, an address, a link) is its own quoted-printable: most personal
        # values are, and binascii plus the checks below cost more than the rest of their message.
        return text.encode("ascii") + b"=\r\n" if text else b""
    encoded = _qp(text)
    if not encoded or encoded.endswith(b"\r\n"):
        return encoded
    start = encoded.rfind(b"\n") + 1
    if len(encoded) - start <= 75:
        return encoded + b"=\r\n"
    cut = _escape_safe(encoded, start + 75)  # the last line has 76 characters: its tail to a line of its own
    return encoded[:cut] + b"=\r\n" + _dot_safe(encoded[cut:]) + b"=\r\n"  # the tail may start with '.'


@functools.lru_cache(maxsize=64)
def _sending_headers(env: Envelope) -> tuple[bytes, bytes, bytes]:
    """The headers every message of a sending shares, serialised once: (From, Reply-To, List-Id ...)."""
    sender = _address("From", "sender", env.from_name, env.from_email)
    reply_to = _structured("Reply-To", check_header_value("reply-to address", env.reply_to)) if env.reply_to else b""
    tail = _structured("List-Id", _list_id(env.list_id))
    tail += b"Precedence: bulk\r\n"
    tail += f"X-Mailshot-Id: {env.mailshot_id}\r\n".encode()
    return sender, reply_to, tail


@functools.lru_cache(maxsize=4)
def _date_header(second: int) -> bytes:
    return _header("Date", formatdate(second, usegmt=True))


def _head(
    env: Envelope, recipient_id: int, to_email: str, to_name: str, subject: str, url_unsubscribe: str, test: bool
) -> tuple[bytearray, str]:
    sender, reply_to, tail = _sending_headers(env)
    mid = message_id(env.mailshot_id, recipient_id, env.domain, test)
    head = bytearray(sender)
    head += _address("To", "recipient", to_name, to_email)
    head += _header("Subject", check_header_value("subject", subject))
    head += _date_header(int(time.time()))
    head += _header("Message-ID", mid)
    head += reply_to
    targets = []
    if url_unsubscribe:
        targets.append(f"<{check_header_value('unsubscribe URL', url_unsubscribe)}>")
    if env.unsubscribe_mailto:
        targets.append(f"<mailto:{env.unsubscribe_mailto}?subject=unsubscribe>")
    if targets:
        head += _structured("List-Unsubscribe", ", ".join(targets))
        if url_unsubscribe.startswith(("https://", "http://")):
            head += b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    head += tail
    head += f"X-Mailshot-Recipient: {recipient_id}\r\nMIME-Version: 1.0\r\n".encode()
    return head, mid


_TEXT_PART = b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n'
_HTML_PART = b'Content-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n'


def _assemble(
    env: Envelope, recipient_id: int, to_email: str, test: bool, head: bytearray, mid: str, text: bytes, html: bytes
) -> OutgoingMessage:
    """The message from its header block and its quoted-printable parts (``html`` empty: text only)."""
    if html:
        # "=_" cannot occur in quoted-printable text ('=' is always encoded), so no part can contain it.
        boundary = f"=_mailshot_{env.mailshot_id}_{recipient_id}".encode()
        head += b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n\r\n'
        body = b"".join(
            (b"--", boundary, b"\r\n", _TEXT_PART, b"\r\n", text, b"\r\n--", boundary, b"\r\n", _HTML_PART, b"\r\n")
        )
        body += html + b"\r\n--" + boundary + b"--\r\n"
    else:
        head += _TEXT_PART + b"\r\n"
        body = text
        if not body.endswith(b"\r\n"):  # end with one line break, not an extra empty line
            body += b"\r\n"
    envelope_from = env.from_email
    if env.bounce_address and not test:
        envelope_from = verp_address(env.secret_key, env.bounce_address, RecipientRef(env.mailshot_id, recipient_id))
    elif env.bounce_address:
        envelope_from = env.bounce_address
    return OutgoingMessage(
        recipient_id=recipient_id,
        envelope_from=envelope_from,
        envelope_to=to_email,
        data=bytes(head) + body,
        message_id=mid,
        dot_safe=True,  # headers never start with '.', nor do the quoted-printable parts (_qp)
    )


def build_message(
    env: Envelope,
    recipient_id: int,
    to_email: str,
    to_name: str,
    content: RenderedContent,
    url_unsubscribe: str,
    *,
    test: bool = False,
) -> OutgoingMessage:
    """Serialise one message directly to bytes.

    Built by hand rather than through ``EmailMessage``: the stdlib's header registry and generator
    cost ~3 ms per message (profiled), more than the SMTP exchange itself, while this costs tens of
    microseconds.  tests/content/test_message.py parses the output with the stdlib parser to prove it is a
    well-formed message with the same headers.
    """
    head, mid = _head(env, recipient_id, to_email, to_name, content.subject, url_unsubscribe, test)
    html = _qp(content.html) if content.html else b""
    return _assemble(env, recipient_id, to_email, test, head, mid, _qp(content.text or ""), html)


class _EncodedPart:
    """One part's skeleton with its static pieces quoted-printable-encoded once."""

    def __init__(self, skeleton: Skeleton) -> None:
        self.skeleton = skeleton
        pieces = [p for p in skeleton.pieces if p != ""]
        self.pieces: list[bytes] = [_qp_piece(p) if isinstance(p, str) else b"" for p in pieces]
        # Where each slot goes, so a message is a list copy, a few assignments and one join.
        self.slots = [(i, p.name) for i, p in enumerate(pieces) if isinstance(p, Slot)]
        self.names = sorted({name for _, name in self.slots})
        self.has_static_text = len(self.slots) < len(pieces)

    def encode(self, context: dict[str, Any]) -> bytes:
        """The part for one recipient; empty when it renders to nothing (no HTML part then)."""
        values = {n: self.skeleton.value(n, context) for n in self.names}
        if not self.has_static_text and not any(values.values()):
            return b""
        encoded = {n: _qp_piece(v) for n, v in values.items()}
        out = self.pieces.copy()
        for i, name in self.slots:
            out[i] = encoded[name]
        return b"".join(out)


class MessageBuilder:
    """Builds one sending's messages; the static text of simple templates is encoded once.

    Quoted-printable encoding of a ~10 KB newsletter's two parts cost more per message than the whole
    SMTP exchange (bench/RESULTS.md).  When the templates are only text and ``{{ variable }}`` slots
    (:class:`render.Skeleton`), each static piece is encoded here once, and a message costs the
    encoding of its few personal values plus a join.  Other templates go through Jinja2 and
    :func:`build_message`.  Both give the same decoded message (tests/content/test_message.py).
    """

    def __init__(self, env: Envelope, compiled: CompiledMailshot) -> None:
        self.env = env
        self.compiled = compiled
        self._parts: tuple[Skeleton, _EncodedPart, _EncodedPart] | None = None
        if compiled.skeletons is not None:
            subject, html, text = compiled.skeletons
            self._parts = (subject, _EncodedPart(html), _EncodedPart(text))

    @property
    def pre_encoded(self) -> bool:
        """The templates' static text is encoded once: a message costs its values' encoding and a join
        (tens of microseconds), not a Jinja2 rendering (hundreds)."""
        return self._parts is not None

    def build(self, recipient_id: int, to_email: str, who: Personalisation, *, test: bool = False) -> OutgoingMessage:
        """Raises TemplateError (render) or HeaderError (a value unusable in a header)."""
        context = who.as_context()
        if self._parts is None or who.has_carriage_return():
            # A value with a CR could pair with a LF of the static text: only a whole-part encoding
            # normalises that exactly as build_message does.
            content = self.compiled.render(who)
            if test:
                content = RenderedContent(f"[TEST] {content.subject}", content.html, content.text)
            return build_message(self.env, recipient_id, to_email, who.nom, content, who.url_unsubscribe, test=test)
        subject_skeleton, html, text = self._parts
        subject = " ".join(subject_skeleton.render(context).split())
        if test:
            subject = f"[TEST] {subject}"
        head, mid = _head(self.env, recipient_id, to_email, who.nom, subject, who.url_unsubscribe, test)
        return _assemble(self.env, recipient_id, to_email, test, head, mid, text.encode(context), html.encode(context))


def build_notice(
    *,
    from_name: str,
    from_email: str,
    to_email: str,
    to_name: str,
    subject: str,
    text: str,
    domain: str,
    kind: str,
    reply_to: str | None = None,
) -> OutgoingMessage:
    """A one-off message that belongs to no sending (an opt-in confirmation): plain text, no List-*
    headers nor Precedence: bulk, and ``Auto-Submitted: auto-generated`` (RFC 3834) so that no
    auto-responder answers it.  ``kind`` names it in the Message-ID (``<mailshot.confirm.…@domain>``)."""
    mid = f"<mailshot.{kind}.{secrets.token_hex(8)}@{domain}>"
    head = bytearray(_address("From", "sender", from_name, from_email))
    head += _address("To", "recipient", to_name, to_email)
    head += _header("Subject", check_header_value("subject", " ".join(subject.split())))
    head += _date_header(int(time.time()))
    head += _header("Message-ID", mid)
    if reply_to:
        head += _structured("Reply-To", check_header_value("reply-to address", reply_to))
    head += b"Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n" + _TEXT_PART + b"\r\n"
    body = _qp(text)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return OutgoingMessage(
        recipient_id=0,
        envelope_from=from_email,
        envelope_to=to_email,
        data=bytes(head) + body,
        message_id=mid,
        dot_safe=True,
    )
