"""``Idempotency-Key`` on the POSTs that create something: a retried create returns the first answer
instead of creating twice (a client whose connection broke after sending cannot know whether it was done).

The key is claimed before the work, by one ``INSERT .. ON CONFLICT DO NOTHING`` of its row
(``idempotent_request``, primary key = API key + Idempotency-Key): of two concurrent retries only one
inserts (on PostgreSQL the second waits for the first's commit, then inserts nothing), the other gets
409 while the first runs.  The row keeps a fingerprint of the request (method, path, query, body): the
same key with another request is a client's bug, refused (422).  The answer is stored with its status
and replayed; a failed request releases its key (it changed nothing: each operation is one transaction),
so it can be retried.  Keys older than 24 hours are purged when a new one is claimed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlmodel import col

from mailshot_core.audience.subscribers import insert_ignore
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import IdempotentRequest, max_length, utcnow
from mailshot_core.web.api.keys import Caller
from mailshot_core.web.api.problems import Problem
from mailshot_core.web.context import context

HEADER = "Idempotency-Key"
KEPT = timedelta(hours=24)
KEY_LENGTH = max_length(IdempotentRequest, "key")
_TABLE = IdempotentRequest.__table__  # type: ignore[attr-defined]
HEADER_DOC = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": "Any unique text (a UUID): a retry with the same key and body gets the first answer, "
    "and creates nothing more (keys are kept 24 hours).",
    "schema": {"type": "string", "minLength": 1, "maxLength": KEY_LENGTH, "pattern": "^[\\x21-\\x7e]+$"},
}


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """What tells a retry (same) from another request reusing its key (different)."""
    digest = hashlib.sha256()
    for part in (method, path, query):
        digest.update(part.encode() + b"\0")
    digest.update(body)
    return digest.hexdigest()


def claim(engine: Engine, key_id: int, key: str, fingerprint: str) -> IdempotentRequest | None:
    """None: the key is ours now; else its row (a request in flight, or done)."""
    now = utcnow()
    with session_scope(engine) as session:
        session.execute(delete(IdempotentRequest).where(col(IdempotentRequest.created_at) < now - KEPT))
        values = {"api_key_id": key_id, "key": key, "fingerprint": fingerprint, "created_at": now}
        # RETURNING, not rowcount: on PostgreSQL (psycopg 3) the rowcount of an INSERT .. ON CONFLICT DO
        # NOTHING that inserted nothing was not 0 (measured: every retry "claimed" the key again); a
        # conflict returns no row on both databases.
        inserted = session.execute(insert_ignore(session, _TABLE).values(**values).returning(_TABLE.c.key)).first()
        if inserted is not None:
            return None
        return session.get(IdempotentRequest, (key_id, key))


def _finish(engine: Engine, key_id: int, key: str, status: int | None, body: str | None) -> None:
    """Store the answer (``status``), or release the key (None)."""
    where = (col(IdempotentRequest.api_key_id) == key_id) & (col(IdempotentRequest.key) == key)
    with session_scope(engine) as session:
        if status is None:
            session.execute(delete(IdempotentRequest).where(where))
        else:
            session.execute(update(IdempotentRequest).where(where).values(status_code=status, body=body))


def _json(result: Any, status: int, replayed: bool) -> Response:
    content = result if isinstance(result, str) else json.dumps(jsonable_encoder(result), ensure_ascii=False)
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return Response(content, status, headers=headers, media_type="application/json")


async def respond(request: Request, caller: Caller, status: int, work: Callable[[], Any]) -> Response:
    """Run ``work`` (blocking: in a thread) and answer its result as JSON with ``status``, once per
    Idempotency-Key when the request has one."""
    key = request.headers.get(HEADER)
    if key is None:
        return _json(await run_in_threadpool(work), status, False)
    if not (0 < len(key) <= KEY_LENGTH and key.isascii() and key.isprintable() and " " not in key):
        raise Problem(400, f"{HEADER}: 1 to {KEY_LENGTH} printable ASCII characters without spaces")
    engine = context(request).engine
    this = fingerprint(request.method, request.url.path, request.url.query, await request.body())
    row = await run_in_threadpool(claim, engine, caller.key_id, key, this)
    if row is not None:
        if row.fingerprint != this:
            raise Problem(422, f"{HEADER} {key[:80]!r} was used for another request; use a new key for this one")
        if row.status_code is None or row.body is None:
            raise Problem(409, f"the request with {HEADER} {key[:80]!r} is still in progress; retry later")
        return _json(row.body, row.status_code, True)
    try:
        result = await run_in_threadpool(work)
    except BaseException:
        await run_in_threadpool(_finish, engine, caller.key_id, key, None, None)
        raise
    body = json.dumps(jsonable_encoder(result), ensure_ascii=False)
    await run_in_threadpool(_finish, engine, caller.key_id, key, status, body)
    return _json(body, status, False)


def creating(
    router: APIRouter,
    path: str,
    *,
    operation_id: str,
    response_model: Any,
    status_code: int = 201,
    link: dict[str, Any] | None = None,
    problems: dict[int | str, dict[str, Any]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``router.post`` for an operation that creates something: its Idempotency-Key header documented, and
    the OpenAPI ``link`` from its answer to where the thing created is read (schemathesis follows it)."""
    responses: dict[int | str, dict[str, Any]] = {status_code: {"links": link}} if link else {}
    return router.post(
        path,
        operation_id=operation_id,
        status_code=status_code,
        response_model=response_model,
        responses={**responses, **(problems or {})},
        openapi_extra={"parameters": [HEADER_DOC]},
    )
