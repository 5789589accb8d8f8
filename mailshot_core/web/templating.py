"""The Jinja2 environment of the web pages, shared by the follow-up pages and the public ones.

Autoescape is on for every template: a subject, a subscriber's name or an error text are data, and
``<script>`` in them must reach the browser as text.  ``StrictUndefined`` turns a misspelt variable
into an error the tests see, instead of an empty cell.  ``base.html`` (the follow-up pages) needs no
logged-in user, for the error pages shown before login; the public pages a subscriber sees
(unsubscribe) extend ``public.html``, without our branding.  :func:`render` gives ``title``, ``user``, ``csrf`` and ``refresh`` empty
defaults, and a page fills ``{% block content %}``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES_DIR = Path(__file__).parent / "templates"

# Every HTML answer of ours carries these: the pages need no script at all (auto-refresh is a
# <meta http-equiv=refresh>), so a script that got in anyway does not run; no framing (clickjacking
# on the pause/cancel buttons); the newsletter preview's images may come from anywhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'none'; style-src 'unsafe-inline'; img-src * data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _when(value: datetime | None) -> str:
    """Times are stored as aware UTC and shown as such (the operators may be anywhere)."""
    return f"{value:%Y-%m-%d %H:%M} UTC" if value is not None else ""


def _number(value: int) -> str:
    return f"{value:,}"


env = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters["when"] = _when
env.filters["number"] = _number


def render(template: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    values: dict[str, Any] = {"title": "", "user": None, "csrf": None, "refresh": None, **context}
    html = env.get_template(template).render(values)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


# The subscriber-facing pages carry a token in their URL: never hand it to another site in a Referer.
PUBLIC_HEADERS = {**SECURITY_HEADERS, "Referrer-Policy": "no-referrer"}


def public_page(template: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    """A page a subscriber or a visitor sees: the shared rendering, with no Referer sent from it."""
    response = render(template, context, status_code=status_code)
    response.headers.update(PUBLIC_HEADERS)
    return response
