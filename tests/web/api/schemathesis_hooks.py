"""Schemathesis hooks for test_api_schema.py (loaded through SCHEMATHESIS_HOOKS).

A client gives each new request its own Idempotency-Key (the schema says so); schemathesis draws header
values from the schema alone, so the same few keys ("0", "00...") came back with different bodies, which
the API rightly refuses (422, draft-ietf-httpapi-idempotency-key-header §2.7).  A well-formed key is
replaced by a fresh one before the call; a malformed one is kept, so the negative tests still send it, and
so is the whole case that tests a missing header.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import schemathesis

HEADER = "Idempotency-Key"
_WELL_FORMED = re.compile(r"[\x21-\x7e]{1,255}")


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    phase = getattr(getattr(case, "meta", None), "phase", None)
    if getattr(getattr(phase, "data", None), "scenario", None) == "missing_parameter":
        return  # the case tests a header left out (Authorization): it must reach the API as generated
    headers = case.headers or {}
    value = headers.get(HEADER)
    if isinstance(value, str) and _WELL_FORMED.fullmatch(value):
        headers[HEADER] = str(uuid.uuid4())
        case.headers = headers
