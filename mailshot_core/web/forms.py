"""Request bodies read with a cap (a public endpoint must not hold a 2 GB upload in memory before it
finds out that the body is not one of our small forms), and the same-origin check of a form's POST."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from fastapi import Request


async def capped_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is (or announces itself as) longer than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # a chunked body has no Content-Length: count as it comes
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class FormRefused(Exception):
    """A form body too large or unreadable: nothing was done."""

    def __init__(self, reason: str, status_code: int) -> None:
        super().__init__(reason)
        self.status_code = status_code


async def form_fields(request: Request, limit: int, max_fields: int = 20) -> dict[str, list[str]]:
    """An urlencoded form body (our forms only: python-multipart is not installed and not needed),
    every value of each field (checkboxes repeat their name).  FormRefused: 413 over ``limit``
    bytes, 400 unreadable."""
    body = await capped_body(request, limit)
    if body is None:
        raise FormRefused("form too large", 413)
    try:
        return parse_qs(body.decode(), keep_blank_values=True, max_num_fields=max_fields)
    except (UnicodeDecodeError, ValueError):
        raise FormRefused("unreadable form", 400) from None


def same_origin(request: Request, site: str) -> bool:
    """Origin (else Referer) names this site, or the browser sent neither (old browsers, privacy
    settings).  "This site" is ``site``, the public URL's host (MAILSHOT_BASE_URL), or the Host the
    request was sent to (a reverse proxy may keep it)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin is None:
        return True
    host = urlsplit(origin).netloc
    return bool(host) and host in (site, request.headers.get("host", ""))
