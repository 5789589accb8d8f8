"""Personalisation: subject, HTML and text compiled once per sending, rendered per recipient.

Templates run in Jinja2's sandbox (newsletter authors are not all trusted), the HTML
with autoescaping so a subscriber called ``<script>`` stays text.  Every error an
author can make is found when the sending is created (syntax errors, unknown
variables), never in the middle of a send.  The original's ``@nom@`` shorthand
(original-mailshot.md §4.4) is accepted for the known variables, so templates
moved from SPIP keep working.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from html import unescape as unescape_html
from typing import Any, NamedTuple

from jinja2 import TemplateSyntaxError, meta, nodes
from jinja2.exceptions import TemplateError as JinjaError
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import escape

from mailshot_core.content.sandbox import LimitedSandbox, budget, time_limit

VARIABLES = ("email", "nom", "listes", "lang", "status", "url_unsubscribe")
# Set by the tracking rewrite only (track_html): an author cannot use them.
TRACKING_VARIABLES = ("url_open", "url_click")

_SHORTHAND = re.compile(r"@(" + "|".join(VARIABLES) + r")@")


class TemplateError(ValueError):
    """A template cannot be compiled or rendered; the message says which part and where."""


class Listes(list[str]):
    """The recipient's lists: prints as ``a, b`` and still supports ``'a' in listes`` and loops."""

    def __str__(self) -> str:
        return ", ".join(self)


@dataclass(frozen=True)
class Personalisation:
    email: str
    nom: str = ""
    listes: tuple[str, ...] = ()
    lang: str = ""
    status: str = "valid"
    url_unsubscribe: str = ""
    url_open: str = ""  # the open pixel's URL, when the sending is tracked
    url_click: str = ""  # the click redirects' base URL (a link's id follows), when tracked

    def as_context(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "nom": self.nom,
            "listes": Listes(self.listes),
            "lang": self.lang,
            "status": self.status,
            "url_unsubscribe": self.url_unsubscribe,
            "url_open": self.url_open,
            "url_click": self.url_click,
        }

    def has_carriage_return(self) -> bool:
        """Whether a value holds a CR (the values of :meth:`as_context`, read without building it)."""
        values = (self.email, self.nom, self.lang, self.status, self.url_unsubscribe, self.url_open, self.url_click)
        return any("\r" in v for v in values) or any("\r" in v for v in self.listes)


_SAMPLE = Personalisation(
    email="sample@example.org",
    nom="Sample <Name> & co",
    listes=("sample", "other"),
    lang="en",
    url_unsubscribe="https://example.org/u/sample?a=1&b=2",
    url_open="https://example.org/o/sample?a=1&b=2",
    url_click="https://example.org/c/sample?a=1&b=2",
)


@dataclass(frozen=True)
class RenderedContent:
    subject: str
    html: str
    text: str


# The sandbox with resource limits (sandbox.py): what an author writes cannot reach Python's internals,
# nor eat the memory or the time of the machine.
_html_env = LimitedSandbox(autoescape=True, keep_trailing_newline=True)
_text_env = LimitedSandbox(autoescape=False, keep_trailing_newline=True)
# What a template's expressions can raise at run time ({{ 1 // 0 }}, {{ '%d' % nom }}, a macro calling
# itself...): a TemplateError lets the send loop record the recipient instead of crashing the batch.
_RENDER_ERRORS = (
    JinjaError,
    ArithmeticError,
    LookupError,
    AttributeError,
    TypeError,
    ValueError,
    RecursionError,
    MemoryError,
)


def _render_error(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "calls nest too deep (a macro calling itself?)"
    return str(exc)


def expand_shorthand(source: str) -> str:
    """``@nom@`` -> ``{{ nom }}`` for the known variables only (a plain ``a@b`` stays as it is)."""
    return _SHORTHAND.sub(r"{{ \1 }}", source)


class Slot(NamedTuple):
    """A ``{{ variable }}`` in a template's :attr:`Skeleton.pieces`."""

    name: str


@dataclass(frozen=True)
class Skeleton:
    """A template that is only text and ``{{ variable }}`` slots, as its pieces in order.

    Most newsletters are such templates.  Their static text can be prepared once per sending (message.py
    quoted-printable-encodes it once), leaving only the slots' values to encode per recipient.
    Templates with blocks, filters or expressions have no skeleton and are rendered by Jinja2.
    """

    pieces: tuple[str | Slot, ...]
    escaped: bool  # HTML: values are HTML-escaped, as autoescaping does

    def value(self, name: str, context: dict[str, Any]) -> str:
        text = str(context[name])
        return str(escape(text)) if self.escaped else text

    def render(self, context: dict[str, Any]) -> str:
        return "".join(p if isinstance(p, str) else self.value(p.name, context) for p in self.pieces)


def _skeleton(ast: nodes.Template, escaped: bool, allowed: tuple[str, ...]) -> Skeleton | None:
    pieces: list[str | Slot] = []
    for node in ast.body:
        if not isinstance(node, nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                pieces.append(str(child.data))
            elif isinstance(child, nodes.Name) and child.ctx == "load" and child.name in allowed:
                pieces.append(Slot(child.name))
            else:
                return None
    return Skeleton(tuple(pieces), escaped)


def _compile(env: SandboxedEnvironment, source: str, part: str, allowed: tuple[str, ...]) -> tuple[Any, nodes.Template]:
    """The template and its syntax tree; TemplateError for bad syntax or a variable not in ``allowed``."""
    try:
        ast = env.parse(source)
        # Code generation (here and in from_string) also raises TemplateSyntaxError's subclass
        # TemplateAssertionError, for an unknown filter or test: report it the same way.
        undeclared = meta.find_undeclared_variables(ast)
        template = env.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{part} template, line {exc.lineno}: {exc.message}") from None
    unknown = sorted(undeclared - set(allowed))
    if unknown:
        raise TemplateError(f"{part} template: unknown variable {', '.join(unknown)} (available: {', '.join(allowed)})")
    return template, ast


def _compile_with_skeleton(
    env: SandboxedEnvironment, source: str, part: str, allowed: tuple[str, ...] = VARIABLES
) -> tuple[Any, Skeleton | None]:
    template, ast = _compile(env, expand_shorthand(source), part, allowed)
    skeleton = _skeleton(ast, escaped=bool(env.autoescape), allowed=allowed)
    # Belt and braces: the skeleton must render exactly what Jinja2 renders, or it is not used.
    if skeleton is not None and skeleton.render(_SAMPLE.as_context()) != template.render(_SAMPLE.as_context()):
        skeleton = None
    return template, skeleton


class TextTemplate:
    """One plain-text template outside a sending (the opt-in confirmation message), in the same
    sandbox and with the same limits, over its own ``variables``; checked once with sample values."""

    def __init__(self, source: str, part: str, variables: Mapping[str, str]) -> None:
        self._part = part
        self._template, _ = _compile(_text_env, source, part, tuple(variables))
        self.render(dict(variables), check=True)

    def render(self, context: Mapping[str, Any], *, check: bool = False) -> str:
        try:
            with budget():
                if check:
                    with time_limit():
                        return str(self._template.render(context))
                return str(self._template.render(context))
        except _RENDER_ERRORS as exc:
            raise TemplateError(f"{self._part} template: {_render_error(exc)}") from None


class CompiledMailshot:
    """The three templates of one sending, compiled once.

    ``links``: the sending's tracked links (URL -> id, sending/tracked_links.links_for): the HTML's links then go
    through the click redirects and the open pixel is added (:func:`track_html`).  The text part is
    left as written: its URLs stay readable and copyable.
    """

    def __init__(self, subject: str, html: str, text: str, links: Mapping[str, int] | None = None) -> None:
        self._subject, subject_skeleton = _compile_with_skeleton(_text_env, subject, "subject")
        if links is None:
            self._html, html_skeleton = _compile_with_skeleton(_html_env, html, "HTML")
        else:
            # The author's template is checked on its own first: tracking variables are not theirs.
            _compile_with_skeleton(_html_env, html, "HTML")
            tracked = track_html(html, links)
            self._html, html_skeleton = _compile_with_skeleton(
                _html_env, tracked, "HTML", allowed=VARIABLES + TRACKING_VARIABLES
            )
        self._text, text_skeleton = _compile_with_skeleton(_text_env, text, "text")
        self.skeletons: tuple[Skeleton, Skeleton, Skeleton] | None = None
        """(subject, HTML, text) when all three templates have one (:class:`Skeleton`)."""
        if subject_skeleton is not None and html_skeleton is not None and text_skeleton is not None:
            self.skeletons = (subject_skeleton, html_skeleton, text_skeleton)

    def render(self, who: Personalisation) -> RenderedContent:
        context = who.as_context()
        try:
            with budget():
                subject = self._subject.render(context)
                html = self._html.render(context)
                text = self._text.render(context)
        except _RENDER_ERRORS as exc:
            raise TemplateError(f"cannot personalise the message for {who.email}: {_render_error(exc)}") from None
        # A subject is one line: a newline that reached it through a variable must not become a header
        # break; message.py refuses CR/LF anyway, this keeps an honest multi-line template usable.
        return RenderedContent(" ".join(subject.split()), html, text)

    def check(self) -> None:
        """Render each part once with sample values, within the sandbox's time limit: catches runtime
        errors (bad filters...) and runaway templates (sandbox.py's limits) before the first send."""
        context = _SAMPLE.as_context()
        for part, template in (("subject", self._subject), ("HTML", self._html), ("text", self._text)):
            try:
                with budget(), time_limit():
                    template.render(context)
            except _RENDER_ERRORS as exc:
                raise TemplateError(f"{part} template: {_render_error(exc)}") from None


# --- tracking rewrite -------------------------------------------------------------------------------

_ANCHOR = re.compile(r"<a\s[^>]*>", re.I)
# The href attribute (not data-href ...), quoted either way or bare.
_HREF = re.compile(r"""(?<![\w-])href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+))""", re.I)
_TRACKABLE = re.compile(r"https?://\S+", re.I)
# Longer URLs (in UTF-8 bytes) are left untracked: PostgreSQL cannot index (uq_tracked_link) values much
# over 2,700 bytes.
MAX_TRACKED_URL = 2000
NO_TRACK_ATTRIBUTE = "data-mailshot-notrack"


def _trackable_href(tag: str) -> tuple[re.Match[str], str] | None:
    """The tag's href match and its URL, when the link can go through a click redirect.

    Not tracked: links built by the template (``{{ url_unsubscribe }}``, ``https://site/{{ lang }}/``,
    ``@lang@``: their URL is only known per recipient), mailto:/tel:/anchors, over-long URLs, and
    links marked ``data-mailshot-notrack``.
    """
    if NO_TRACK_ATTRIBUTE in tag.lower():
        return None
    match = _HREF.search(tag)
    if match is None:
        return None
    raw = next(g for g in match.groups() if g is not None)
    if "{{" in raw or "{%" in raw or _SHORTHAND.search(raw):
        return None
    url = unescape_html(raw).strip()
    if not _TRACKABLE.fullmatch(url) or len(url.encode()) > MAX_TRACKED_URL:
        return None
    return match, url


# Template text Jinja2 outputs verbatim or drops: ``{% raw %}`` blocks and ``{# comments #}``.  A link
# there is not rewritten (a raw block would print ``{{ url_click }}`` as is) nor stored.
_VERBATIM = re.compile(r"\{%-?\s*raw\s*-?%\}.*?\{%-?\s*endraw\s*-?%\}|\{#.*?#\}", re.S)


def _live_parts(source: str) -> list[tuple[str, bool]]:
    """The template cut into (text, is Jinja2 template text) pieces, around the verbatim regions."""
    parts: list[tuple[str, bool]] = []
    start = 0
    for match in _VERBATIM.finditer(source):
        parts += [(source[start : match.start()], True), (match[0], False)]
        start = match.end()
    parts.append((source[start:], True))
    return parts


def find_links(source: str) -> list[str]:
    """The HTML template's trackable link URLs, each once, in order of appearance."""
    found: dict[str, None] = {}
    live = "".join(text for text, is_live in _live_parts(source) if is_live)
    for tag in _ANCHOR.finditer(live):
        hit = _trackable_href(tag[0])
        if hit is not None:
            found.setdefault(hit[1])
    return list(found)


_PIXEL = (
    '<img src="{{ url_open }}" width="1" height="1" alt="" '
    'style="display:block;width:1px;height:1px;border:0;margin:0;padding:0">'
)
_BODY_END = re.compile(r"</body\s*>", re.I)


def track_html(source: str, links: Mapping[str, int]) -> str:
    """The HTML template with its links through ``{{ url_click }}/<id>`` and the open pixel at the end.

    Click targets are the ids of the sending's stored links: the redirect looks the URL up, so no URL
    in a request can make the server redirect anywhere else (email-standards.md §4).
    """

    def rewrite(tag: re.Match[str]) -> str:
        hit = _trackable_href(tag[0])
        if hit is None or hit[1] not in links:
            return tag[0]
        href, url = hit
        text = tag[0]
        return f'{text[: href.start()]}href="{{{{ url_click }}}}/{links[url]}"{text[href.end() :]}'

    tracked = "".join(_ANCHOR.sub(rewrite, text) if live else text for text, live in _live_parts(source))
    ends = list(_BODY_END.finditer(tracked))
    if ends:
        cut = ends[-1].start()
        return tracked[:cut] + _PIXEL + tracked[cut:]
    return tracked + _PIXEL


def html_to_text(html: str) -> str:
    """Text part from the HTML (inscriptis keeps the layout; links are shown as ``[text](url)``)."""
    from inscriptis import get_text
    from inscriptis.model.config import ParserConfig

    text: str = get_text(html, ParserConfig(display_links=True))
    lines = [line.rstrip() for line in text.splitlines()]
    # Collapse runs of blank lines that block-level HTML leaves behind.
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip() + "\n"


def inline_css(html: str) -> str:
    """Inline <style> rules into style attributes, once per sending, keeping @media queries.

    Skipped when the template has block statements (``{% ... %}``): the HTML parser would move
    text found inside tables ("foster parenting") and break the template.
    """
    if "<style" not in html.lower() or "{%" in html:
        return html
    import css_inline

    inliner = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)
    result: str = inliner.inline(html)
    return result
