"""Every error of the API as an RFC 9457 ``application/problem+json`` body: type, title, status, detail
(and ``errors`` for a request that failed validation), whatever raised it: FastAPI's validation, Starlette's
routing (404, 405), the domain's errors (errors.py), the API's own refusals (:class:`Problem`), or a bug (500,
with no detail: the log has it).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from mailshot_core.errors import AlreadyExists, InvalidInput, InvalidState, MailshotError, NotFound

log = logging.getLogger("mailshot.web.api")

MEDIA_TYPE = "application/problem+json"
# Titles by status: the problem "type" is about:blank (RFC 9457 §4.2.1), so the title is the status' phrase.
TITLES: dict[int, str] = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
}


class ProblemBody(BaseModel):
    """RFC 9457 problem details (the schema of every error response)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[dict[str, Any]] | None = None  # validation errors: where (loc) and what (msg)


class Problem(Exception):
    """An API refusal: raised anywhere in a request, answered as problem+json by :func:`install`."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def problem_response(
    status: int, detail: str | None, headers: dict[str, str] | None = None, errors: list[dict[str, Any]] | None = None
) -> JSONResponse:
    body = ProblemBody(title=TITLES.get(status, "Error"), status=status, detail=detail, errors=errors)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers, media_type=MEDIA_TYPE)


# The statuses every operation may answer, declared in the schema (schemathesis checks that every answer is).
COMMON = (400, 401, 403, 404, 405, 413, 415, 422, 429, 500)
RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": TITLES[status], "model": ProblemBody, "content": {MEDIA_TYPE: {}}} for status in COMMON
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Problem responses beyond :data:`COMMON` that some operations answer (409: wrong state, 502: relay)."""
    return {s: {"description": TITLES[s], "model": ProblemBody, "content": {MEDIA_TYPE: {}}} for s in statuses}


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Only where and what: pydantic's "input" echoes the request (maybe a secret) and "ctx" may hold
    # exceptions that are not JSON.
    return [
        {"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]


def _summary(errors: list[dict[str, Any]]) -> str:
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"]) or "request"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def allowed_methods(request: Request) -> list[str]:
    """Every method the request's path answers: Starlette's own 405 names only its first route's (GET
    /lists/{identifier} and PATCH /lists/{identifier} are two routes).  A path that a route names literally
    is that route's (/subscribers/import), not also an {email}'s."""
    probe = {**request.scope, "method": "\0"}  # no route takes it: a partial match means the path fits
    literal: set[str] = set()
    templated: set[str] = set()
    pending: list[Any] = list(request.app.router.routes)
    while pending:
        route = pending.pop()
        included = getattr(route, "original_router", None)  # FastAPI keeps an included router whole
        if included is not None:
            pending.extend(included.routes)
        elif isinstance(route, APIRoute) and route.matches(probe)[0] == Match.PARTIAL:
            (templated if route.param_convertors else literal).update(route.methods or ())
    return sorted((literal or templated) - {"HEAD"})


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` with a problem."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(exc.status, exc.detail, exc.headers)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = jsonable_encoder(_validation_errors(exc))
        return problem_response(422, _summary(errors), errors=errors)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != TITLES.get(exc.status_code) else None
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return problem_response(exc.status_code, detail, headers)

    async def on_domain(request: Request, exc: Exception) -> JSONResponse:
        # Bad input is 422 like a schema violation: the request was understood and refused as it is.
        status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, InvalidState | AlreadyExists) else 422
        if not isinstance(exc, InvalidInput | NotFound | InvalidState):
            status = 502  # a MailshotError of its own: a relay or provider refused or was unreachable
        return problem_response(status, str(exc))

    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return problem_response(500, "unexpected error; the server's log has the details")

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(MailshotError, on_domain)
    app.add_exception_handler(Exception, on_bug)
