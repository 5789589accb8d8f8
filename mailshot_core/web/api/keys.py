"""API keys: ``msk_<prefix>_<secret>``, stored as the hex SHA-256 of the whole key, found by their prefix,
compared in constant time; a scope each (read < subscribers < send < admin); bearer authentication.

Only the hash is kept, so a database leak gives no usable key and a lost key is replaced, not shown
again.  The key's use is recorded (``last_used_at``) at most once a minute: one write per request
would make every read a write.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mailshot_core.errors import AlreadyExists, InvalidInput, NotFound
from mailshot_core.store.models import ApiKey, as_utc, max_length, utcnow
from mailshot_core.web.api.problems import Problem
from mailshot_core.web.context import context

SCOPES = ("read", "subscribers", "send", "admin")  # each includes the ones before it
KEY_NAME_LENGTH = max_length(ApiKey, "name")
_KEY = re.compile(r"msk_([0-9a-f]{8})_([A-Za-z0-9_-]{20,100})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@-]*")
USE_RECORD_INTERVAL = timedelta(minutes=1)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mailshot"'}


@dataclass(frozen=True)
class Caller:
    """Who makes an API request: its key's id, name (in the opt-in trail and the logs) and scope."""

    key_id: int
    name: str
    scope: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise InvalidInput(f"unknown scope {scope!r} (one of: {', '.join(SCOPES)})")
    return scope


def create_key(session: Session, name: str, scope: str) -> tuple[ApiKey, str]:
    """A new key: (its row, the key itself, to show once)."""
    name = name.strip()
    if len(name) > KEY_NAME_LENGTH or not _NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid key name {name[:100]!r}: letters, digits, space, '.', '_', '@', '-', "
            f"at most {KEY_NAME_LENGTH} characters"
        )
    check_scope(scope)
    if session.exec(select(ApiKey).where(ApiKey.name == name)).first():
        raise AlreadyExists(f"an API key named {name!r} already exists (revoke it, or choose another name)")
    while True:
        prefix = secrets.token_hex(4)
        if session.exec(select(ApiKey.id).where(ApiKey.prefix == prefix)).first() is None:
            break
    key = f"msk_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(name=name, prefix=prefix, secret_hash=hash_key(key), scope=scope)
    session.add(row)
    session.flush()
    return row, key


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.exec(select(ApiKey).order_by(col(ApiKey.name))).all())


def revoke_key(session: Session, name: str) -> ApiKey:
    row = session.exec(select(ApiKey).where(ApiKey.name == name)).first()
    if row is None:
        raise NotFound(f"no API key named {name!r} (mailshot api-keys list)")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        session.flush()
    return row


def authenticate(engine: Engine, key: str) -> Caller | None:
    """The caller a key belongs to; None for a malformed, unknown, altered or revoked key."""
    match = _KEY.fullmatch(key)
    if match is None:
        return None
    with Session(engine) as session:
        row = session.exec(select(ApiKey).where(ApiKey.prefix == match[1])).first()
        if row is None or row.revoked_at is not None or row.id is None:
            return None
        if not hmac.compare_digest(row.secret_hash, hash_key(key)):
            return None
        now = utcnow()
        if row.last_used_at is None or as_utc(now) - as_utc(row.last_used_at) >= USE_RECORD_INTERVAL:
            session.execute(update(ApiKey).where(col(ApiKey.id) == row.id).values(last_used_at=now))
            session.commit()
        return Caller(row.id, row.name, row.scope)


_bearer = HTTPBearer(auto_error=False, description="An API key: `mailshot api-keys create NAME --scope SCOPE`.")


def require(scope: str) -> Callable[..., object]:
    """A dependency: the caller, whose key has at least ``scope``; else 401 (no or bad key) or 403."""
    needed = SCOPES.index(check_scope(scope))

    async def caller(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Caller:
        if credentials is None:
            raise Problem(401, "give an API key: Authorization: Bearer msk_...", _CHALLENGE)
        found = await run_in_threadpool(authenticate, context(request).engine, credentials.credentials)
        if found is None:
            raise Problem(401, "unknown, malformed or revoked API key", {**_CHALLENGE})
        if SCOPES.index(found.scope) < needed:
            raise Problem(403, f"API key {found.name!r} has scope {found.scope!r}; this needs {scope!r} or above")
        return found

    return caller
