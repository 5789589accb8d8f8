"""The request fields' types: what the domain accepts, said in the schema, so a client (and schemathesis)
knows before sending that an address, a language code or a header text will be accepted.

The domain still checks everything (audience/addresses.py, content/message.py ...): these patterns only
describe its rules in JSON Schema terms, a little stricter where a rule cannot be written as a regular
expression (an address is plain ASCII with a real top-level domain).  No text field takes a NUL character
(PostgreSQL cannot store one), no single-line field a CR or LF (header injection).  Booleans and integers
are JSON's: ``0`` is not ``false`` and ``"1"`` is not ``1`` (but ``1.0`` is).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BeforeValidator, Field, StrictBool

from mailshot_core.audience.lists import LIST_NAME_LENGTH

EMAIL_LENGTH = 254  # RFC 5321 §4.5.3.1.3: a path is at most 256 octets, 254 without its angle brackets
# The ids are the database's INTEGER (32 bits on PostgreSQL): a larger one would be a database error (a
# 500) before it could be "not found".
MAX_ID = 2**31 - 1
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# An address email-validator accepts: dot-atoms, a domain of LDH labels under a top-level of letters.
EMAIL_PATTERN = rf"^{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+[A-Za-z]{{2,24}}$"
LIST_PATTERN = r"^[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*$"  # lists.check_identifier: a List-Id dot-atom
LANG_PATTERN = r"^(?:[A-Za-z]{1,8}(?:[-_][A-Za-z0-9]{1,8}){0,3})?$"  # BCP 47-like: fr, pt-BR, zh_Hant
LINE_PATTERN = r"^[^\x00\r\n]*$"  # a header's text: one line
TEXT_PATTERN = r"^[^\x00]*$"
NONBLANK_TEXT_PATTERN = r"^[^\x00]*[^\x00\s][^\x00]*$"

Email = Annotated[str, Field(min_length=6, max_length=EMAIL_LENGTH, pattern=EMAIL_PATTERN)]
OptionalEmail = Annotated[str, Field(max_length=EMAIL_LENGTH, pattern=rf"^$|{EMAIL_PATTERN}")]
ListName = Annotated[str, Field(min_length=1, max_length=LIST_NAME_LENGTH, pattern=LIST_PATTERN)]
Lang = Annotated[str, Field(max_length=16, pattern=LANG_PATTERN)]


def _json_integer(value: object) -> object:
    """JSON Schema's integer (RFC 8259 numbers): 3 and 3.0, but not "3" nor true, which pydantic's lax
    mode would take."""
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON number without a fraction")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _json_text(value: object) -> object:
    """A date-time is a JSON string (RFC 3339), not a number that pydantic's lax mode would read as a timestamp."""
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 date-time string")
    return value


# The validators go after the constraints: placed before, pydantic writes `ge`/`le` in the schema instead
# of `minimum`/`maximum`, which no client (nor schemathesis) reads.
JSON_INTEGER = BeforeValidator(_json_integer)
Timestamp = Annotated[datetime, BeforeValidator(_json_text)]
Flag = StrictBool
# Any integer: one that names no sending (0, -1) is a 404 like any unknown id.
Id = Annotated[int, Field(ge=-MAX_ID, le=MAX_ID), JSON_INTEGER]


def line(max_length: int, min_length: int = 0) -> object:
    """A single-line text (a header's: subject, name, title)."""
    return Field(min_length=min_length, max_length=max_length, pattern=LINE_PATTERN)


def text(max_length: int, *, nonblank: bool = False) -> object:
    """A multi-line text (a body, a description)."""
    return Field(max_length=max_length, pattern=NONBLANK_TEXT_PATTERN if nonblank else TEXT_PATTERN)
