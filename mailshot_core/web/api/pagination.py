"""Cursor pagination: ``?limit=`` and an opaque ``cursor`` (the position after the last row given, signed
by nothing but checked: it only ever selects rows the caller may read anyway), and the page's shape.

Keyset pagination (``WHERE id > last``) costs the same on page 1 and page 1,000, and a row added while
a client pages through never makes it see another row twice.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from mailshot_core.web.api.problems import Problem

T = TypeVar("T")
MAX_LIMIT = 1000
_PREFIX = "v1:"

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Rows per page.")]
Cursor = Annotated[
    str | None,
    Query(max_length=100, description="The `next_cursor` of the previous page; absent: the first page."),
]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None  # absent: the last page
    count: int | None = None  # every row the filters match, all pages together (where cheap to count)


def encode(position: int) -> str:
    return base64.urlsafe_b64encode(f"{_PREFIX}{position}".encode()).decode().rstrip("=")


def decode(cursor: str | None) -> int | None:
    """The position a cursor stands for (None: the first page); 400 for one this API did not give."""
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    digits = text.removeprefix(_PREFIX)
    if not text.startswith(_PREFIX) or not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
        raise Problem(400, "cursor: not a cursor of this API (give back a next_cursor unchanged)")
    return int(digits)
