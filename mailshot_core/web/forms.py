"""Request bodies read with a cap: a public endpoint must not hold a 2 GB upload in memory before it
finds out that the body is not one of our small forms."""

from __future__ import annotations

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
