"""What every route of the web app shares: settings, engine, outbound fetcher (``app.state``).

Apart from app.py so the routers can ask for it without importing the factory that includes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.engine import Engine

from mailshot_core.config import Settings
from mailshot_core.web.auth import Fetch, SnsVerifier


@dataclass(frozen=True)
class WebContext:
    settings: Settings
    engine: Engine
    sns: SnsVerifier
    fetch: Fetch  # outbound GETs (SNS certificates, subscription confirmations): injectable for tests


def context(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.mailshot
    return ctx
