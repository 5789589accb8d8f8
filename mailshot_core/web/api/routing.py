"""What every API request goes through before its route: a bounded body (413) of a declared media type
(415), and the routers' shared parts (the context, a sending's id in a path).

The guard is ASGI middleware around the API: it refuses a too large ``Content-Length`` at once and
counts the bytes of a body sent without one (chunked), so no request makes the server hold more than
its limit in memory.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailshot_core.web.api.problems import Problem, problem_response

MAX_BODY = 1024 * 1024  # a sending's HTML with its inline CSS fits; anything bigger is a mistake
# A bulk import: 100,000 rows of address, name and language are ~5 MB of CSV, ~9 MB of JSON.
MAX_IMPORT_BODY = 64 * 1024 * 1024
IMPORT_PATH = "/subscribers/import"
JSON = "application/json"
CSV = "text/csv"
MAX_ID = 2**63 - 1  # larger ids would overflow the database's integer before it could say "not found"

SendingId = Annotated[int, Path(ge=1, le=MAX_ID, description="The sending's id.")]


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
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise Problem(413, f"the request body is larger than {limit:,} bytes")
            return message

        await self.app(scope, counted, send)
