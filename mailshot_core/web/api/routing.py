"""What every API request goes through before its route: a bounded body (413) of a declared media type
(415), and the routers' shared parts (the context, a sending's id in a path).

The guard is ASGI middleware around the API: it refuses a too large ``Content-Length`` at once and
counts the bytes of a body sent without one (chunked), so no request makes the server hold more than
its limit in memory; and a JSON string that is no Unicode text (a lone surrogate escape) is refused
there (422), before it could reach the database.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Path
from starlette.convertors import Convertor, register_url_convertor
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailshot_core.web.api.fields import MAX_ID
from mailshot_core.web.api.problems import problem_response

MAX_BODY = 1024 * 1024  # a sending's HTML with its inline CSS fits; anything bigger is a mistake
# A bulk import: 100,000 rows of address, name and language are ~5 MB of CSV, ~9 MB of JSON.
MAX_IMPORT_BODY = 64 * 1024 * 1024
IMPORT_PATH = "/subscribers/import"
JSON = "application/json"
CSV = "text/csv"
SendingId = Annotated[int, Path(ge=1, le=MAX_ID, description="The sending's id.")]


class AddressConvertor(Convertor[str]):
    """``{email:address}``: an address in a path.  RFC 5322 allows '/' in a local part
    ("a/b@example.com"), which reaches the router decoded (%2F): Starlette's default stops at '/', and
    such a subscriber, created by POST /subscribers, was not found at its own URL (404).  Anything but
    a final "/unsubscribe", which is the unsubscribe action's path."""

    regex = r"(?:[^/]|/(?!unsubscribe$))+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("address", AddressConvertor())


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def accepted(path: str) -> tuple[str, ...]:
    return (JSON, CSV) if path.endswith(IMPORT_PATH) else (JSON,)


class RequestGuard:
    """ASGI middleware: bodies within their limit (413) and of a media type the route reads (415)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = MAX_IMPORT_BODY if path.endswith(IMPORT_PATH) else MAX_BODY
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            refusal = problem_response(413, f"the request body is larger than {limit:,} bytes")
            await refusal(scope, receive, send)
            return
        has_body = length not in (None, "0") or "transfer-encoding" in headers
        kind = media_type(headers.get("content-type", ""))
        wanted = accepted(path)
        if has_body and kind not in wanted:
            shown = kind or "none"
            refusal = problem_response(415, f"Content-Type {shown!r}: this operation reads {' or '.join(wanted)}")
            await refusal(scope, receive, send)
            return
        # The body is read here, within its limit, then handed on: the route would hold it whole anyway.
        chunks: list[bytes] = []
        received = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # the client left: nothing to answer
                return
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                await problem_response(413, f"the request body is larger than {limit:,} bytes")(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if kind == JSON and (where := lone_surrogate(body)) is not None:
            await problem_response(422, f"{where}: not Unicode text (a lone UTF-16 surrogate)")(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def lone_surrogate(body: bytes) -> str | None:
    """Where a JSON body has a string that is no Unicode text (``"\\ud800"`` alone is valid JSON, but
    cannot be encoded for the database or a message); None when it has none, or is no JSON at all (the
    route says so)."""
    if b"\\u" not in body:
        return None  # a surrogate can only be written as an escape: the common case costs one scan
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return _find_surrogate(document, "body")


def _find_surrogate(value: Any, where: str) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _find_surrogate(key, where) or _find_surrogate(item, f"{where}.{key}")
            if found:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _find_surrogate(item, f"{where}[{i}]")
            if found:
                return found
    return None
