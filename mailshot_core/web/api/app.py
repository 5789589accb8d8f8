"""The API's FastAPI sub-application, mounted at ``/api/v1`` by web/app.py: its schema (OpenAPI 3.1) at
``/api/v1/openapi.json``, the interactive docs at ``/api/v1/docs``, one router per resource, every
error a problem (problems.py), every body bounded (routing.py).
"""

from __future__ import annotations

from fastapi import FastAPI

from mailshot_core.web.api import feedback, lists, messages, problems, sendings, subscribers
from mailshot_core.web.api.routing import RequestGuard
from mailshot_core.web.context import WebContext

PREFIX = "/api/v1"
DESCRIPTION = """SPIP's Newsletter API over HTTP: lists, subscribers (subscribe with double opt-in,
bulk import, unsubscribe, erase), sendings (create, test, send, follow), one-off messages and feedback.

Authenticate with an API key (`mailshot api-keys create NAME --scope read|subscribers|send|admin`):
`Authorization: Bearer msk_...`.  Errors are RFC 9457 `application/problem+json`.  A POST that creates
something honours `Idempotency-Key`."""


def create_api(ctx: WebContext) -> FastAPI:
    api = FastAPI(
        title="Mailshot Newsletter API",
        version="1",
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        responses=problems.RESPONSES,
    )
    api.state.mailshot = ctx  # the routers' context(request) reads the sub-application's state
    problems.install(api)
    api.add_middleware(RequestGuard)
    for module in (lists, subscribers, sendings, messages, feedback):
        api.include_router(module.router)
    return api
