"""Personalisation (mailshot_core.content.render): variables, escaping, sandbox, errors found before sending."""

from __future__ import annotations

import pytest

from mailshot_core.content.render import (
    CompiledMailshot,
    Personalisation,
    TemplateError,
    find_links,
    html_to_text,
    inline_css,
)

ZOE = Personalisation(
    email="zoe@example.org",
    nom="Zoé",
    listes=("news", "events"),
    lang="fr",
    status="valid",
    url_unsubscribe="https://news.example.org/u/tok",
)


def render(subject: str = "s", html: str = "", text: str = "", who: Personalisation = ZOE):
    compiled = CompiledMailshot(subject, html, text)
    compiled.check()
    return compiled.render(who)


def test_every_variable_is_available() -> None:
    """email, nom, listes, lang, status and url_unsubscribe are filled in subject, HTML and text."""
    source = "{{ email }}|{{ nom }}|{{ listes }}|{{ lang }}|{{ status }}|{{ url_unsubscribe }}"
    out = render(source, source, source)
    expected = "zoe@example.org|Zoé|news, events|fr|valid|https://news.example.org/u/tok"
    assert out.subject == out.html == out.text == expected


def test_listes_prints_joined_and_supports_in_and_loops() -> None:
    """listes prints as 'a, b' and still works with `in`, loops and length."""
    text = (
        "{% if 'news' in listes %}N{% endif %}{% if 'other' in listes %}O{% endif %}"
        "|{% for l in listes %}[{{ l }}]{% endfor %}|{{ listes|length }}"
    )
    assert render(text=text).text == "N|[news][events]|2"


def test_html_is_autoescaped_text_and_subject_are_not() -> None:
    """A name like <script> is escaped in HTML, kept as typed in the text part and the subject."""
    evil = Personalisation(email="x@example.org", nom="<script>alert(1)</script> & co")
    out = render("Hi {{ nom }}", "<p>{{ nom }}</p>", "Hi {{ nom }}", who=evil)
    assert out.html == "<p>&lt;script&gt;alert(1)&lt;/script&gt; &amp; co</p>"
    assert out.text == "Hi <script>alert(1)</script> & co"
    assert out.subject == "Hi <script>alert(1)</script> & co"


def test_at_shorthand_of_the_original() -> None:
    """@nom@ and the other known @var@ work like {{ var }}; other @...@ and addresses are left alone."""
    out = render("Bonjour @nom@", "<p>@nom@ (@email@)</p>", "@nom@ @lang@ @unknown@ a@b.org")
    assert out.subject == "Bonjour Zoé"
    assert out.html == "<p>Zoé (zoe@example.org)</p>"
    assert out.text == "Zoé fr @unknown@ a@b.org"


@pytest.mark.parametrize(
    ("part", "kwargs", "line"),
    [
        ("subject", {"subject": "Hello {{ nom "}, 1),
        ("HTML", {"html": "<p>ok</p>\n<p>ok</p>\n{% if nom %}never closed"}, 3),
        ("text", {"text": "line 1\nline 2 {{ nom | }}"}, 2),
        ("HTML", {"html": "<p>\n{{ nom|no_such_filter }}</p>"}, 2),
    ],
)
def test_syntax_error_names_part_and_line(part: str, kwargs: dict[str, str], line: int) -> None:
    """A syntax error (or unknown filter) is a TemplateError naming the part and the line, at compile time."""
    with pytest.raises(TemplateError) as exc:
        CompiledMailshot(kwargs.get("subject", "s"), kwargs.get("html", ""), kwargs.get("text", ""))
    message = str(exc.value)
    assert message.startswith(f"{part} template, line {line}:"), message


def test_unknown_variable_is_listed() -> None:
    """An unknown variable is a TemplateError listing it (and the available ones)."""
    with pytest.raises(TemplateError) as exc:
        CompiledMailshot("s", "<p>{{ prenom }} {{ nom }} {{ ville }}</p>", "")
    message = str(exc.value)
    assert "HTML template" in message
    assert "unknown variable prenom, ville" in message
    assert "available: email, nom" in message


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ nom.__class__.__mro__ }}",
        "{{ listes.__class__.__base__ }}",
        "{{ email.format.__globals__ }}",
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{{ c }}{% endfor %}",
    ],
)
def test_sandbox_blocks_attribute_probes(source: str) -> None:
    """Access to internals like ''.__class__ is refused with a TemplateError at check(), not rendered empty."""
    compiled = CompiledMailshot("s", source, "")
    with pytest.raises(TemplateError, match="unsafe"):
        compiled.check()
    with pytest.raises(TemplateError, match=r"zoe@example\.org"):
        compiled.render(ZOE)


def test_runtime_error_surfaces_at_check() -> None:
    """An error that only shows when rendering (division by zero) is caught by check(), before sending."""
    compiled = CompiledMailshot("s", "", "{{ 1 // 0 }}")
    with pytest.raises(TemplateError):
        compiled.check()


def test_subject_newlines_are_collapsed() -> None:
    """The subject is one line: newlines and runs of spaces from the template or a variable become one space."""
    who = Personalisation(email="x@example.org", nom="Bob\r\nBcc: victim@example.org")
    out = render("  Hello\n  {{ nom }}\t!\n", who=who)
    assert out.subject == "Hello Bob Bcc: victim@example.org !"
    assert "\n" not in out.subject and "\r" not in out.subject


def test_html_and_text_keep_their_newlines() -> None:
    """Only the subject is collapsed: the bodies keep their line structure and final newline."""
    out = render(html="<p>a</p>\n<p>b</p>\n", text="a\n\nb\n")
    assert out.html == "<p>a</p>\n<p>b</p>\n"
    assert out.text == "a\n\nb\n"


def test_html_to_text_keeps_link_targets() -> None:
    """The text part made from HTML keeps each link's URL and the paragraphs, without blank-line runs."""
    html = (
        "<h1>Title</h1><p>Read <a href='https://example.org/article?id=1&amp;x=2'>the article</a></p>"
        "<div></div><div></div><p>Bye</p>"
    )
    text = html_to_text(html)
    assert "https://example.org/article?id=1&x=2" in text
    assert "the article" in text and "Title" in text and "Bye" in text
    assert "\n\n\n" not in text
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_inline_css_inlines_style_and_keeps_media() -> None:
    """inline_css moves <style> rules into style attributes and keeps @media queries."""
    html = (
        "<html><head><style>p.x { color: red } @media (max-width: 600px) { p.x { color: blue } }</style>"
        '</head><body><p class="x">Hi {{ nom }}</p><a href="{{ url_unsubscribe }}">u</a></body></html>'
    )
    out = inline_css(html)
    assert 'style="color: red;"' in out
    assert "@media (max-width: 600px)" in out
    assert "{{ nom }}" in out and 'href="{{ url_unsubscribe }}"' in out
    # The result is still a valid template that renders.
    assert "Hi Zoé" in render(html=out).html


def test_inline_css_leaves_block_templates_untouched() -> None:
    """A template with {% %} blocks is returned unchanged (the HTML parser would move text out of tables)."""
    html = "<style>td { color: red }</style><table>{% for l in listes %}<tr><td>{{ l }}</td></tr>{% endfor %}</table>"
    assert inline_css(html) == html
    plain = "<p>no style here</p>"
    assert inline_css(plain) == plain


# --- the tracking rewrite ---------------------------------------------------------------------------------

TRACKED = (
    "<html><body><p>Hi {{ nom }}</p>"
    "<a href=\"https://ex.org/a?x=1&amp;y=2\">A</a> <A class=b HREF='https://ex.org/b'>B</A> "
    '<a data-href="https://no.example/" href="https://ex.org/a?x=1&amp;y=2">A again</a>'
    '<a href="{{ url_unsubscribe }}">U</a> <a href="https://ex.org/{{ lang }}/">L</a> '
    '<a href="https://ex.org/@lang@/">S</a> <a href="mailto:x@ex.org">M</a> <a href="#top">T</a>'
    '<a data-mailshot-notrack href="https://ex.org/private">P</a></body></html>'
)


def test_find_links_keeps_static_http_links_once_with_entities_decoded() -> None:
    """Links built by the template, mailto/anchors and opted-out links are not tracked."""
    assert find_links(TRACKED) == ["https://ex.org/a?x=1&y=2", "https://ex.org/b"]
    assert find_links('<a href="https://ex.org/' + "x" * 2100 + '">long</a>') == []


def test_tracked_html_goes_through_the_redirects_and_ends_with_the_pixel() -> None:
    links = {url: 40 + i for i, url in enumerate(find_links(TRACKED))}
    compiled = CompiledMailshot("Hi", TRACKED, "text {{ nom }}", links)
    who = Personalisation(
        "a@ex.org",
        "<b>",
        lang="fr",
        url_unsubscribe="https://h/u/T",
        url_open="https://h/o/K",
        url_click="https://h/c/K",
    )
    html = compiled.render(who).html
    assert html.count('href="https://h/c/K/40"') == 2 and 'href="https://h/c/K/41"' in html
    assert 'href="https://h/u/T"' in html and 'href="https://ex.org/fr/"' in html and 'href="mailto:x@ex.org"' in html
    assert 'data-href="https://no.example/"' in html and 'href="https://ex.org/private"' in html
    assert html.endswith(
        '<img src="https://h/o/K" width="1" height="1" alt="" style="display:block;width:1px;height:1px;border:0;margin:0;padding:0"></body></html>'
    )
    assert "Hi &lt;b&gt;" in html
    assert (
        CompiledMailshot("Hi", "<p>no body tag</p>", "", {})
        .render(who)
        .html.endswith('alt="" style="display:block;width:1px;height:1px;border:0;margin:0;padding:0">')
    )


def test_authors_cannot_use_the_tracking_variables() -> None:
    with pytest.raises(TemplateError, match="unknown variable url_click"):
        CompiledMailshot("Hi", '<a href="{{ url_click }}/1">x</a>', "", {})


def test_links_in_raw_blocks_and_comments_are_left_alone() -> None:
    """``{% raw %}`` prints its text as is and ``{# #}`` drops it: no link there is rewritten or stored."""
    source = (
        '<a href="https://ex.org/live">L</a>{% raw %}<a href="https://ex.org/raw">{{ x }}</a>{% endraw %}'
        '{# <a href="https://ex.org/comment">C</a> #}'
    )
    assert find_links(source) == ["https://ex.org/live"]
    html = (
        CompiledMailshot("Hi", source, "", {"https://ex.org/live": 1})
        .render(Personalisation("a@ex.org", url_click="https://h/c/K", url_open="https://h/o/K"))
        .html
    )
    assert 'href="https://h/c/K/1"' in html and '<a href="https://ex.org/raw">{{ x }}</a>' in html
    assert "comment" not in html
