"""MIME assembly (mailshot_core.content.message): the hand-made bytes must parse, with the stdlib, to what was meant."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage
from email.utils import parseaddr

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailshot_core.content.message import Envelope, HeaderError, build_message, message_id
from mailshot_core.content.render import RenderedContent
from mailshot_core.content.tokens import RecipientRef, parse_verp

KEY = b"test-secret"
UNSUB = "https://news.example.org/u/7.42.abcdefghijklmnopqrstuv"


def envelope(**overrides: object) -> Envelope:
    values: dict[str, object] = {
        "mailshot_id": 7,
        "from_name": "Équipe Rédaction",
        "from_email": "news@example.org",
        "list_id": '"Weekly news" <weekly.example.org>',
        "domain": "example.org",
        "secret_key": KEY,
    }
    values.update(overrides)
    return Envelope(**values)  # type: ignore[arg-type]


def build(
    *,
    subject: str = "Hello",
    html: str = "<p>Hello</p>\n",
    text: str = "Hello\n",
    to_name: str = "Bob",
    to_email: str = "bob@example.org",
    recipient_id: int = 42,
    url: str = UNSUB,
    test: bool = False,
    **env: object,
):
    return build_message(
        envelope(**env), recipient_id, to_email, to_name, RenderedContent(subject, html, text), url, test=test
    )


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def lf(text: str) -> str:
    """Line ends as the author wrote them: the wire form is CRLF (RFC 5322 §2.1), decoded parts keep it."""
    return text.replace("\r\n", "\n")


def body_of(msg: EmailMessage, subtype: str) -> str:
    part = msg.get_body(preferencelist=(subtype,))
    assert part is not None, f"no text/{subtype} part"
    return lf(part.get_content())


def test_multipart_alternative_text_then_html_decode_back_exactly() -> None:
    """A message with HTML is multipart/alternative, text part first, each decoding to the exact content."""
    text = (
        "Bonjour Zoé, l’été arrive — 30 °C ☀️\n"
        ".a line starting with a dot\n"
        ".\n"
        "=3D is not an escape here, nor =?utf-8?q?x?=\n"
        "From the start of a line\n"
        "trailing spaces   \n"
        "tab\tinside\n" + "long " * 300 + "\n" + "x" * 1200 + "\n"
    )
    html = '<p style="color: red">Zoé = 1</p>\n<p>' + "é" * 700 + '</p>\n.\n<a href="https://e.org/?a=1&b=2">x</a>'
    msg = parse(build(text=text, html=html).data)

    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [p.get_content_charset() for p in parts] == ["utf-8", "utf-8"]
    assert lf(parts[0].get_content()) == text
    assert lf(parts[1].get_content()) == html
    assert msg.defects == [] and all(p.defects == [] for p in parts)


def test_wire_format_crlf_only_and_short_lines() -> None:
    """Every line ends with CRLF (no bare CR or LF) and none exceeds RFC 5322's 998 octets."""
    data = build(
        subject="Sujet très long " * 30,
        text="line\n" + "y" * 3000 + "\nbare\rcr\n",
        html="<p>" + "z" * 3000 + "</p>",
        to_name="Zoé " * 40,
    ).data
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert data.isascii()  # 7-bit: quoted-printable bodies, encoded-word headers
    assert b"\r\n\r\n" in data  # header / body separator


def test_bare_cr_in_body_becomes_a_line_break() -> None:
    """A lone CR or CRLF in the content is a line break, sent as CRLF."""
    msg = parse(build(text="a\rb\r\nc\n", html="").data)
    assert lf(msg.get_content()) == "a\nb\nc\n"


@pytest.mark.parametrize(
    "subject",
    [
        "L’été à 30° — déjà là é 🎉",
        "Plain ASCII subject",
        "Sujet très long " * 20 + "🎉 fin",
        "A long plain ASCII subject that goes on " * 6,
        "=?utf-8?q?not_an_encoded_word?= in plain ASCII",
        "=??Q??=",
        "a =? b ?= c",
        "x" * 1200,
    ],
)
def test_subject_encoded_and_folded_decodes_back(subject: str) -> None:
    """The subject, UTF-8 or long, is RFC 2047-encoded/folded and decodes to the exact same string."""
    data = build(subject=subject).data
    head = data.split(b"\r\n\r\n", 1)[0]
    raw = head.split(b"\r\nSubject: ", 1)[1].split(b"\r\nDate:", 1)[0]
    assert all(len(line) <= 78 for line in raw.split(b"\r\n")) or len(subject) > 900
    if len(subject) > 78:
        assert b"\r\n " in raw, "a long subject must be folded"
    if not subject.isascii():
        assert raw.startswith(b"=?utf-8?")
    assert parse(data)["Subject"] == subject


@pytest.mark.parametrize(
    ("from_name", "to_name"),
    [
        ("Équipe Rédaction", "Zoé Müller"),
        ("Newsletter", "Bob"),
        ('Bob "The Builder", Jr.', "O'Brien (Dublin)"),
        ("Spaces  kept", "back\\slash"),
        ("tab\there", "Zoé"),
        ("=?utf-8?q?tricky?=", "日本語の名前 と 長い 名前 " * 5 + "終"),
        ("=??Q??=", "x =? y ?= z"),
        ("", ""),
    ],
)
def test_display_names_decode_back(from_name: str, to_name: str) -> None:
    """From and To display names (UTF-8 as RFC 2047 words, specials quoted) decode back exactly."""
    data = build(from_name=from_name, to_name=to_name).data
    msg = parse(data)
    assert msg["From"].addresses[0].display_name == from_name
    assert msg["From"].addresses[0].addr_spec == "news@example.org"
    assert msg["To"].addresses[0].display_name == to_name
    assert msg["To"].addresses[0].addr_spec == "bob@example.org"
    head = data.split(b"\r\n\r\n", 1)[0]
    if not from_name.isascii():
        assert b"From: =?utf-8?" in head
    assert b"<news@example.org>" in head or not from_name  # the address is never inside an encoded word


def test_long_utf8_name_keeps_address_readable() -> None:
    """A display name too long for one line is split into encoded words; the address stays outside them."""
    name = "名" * 400  # ~3.6 KB as one encoded word: must be split
    data = build(to_name=name).data
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    msg = parse(data)
    assert msg["To"].addresses[0].addr_spec == "bob@example.org"
    # Python's phrase parser adds a space between adjacent encoded words (RFC 2047 §6.2 says ignore it).
    assert msg["To"].addresses[0].display_name.replace(" ", "") == name


def test_message_id_is_deterministic() -> None:
    """Message-ID is <mailshot.M.rR@domain> (tR for a test send), the same on every build."""
    first, second = build(), build()
    assert first.message_id == second.message_id == "<mailshot.7.r42@example.org>"
    assert parse(first.data)["Message-ID"] == "<mailshot.7.r42@example.org>"
    assert build(test=True).message_id == "<mailshot.7.t42@example.org>"
    assert message_id(3, 9, "lists.example.net") == "<mailshot.3.r9@lists.example.net>"


def test_bulk_headers() -> None:
    """List-Unsubscribe (https + mailto), one-click POST, List-Id, X-Mailshot-*, Precedence: bulk."""
    msg = parse(build(unsubscribe_mailto="unsubscribe@example.org").data)
    assert msg["List-Unsubscribe"] == f"<{UNSUB}>, <mailto:unsubscribe@example.org?subject=unsubscribe>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Id"] == '"Weekly news" <weekly.example.org>'
    assert msg["X-Mailshot-Id"] == "7"
    assert msg["X-Mailshot-Recipient"] == "42"
    assert msg["Precedence"] == "bulk"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"].datetime is not None


def test_list_unsubscribe_without_mailto() -> None:
    """Without an unsubscribe mailto, List-Unsubscribe is the HTTPS URL alone."""
    msg = parse(build().data)
    assert msg["List-Unsubscribe"] == f"<{UNSUB}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_list_id_with_utf8_title_keeps_the_id_readable() -> None:
    """A UTF-8 list title is encoded on its own: the <list.domain> id stays plain for filters."""
    data = build(list_id='"Lettre d’été" <lettre.example.org>').data
    raw = data.split(b"\r\nList-Id: ", 1)[1].split(b"\r\n", 1)[0]
    assert raw.startswith(b"=?utf-8?") and raw.endswith(b" <lettre.example.org>")
    assert parseaddr(str(parse(data)["List-Id"]))[1] == "lettre.example.org"


def test_text_only_message_is_single_text_plain_part() -> None:
    """Without HTML the message is one text/plain part, not a multipart."""
    msg = parse(build(html="", text="Juste du texte, é.\n").data)
    assert msg.get_content_type() == "text/plain"
    assert not msg.is_multipart()
    assert lf(msg.get_content()) == "Juste du texte, é.\n"
    assert lf(parse(build(html="", text="no final newline").data).get_content()) == "no final newline\n"


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("subject", {"subject": "Hello\r\nBcc: victim@example.org"}),
        ("subject", {"subject": "Hello\nthere"}),
        ("sender name", {"from_name": "Evil\rBcc: x@example.org"}),
        ("recipient name", {"to_name": "Bob\nBcc: x@example.org"}),
        ("unsubscribe URL", {"url": "https://e.org/u\r\nX: y"}),
    ],
)
def test_cr_or_lf_in_a_header_value_is_refused(field: str, kwargs: dict[str, str]) -> None:
    """CR or LF in a header value raises HeaderError naming the field (no header injection)."""
    with pytest.raises(HeaderError, match=field):
        build(**kwargs)  # type: ignore[arg-type]


def test_unusable_or_internationalised_address_is_a_header_error() -> None:
    """An address the message cannot carry is a HeaderError (the send loop records it), not a crash."""
    with pytest.raises(HeaderError, match="recipient address"):
        build(to_email="bob@exämple.org")
    with pytest.raises(HeaderError, match="recipient address"):
        build(to_email="not-an-address")
    with pytest.raises(HeaderError, match="sender address"):
        build(from_email="a b@example.org")


def test_verp_envelope_sender() -> None:
    """With a bounce address the envelope sender is a signed VERP address naming (mailshot, recipient)."""
    out = build(bounce_address="bounces@example.org")
    assert out.envelope_from.startswith("bounces+") and out.envelope_from.endswith("@example.org")
    assert parse_verp(KEY, out.envelope_from) == RecipientRef(7, 42)
    assert parse_verp(b"other-key", out.envelope_from) is None
    assert out.envelope_to == "bob@example.org" and out.recipient_id == 42
    assert build().envelope_from == "news@example.org"  # no bounce address: the From address
    assert build(bounce_address="bounces@example.org", test=True).envelope_from == "bounces@example.org"


# --- same values as the stdlib ---------------------------------------------------------------------

# Characters the stdlib itself refuses in header values (str.splitlines() breaks), and surrogates.
_LINE_BREAKS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_header_text = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters=_LINE_BREAKS), max_size=120),
    # Mostly ASCII, where quoting, specials, "=?" and runs of spaces matter.
    st.text(st.sampled_from(" \t\"\\(),.:;<>@[]=?_-'aZéQb"), max_size=40),
    st.lists(st.sampled_from(["Zoé", "Bob", "=?utf-8?q?x?=", "O'Brien", '"q"', " ", "  ", "a" * 90]), max_size=8).map(
        "".join
    ),
)
_subjects = _header_text.map(lambda s: " ".join(s.split()))  # what render produces: one line, single spaces
_names = _header_text.map(str.strip)  # what subscribers.check_name stores
_bodies = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r"), max_size=400)


def same_name(parsed: str, name: str) -> bool:
    """Exact, except one stdlib quirk: Python's phrase parser (3.11) turns each run of whitespace decoded
    from an encoded word (spaces, tabs, and Unicode spaces such as U+00A0 next to them) into one space
    (RFC 2047 decoders keep them).  Other ASCII names are sent as quoted-strings, which it reads exactly."""
    if parsed == name:
        return True
    encoded = re.fullmatch(r"[\x20-\x7e\t]*", name) is None or re.search(r"=\?.*\?=", name) is not None
    return encoded and re.sub(r"\s+", " ", name) == re.sub(r"\s+", " ", parsed)


def _stdlib_message(subject: str, from_name: str, to_name: str, text: str, html: str) -> EmailMessage:
    from email.headerregistry import Address

    msg = EmailMessage()
    msg["From"] = Address(from_name, addr_spec="news@example.org")
    msg["To"] = Address(to_name, addr_spec="bob@example.org")
    msg["Subject"] = subject
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return parse(msg.as_bytes(policy=email.policy.SMTP))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=_subjects, from_name=_names, to_name=_names, text=_bodies, html=_bodies.filter(bool))
def test_same_values_as_the_stdlib(subject: str, from_name: str, to_name: str, text: str, html: str) -> None:
    """For any subject, names and bodies, parsing gives back the values (and those the stdlib gives)."""
    data = build(subject=subject, from_name=from_name, to_name=to_name, text=text, html=html).data
    ours = parse(data)
    assert b"\n" not in data.replace(b"\r\n", b"") and max(len(x) for x in data.split(b"\r\n")) <= 998
    _assert_dot_safe(data)
    assert str(ours["Subject"]) == subject
    assert same_name(ours["From"].addresses[0].display_name, from_name)
    assert same_name(ours["To"].addresses[0].display_name, to_name)
    assert ours["To"].addresses[0].addr_spec == "bob@example.org"
    assert body_of(ours, "plain") == lf(text)
    assert body_of(ours, "html") == lf(html)

    # Where the stdlib's own message round-trips, ours parses to the same values.  (It does not always:
    # e.g. its generator breaks the message for two 90-character words in a display name.)
    reference = _stdlib_message(subject, from_name, to_name, text, html)
    if reference["Subject"] == subject:
        assert ours["Subject"] == reference["Subject"]
    for header, name in (("From", from_name), ("To", to_name)):
        theirs = reference[header]
        if theirs is not None and theirs.addresses[0].display_name == name:
            assert ours[header].addresses[0].addr_spec == theirs.addresses[0].addr_spec
            assert same_name(ours[header].addresses[0].display_name, theirs.addresses[0].display_name)
    if reference.is_multipart() and len(reference.get_payload()) == 2:
        # The stdlib always ends a text part with a newline; ours keeps the text as it was.
        assert body_of(ours, "plain").rstrip("\n") == body_of(reference, "plain").rstrip("\n")


# --- MessageBuilder: the pre-encoded skeleton gives the same message as rendering everything -----------

SIMPLE_HTML = (
    "<html><body><p>Dear {{ nom }},</p>\n"
    + "<p>A long paragraph with = signs, accents (é, ☀️) and trailing spaces   \n" * 3
    + '<p>{{ nom }}{{ email }} <a href="{{ url_unsubscribe }}">Unsubscribe</a> {{ listes }} {{ lang }}</p>'
    + "x" * 300
    + "{{ nom }}</body></html>"
)
SIMPLE_TEXT = "Dear {{ nom }},\n.a line starting with a dot\n{{ url_unsubscribe }}\nLists: {{ listes }}"

values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=120)


def _parts(data: bytes) -> tuple[str, str, str]:
    msg = parse(data)
    return str(msg["Subject"]), body_of(msg, "plain"), body_of(msg, "html")


def _assert_wire_limits(data: bytes) -> None:
    body = data.split(b"\r\n\r\n", 1)[1]
    assert max(len(line) for line in body.split(b"\r\n")) <= 76, "a quoted-printable line exceeds 76 characters"
    assert b"\n" not in body.replace(b"\r\n", b"")
    _assert_dot_safe(data)


def _assert_dot_safe(data: bytes) -> None:
    """What OutgoingMessage.dot_safe promises the SMTP session: no line starts with '.'."""
    assert not data.startswith(b".") and b"\r\n." not in data, "a line starts with '.'"


# Texts made to put dots at line starts: after line breaks, where soft breaks fall, next to escapes.
_dotty = st.lists(st.sampled_from([".", "..", "a", "é", "=", " ", "\n", "x" * 70, "y" * 74]), max_size=40).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_dotty, html=_dotty.filter(bool), nom=_dotty.map(lambda v: v.replace("\n", " ")))
def test_no_line_starts_with_a_dot_and_dots_decode_back(text: str, html: str, nom: str) -> None:
    """Messages are dot-safe (a leading '.' is sent as =2E), on both paths, and decode to the same text."""
    from mailshot_core.content.message import MessageBuilder
    from mailshot_core.content.render import CompiledMailshot, Personalisation

    whole = build(text=text, html=html)
    assert whole.dot_safe
    _assert_wire_limits(whole.data)
    assert body_of(parse(whole.data), "plain") == lf(text) and body_of(parse(whole.data), "html") == lf(html)

    esc = text.replace("{", "(")
    compiled = CompiledMailshot("Hello", f"{html.replace('{', '(')}{{{{ nom }}}}{esc}", f"{esc}{{{{ nom }}}}\n{esc}")
    who = Personalisation("bob@example.org", nom, (), "", "valid", UNSUB)
    fast = MessageBuilder(envelope(), compiled).build(42, who.email, who)
    assert fast.dot_safe
    _assert_wire_limits(fast.data)
    assert _parts(fast.data) == _parts(build_message(envelope(), 42, who.email, nom, compiled.render(who), UNSUB).data)


def test_simple_templates_have_a_skeleton_and_others_do_not() -> None:
    from mailshot_core.content.render import CompiledMailshot

    assert CompiledMailshot("Hi {{ nom }}", SIMPLE_HTML, SIMPLE_TEXT).skeletons is not None
    assert CompiledMailshot("Hi @nom@", "<p>@email@</p>", "").skeletons is not None
    assert CompiledMailshot("Hi {{ nom|upper }}", SIMPLE_HTML, SIMPLE_TEXT).skeletons is None
    assert CompiledMailshot("Hi", "{% if nom %}{{ nom }}{% endif %}", "").skeletons is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nom=values, listes=st.lists(values.filter(bool), max_size=3), lang=values)
def test_skeleton_and_full_rendering_give_the_same_message(nom: str, listes: list[str], lang: str) -> None:
    from mailshot_core.content.message import MessageBuilder
    from mailshot_core.content.render import CompiledMailshot, Personalisation

    compiled = CompiledMailshot("Hello {{ nom }} ({{ lang }})", SIMPLE_HTML, SIMPLE_TEXT)
    builder = MessageBuilder(envelope(), compiled)
    who = Personalisation("bob@example.org", nom, tuple(listes), lang, "valid", UNSUB)
    try:
        full = build_message(envelope(), 42, who.email, nom, compiled.render(who), UNSUB)
    except HeaderError:
        with pytest.raises(HeaderError):
            builder.build(42, who.email, who)
        return
    fast = builder.build(42, who.email, who)
    assert fast.data != full.data  # really the skeleton path (its soft line breaks differ)
    assert _parts(fast.data) == _parts(full.data)
    _assert_wire_limits(fast.data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nom=values)
def test_skeleton_and_full_rendering_agree_on_a_tracked_message(nom: str) -> None:
    """With the tracking rewrite (click redirects, open pixel), the pre-encoded path still gives the
    same decoded message as full rendering."""
    from mailshot_core.content.message import MessageBuilder
    from mailshot_core.content.render import CompiledMailshot, Personalisation, find_links

    html = SIMPLE_HTML.replace("</body>", '<a href="https://example.org/a?b=1&amp;c=2">Read</a></body>')
    links = {url: 7 for url in find_links(html)}
    compiled = CompiledMailshot("Hello {{ nom }}", html, SIMPLE_TEXT, links)
    assert compiled.skeletons is not None
    who = Personalisation("bob@example.org", nom, (), "", "valid", UNSUB, "https://h/o/T.1", "https://h/c/T.1")
    try:
        full = build_message(envelope(), 42, who.email, nom, compiled.render(who), UNSUB)
    except HeaderError:
        return
    fast = MessageBuilder(envelope(), compiled).build(42, who.email, who)
    assert _parts(fast.data) == _parts(full.data)
    assert 'href="https://h/c/T.1/7"' in _parts(fast.data)[2] and '<img src="https://h/o/T.1"' in _parts(fast.data)[2]


def test_a_value_with_a_carriage_return_takes_the_full_path() -> None:
    from mailshot_core.content.message import MessageBuilder
    from mailshot_core.content.render import CompiledMailshot, Personalisation

    compiled = CompiledMailshot("Hello", "<p>{{ lang }}</p>", "{{ lang }}\nnext")
    who = Personalisation("bob@example.org", "Bob", (), "a\r", "valid", UNSUB)
    fast = MessageBuilder(envelope(), compiled).build(42, who.email, who)
    full = build_message(envelope(), 42, who.email, "Bob", compiled.render(who), UNSUB)
    assert _parts(fast.data)[1:] == _parts(full.data)[1:]


def test_an_html_template_of_slots_only_is_omitted_when_they_are_empty() -> None:
    """Like the full path: an HTML part that renders to nothing gives a text-only message."""
    from mailshot_core.content.message import MessageBuilder
    from mailshot_core.content.render import CompiledMailshot, Personalisation

    compiled = CompiledMailshot("Hello", "{{ lang }}", "text {{ nom }}")
    builder = MessageBuilder(envelope(), compiled)
    assert compiled.skeletons is not None
    empty = parse(builder.build(1, "a@example.org", Personalisation("a@example.org", "A", (), "")).data)
    assert empty.get_content_type() == "text/plain" and lf(empty.get_content()) == "text A"
    full = parse(builder.build(2, "a@example.org", Personalisation("a@example.org", "A", (), "fr")).data)
    assert full.get_content_type() == "multipart/alternative" and body_of(full, "html") == "fr"
