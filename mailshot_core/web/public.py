"""What the visitor's and subscriber's pages share (subscribe.py, preferences.py): who the client is,
which language to speak, how their forms are read and refused.

Their forms carry no CSRF token (a visitor has no session): what they can do is what a link in a
message lets anyone holding it do, or ask for a confirmation message.  What they refuse is another
site posting them: a POST whose Origin (or Referer) is not this site gets 403, nothing done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse

from mailshot_core.web.context import context
from mailshot_core.web.forms import FormRefused, form_fields, same_origin
from mailshot_core.web.public_texts import pick, texts
from mailshot_core.web.templating import public_page

MAX_FORM_BYTES = 16 * 1024  # the subscribe form with every list checked is well under 2 KB
MAX_FIELDS = 200  # one "list" field per checked list


def client_of(request: Request) -> str:
    """The connection's peer, or what a proxy of MAILSHOT_FORWARDED_ALLOW_IPS said (web/server.py):
    never a header the client wrote itself."""
    return request.client.host if request.client else "?"


def language(request: Request, *candidates: str) -> str:
    """The page's language: the first of ``candidates`` we speak, else the browser's."""
    return pick(*candidates, accept_language=request.headers.get("accept-language", ""))


def page(template: str, lang: str, values: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    """A public page in ``lang``: its texts are ``t``, its title ``t[title]``."""
    t = texts(lang)
    return public_page(template, {**values, "lang": lang, "t": t, "title": t[values["title"]]}, status_code)


def message(
    lang: str,
    title: str,
    text: str,
    status_code: int,
    *,
    fmt: dict[str, str] | None = None,
    href: str = "",
    label: str = "",
) -> HTMLResponse:
    """A page saying one thing (refusals, invalid links): texts ``title`` and ``text`` (filled with
    ``fmt``), and a link to ``href`` named by the text ``label`` when given."""
    values = {"title": title, "text": text, "fmt": fmt or {}, "href": href, "label": label}
    return page("public_message.html", lang, values, status_code)


@dataclass(frozen=True)
class Posted:
    fields: dict[str, list[str]]

    def first(self, name: str) -> str:
        return self.fields.get(name, [""])[0]

    def all(self, name: str) -> list[str]:
        return [v for v in self.fields.get(name, []) if v]


async def read_post(request: Request, lang: str) -> Posted | HTMLResponse:
    """The form of a public POST, or the page refusing it (another site's form 403, too large 413)."""
    site = urlsplit(context(request).settings.base_url).netloc
    if not same_origin(request, site):
        return message(lang, "refused_title", "refused_text", 403)
    try:
        return Posted(await form_fields(request, MAX_FORM_BYTES, MAX_FIELDS))
    except FormRefused as exc:
        if exc.status_code == 413:
            return message(lang, "too_large_title", "too_large_text", 413)
        return message(lang, "refused_title", "refused_text", 400)
