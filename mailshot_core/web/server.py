"""How ``mailshot web`` runs the app under uvicorn: whose client address to believe, and an access log
that never shows a secret.

- **Proxy headers.**  uvicorn believes ``X-Forwarded-For`` from 127.0.0.1 by default, so any client on
  the machine, or one behind a proxy that passes the header through, could name itself any address,
  and rotate it to escape the login throttle or put a victim's address in it.  Here the header is
  believed only from the proxies listed in MAILSHOT_FORWARDED_ALLOW_IPS (or uvicorn's own
  FORWARDED_ALLOW_IPS); by default from no one: the client is the connection's peer.
- **Access log.**  Mailjet, SparkPost and Brevo may authenticate with ``?token=SECRET`` in the URL,
  which uvicorn's access log would print whole: the value is replaced by ``***``.  So is the token
  of the ``/confirm/<token>`` and ``/preferences/<token>`` paths: whoever reads the log could
  otherwise confirm someone's subscription or change their lists.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import uvicorn
from fastapi import FastAPI

from mailshot_core.config import Settings

ACCESS_LOGGER = "uvicorn.access"
_SECRET_PARAMETER = re.compile(r"([?&](?:token|secret|key|password)=)[^&#\s\"]*", re.I)
_SECRET_PATH = re.compile(r"(/(?:confirm|preferences)/)[^/?#\s\"]+")


def redact(text: str) -> str:
    """A URL or log line with the values of its secret query parameters, and the tokens of its
    confirmation and preferences paths, replaced by ``***``."""
    return _SECRET_PATH.sub(r"\1***", _SECRET_PARAMETER.sub(r"\1***", text))


class RedactSecrets(logging.Filter):
    """On uvicorn's access logger: its records carry the request path with its query string as an
    argument ((client, method, path, version, status)), redacted before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def install_log_redaction() -> None:
    """Once per process, whatever configures logging later (uvicorn adds handlers, not logger filters)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, RedactSecrets) for f in logger.filters):
        logger.addFilter(RedactSecrets())


def config(app: FastAPI, settings: Settings, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for the app: proxy headers only from the configured proxies."""
    proxies = settings.forwarded_ips
    options.setdefault("proxy_headers", bool(proxies))
    options.setdefault("forwarded_allow_ips", proxies or "")
    install_log_redaction()
    return uvicorn.Config(app, **options)
