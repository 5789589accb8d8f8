"""The FastAPI application factory: ``create_app(settings)`` -> the app ``mailshot web`` serves.

Each feature is a router of its own (``webhooks.py`` ...) sharing one :class:`WebContext` (context.py: settings,
engine, outbound fetcher) kept in ``app.state``; the schema is migrated when the engine is opened,
like every other entry point.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from mailshot_core.config import Settings, get_settings
from mailshot_core.feedback.applier import Applier
from mailshot_core.store.db import get_engine
from mailshot_core.web import links, pages, preferences, subscribe, webhooks
from mailshot_core.web.api.app import PREFIX as API_PREFIX
from mailshot_core.web.api.app import create_api
from mailshot_core.web.api.problems import problem_response
from mailshot_core.web.auth import FETCH_TIMEOUT, Fetch, SnsVerifier, https_get
from mailshot_core.web.context import RunStarter, WebContext
from mailshot_core.web.server import install_log_redaction


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    fetch: Fetch | None = None,
    fetch_timeout: float = FETCH_TIMEOUT,
    start_run: RunStarter | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    engine = engine or get_engine(settings.database_url)
    fetch = fetch or https_get
    topics = {arn.strip() for arn in settings.ses_topic_arns.split(",") if arn.strip()}
    install_log_redaction()  # whoever serves the app, ?token= never reaches the access log
    app = FastAPI(title="Mailshot", docs_url=None, redoc_url=None, openapi_url=None)
    applier = Applier(engine, max_fail=settings.max_fail)
    ctx = WebContext(settings, engine, SnsVerifier(topics, fetch, fetch_timeout), fetch, applier, start_run)
    app.state.mailshot = ctx
    app.include_router(webhooks.router)
    app.include_router(links.router)
    app.include_router(pages.router)
    app.state.mailshot_subscribe_throttle = subscribe.new_throttle()
    app.include_router(subscribe.router)
    app.include_router(preferences.router)
    app.mount(API_PREFIX, create_api(ctx))  # the Newsletter API: a sub-application with its own schema and errors
    app.add_exception_handler(StarletteHTTPException, _api_paths_answer_problems)
    return app


async def _api_paths_answer_problems(request: Request, exc: Exception) -> Response:
    """A path under /api/v1 the mount does not match (Starlette's mount pattern stops at a line break in
    the path) is still the API's: its 404 is a problem too."""
    assert isinstance(exc, StarletteHTTPException)
    if request.url.path.startswith(API_PREFIX + "/"):
        return problem_response(exc.status_code, None, dict(exc.headers or {}))
    return await http_exception_handler(request, exc)
