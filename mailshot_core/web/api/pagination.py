"""Cursor pagination: ``?limit=`` and an opaque ``cursor`` (the position after the last row given, signed
by nothing but checked: it only ever selects rows the caller may read anyway), and the page's shape.

Keyset pagination (``WHERE id > last``) costs the same on page 1 and page 1,000, and a row added while
a client pages through never makes it see another row twice.
"""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from mailshot_core.web.api.fields import MAX_ID

T = TypeVar("T")
MAX_LIMIT = 1000
# A position written in base 36: opaque enough to be given back unchanged, and every text of the pattern
# is a position, so a cursor can be wrong only by its form (422), never by its content.
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Rows per page.")]
Cursor = Annotated[
    str | None,
    Query(pattern="^[0-9a-z]{1,12}$", description="The `next_cursor` of the previous page; absent: the first page."),
]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None  # absent: the last page
    count: int | None = None  # every row the filters match, all pages together (where cheap to count)


def encode(position: int) -> str:
    digits = ""
    while True:
        position, digit = divmod(position, 36)
        digits = _DIGITS[digit] + digits
        if not position:
            return digits


def decode(cursor: str | None) -> int | None:
    """The position a cursor stands for (None: the first page); its form is checked by :data:`Cursor`."""
    # Past the largest id there is nothing more: a position beyond it reads as the largest (the database's
    # INTEGER would overflow).
    return None if cursor is None else min(int(cursor, 36), MAX_ID)
