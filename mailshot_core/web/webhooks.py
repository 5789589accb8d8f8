"""``/webhooks/{provider}``: ESP events in, written raw to the inbox, answered at once.

- GET / HEAD (URL validation by Mandrill, Mailjet, Brevo) -> 200.
- POST: authenticated first (web/auth.py).  Not authenticated -> 403, nothing stored, except an
  empty probe (empty body, ``[]``, Mandrill's ``mandrill_events=[]`` signed with the literal key
  "test-webhook", SparkPost's ``[{"msys": {}}]``), which gets 200 so that set-up succeeds.
- Authenticated but not the provider's documented format -> 400 with the reason (which event, which
  field).
- Otherwise the events are stored (deduplicated) and answered at once: the providers' timeouts are
  short (SparkPost 10 s) and their retries can last hours.  A background thread then applies them
  (feedback/applier.py); the hourly ``apply-feedback`` sweep applies anything left.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from mailshot_core.feedback import esp_events, inbox
from mailshot_core.feedback.esp_events import IncomingEvent, MalformedPayload
from mailshot_core.web.auth import Forbidden, check_mandrill, check_shared_secret, check_sns_url
from mailshot_core.web.context import WebContext, context

log = logging.getLogger("mailshot.web.webhooks")
router = APIRouter()
PROVIDERS = ("mailjet", "sparkpost", "mandrill", "brevo", "ses")


def _unknown(provider: str) -> JSONResponse:
    return JSONResponse({"error": f"no webhook for {provider!r} (one of: {', '.join(PROVIDERS)})"}, status_code=404)


@router.api_route("/webhooks/{provider}", methods=["GET", "HEAD"])
def probe(provider: str) -> Response:
    """Providers check that the URL answers before they post to it."""
    if provider not in PROVIDERS:
        return _unknown(provider)
    return JSONResponse({"ok": True})


def _secret(ctx: WebContext, provider: str) -> str | None:
    value = getattr(ctx.settings, f"{provider}_webhook_secret")
    return value.get_secret_value() if value is not None else None


def _is_probe(provider: str, body: bytes) -> bool:
    """An empty test request: it carries no event, so answering 200 unauthenticated stores nothing."""
    if not body.strip():
        return True
    reader = esp_events.READERS.get(provider)
    if reader is None:
        return False
    try:
        return reader(body) == []
    except MalformedPayload:
        return False


def _authenticate(ctx: WebContext, provider: str, request: Request, body: bytes) -> Any:
    """Raises Forbidden; returns the parsed SNS message for SES (it is needed to verify it)."""
    s = ctx.settings
    if provider == "mandrill":
        key = s.mandrill_webhook_key.get_secret_value() if s.mandrill_webhook_key else None
        url = s.mandrill_webhook_url or f"{s.base_url}/webhooks/mandrill"
        try:
            form = esp_events.mandrill_form(body)
        except MalformedPayload as exc:
            raise Forbidden(f"Mandrill webhook: cannot check a signature over an unreadable form ({exc})") from None
        check_mandrill(key, url, form, request.headers.get("X-Mandrill-Signature"))
        return None
    if provider == "ses":
        try:
            message = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise Forbidden("SES webhook: the body is not an SNS message (not JSON)") from None
        if not isinstance(message, dict):
            raise Forbidden("SES webhook: the body is not an SNS message (not an object)")
        ctx.sns.check(message, request.headers.get("x-amz-sns-message-type"))
        return message
    check_shared_secret(
        _secret(ctx, provider), provider, request.headers.get("Authorization"), request.query_params.get("token")
    )
    return None


def _ses(ctx: WebContext, message: dict[str, Any]) -> list[IncomingEvent] | JSONResponse:
    kind = message.get("Type")
    if kind == "SubscriptionConfirmation":
        url = str(message.get("SubscribeURL", ""))
        try:
            check_sns_url(url, "SubscribeURL")
        except Forbidden as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        ctx.fetch(url)  # confirming is a GET of the URL SNS gave (signature already verified)
        log.info("SNS subscription to %s confirmed", message.get("TopicArn"))
        return JSONResponse({"confirmed": message.get("TopicArn")})
    if kind != "Notification":
        return JSONResponse({"ok": True})
    return [esp_events.ses_event(message)]


@router.post("/webhooks/{provider}")
async def receive(provider: str, request: Request) -> Response:
    if provider not in PROVIDERS:
        return _unknown(provider)
    ctx = context(request)
    body = await request.body()
    try:
        sns_message = _authenticate(ctx, provider, request, body)
    except Forbidden as exc:
        if _is_probe(provider, body):
            return JSONResponse({"ok": True, "probe": True})
        log.warning("webhook %s refused (403): %s", provider, exc)
        return JSONResponse({"error": str(exc)}, status_code=403)
    try:
        if provider == "ses":
            parsed = await run_in_threadpool(_ses, ctx, sns_message)
            if isinstance(parsed, JSONResponse):
                return parsed
            events = parsed
        else:
            events = esp_events.READERS[provider](body) if body.strip() else []
    except MalformedPayload as exc:
        log.warning("webhook %s: malformed (400): %s", provider, exc)
        return JSONResponse({"error": str(exc)}, status_code=400)
    report = await run_in_threadpool(inbox.store, ctx.engine, events)
    ctx.applier.submit(report.ids)  # applied on arrival, in the background (feedback/applier.py)
    return JSONResponse(
        {
            "received": report.received,
            "stored": report.stored,
            "duplicates": report.duplicates,
            "ignored": report.ignored,
        }
    )
