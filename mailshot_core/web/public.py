"""What the visitor's and subscriber's pages share (subscribe.py, preferences.py): who the client is,
which language to speak, how their forms are read and refused.

Their forms carry no CSRF token (a visitor has no session): what they can do is what a link in a
message lets anyone holding it do, or ask for a confirmation message.  The subscribe form refuses
another site posting it (a POST whose Origin or Referer is not this site gets 403, nothing done), so
that other sites' visitors cannot be used to spread requests over many client addresses.  The pages
whose URL holds a token (confirm, preferences) send no Referer at all, so the browser's POST from
them says ``Origin: null``: there the token is the authority, as for the unsubscribe link.
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
from mailshot_core.web.templating import public_page, render

MAX_FORM_BYTES = 16 * 1024  # the subscribe form with every list checked is well under 2 KB
MAX_FIELDS = 200  # one "list" field per checked list


def client_of(request: Request) -> str:
    """The connection's peer, or what a proxy of MAILSHOT_FORWARDED_ALLOW_IPS said (web/server.py):
    never a header the client wrote itself."""
    return request.client.host if request.client else "?"


def language(request: Request, *candidates: str) -> str:
    """The page's language: the first of ``candidates`` we speak, else the browser's."""
    return pick(*candidates, accept_language=request.headers.get("accept-language", ""))


def page(
    template: str, lang: str, values: dict[str, Any], status_code: int = 200, *, token_in_url: bool = True
) -> HTMLResponse:
    """A public page in ``lang``: its texts are ``t``, its title ``t[title]``.  ``token_in_url``: no
    Referer is sent from it (else the site's own, same-origin only)."""
    t = texts(lang)
    shown = {**values, "lang": lang, "t": t, "title": t[values["title"]]}
    return (public_page if token_in_url else render)(template, shown, status_code)


def message(
    lang: str,
    title: str,
    text: str,
    status_code: int,
    *,
    fmt: dict[str, str] | None = None,
    href: str = "",
    label: str = "",
    token_in_url: bool = True,
) -> HTMLResponse:
    """A page saying one thing (refusals, invalid links): texts ``title`` and ``text`` (filled with
    ``fmt``), and a link to ``href`` named by the text ``label`` when given."""
    values = {"title": title, "text": text, "fmt": fmt or {}, "href": href, "label": label}
    return page("public_message.html", lang, values, status_code, token_in_url=token_in_url)


@dataclass(frozen=True)
class Posted:
    fields: dict[str, list[str]]

    def first(self, name: str) -> str:
        return self.fields.get(name, [""])[0]

    def all(self, name: str) -> list[str]:
        return [v for v in self.fields.get(name, []) if v]


async def read_post(request: Request, lang: str, *, token_in_url: bool) -> Posted | HTMLResponse:
    """The form of a public POST, or the page refusing it (too large 413; another site's form 403,
    unless the page's URL holds a token: see the module's docstring)."""
    site = urlsplit(context(request).settings.base_url).netloc
    if not token_in_url and not same_origin(request, site):
        return message(lang, "refused_title", "refused_text", 403, token_in_url=False)
    try:
        return Posted(await form_fields(request, MAX_FORM_BYTES, MAX_FIELDS))
    except FormRefused as exc:
        if exc.status_code == 413:
            return message(lang, "too_large_title", "too_large_text", 413, token_in_url=token_in_url)
        return message(lang, "refused_title", "refused_text", 400, token_in_url=token_in_url)
