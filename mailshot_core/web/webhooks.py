"""``/webhooks/{provider}``: ESP events in, written raw to the inbox, answered at once.

- GET / HEAD (URL validation by Mandrill, Mailjet, Brevo) -> 200.
- POST: authenticated first (web/auth.py), reading no more than authentication needs: Mailjet,
  SparkPost and Brevo carry their secret in the headers or the URL, so they are checked before a byte
  of the body is read; Mandrill's signature and SNS's cover the body, which is then read with the cap
  (MAILSHOT_WEBHOOK_MAX_BYTES, 413 beyond it, counted as it streams in).  Not authenticated -> 403,
  nothing stored, except an empty probe (empty body, ``[]``, Mandrill's ``mandrill_events=[]`` signed
  with the literal key "test-webhook", SparkPost's ``[{"msys": {}}]``: a few bytes, recognised without
  the provider's parser), which gets 200 so that set-up succeeds.
- Authenticated but not the provider's documented format -> 400 with the reason (which event, which
  field).  Every answer to a bad body is a 4xx: nothing a provider (or anyone) posts makes a 500.
- Otherwise the events are stored (deduplicated) and answered at once: the providers' timeouts are
  short (SparkPost 10 s) and their retries can last hours.  A background thread then applies them
  (feedback/applier.py); the hourly ``apply-feedback`` sweep applies anything left.

Reading, parsing and storing a big body run in worker threads, and the SNS certificate is fetched
asynchronously with a deadline: the event loop keeps answering the other requests (the open pixel,
the pages) whatever is being posted here.
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
from mailshot_core.web.auth import (
    FetchError,
    Forbidden,
    check_mandrill,
    check_shared_secret,
    check_sns_url,
    fetch_with_deadline,
)
from mailshot_core.web.context import WebContext, context
from mailshot_core.web.forms import capped_body

log = logging.getLogger("mailshot.web.webhooks")
router = APIRouter()
PROVIDERS = ("mailjet", "sparkpost", "mandrill", "brevo", "ses")
SHARED_SECRET = ("mailjet", "sparkpost", "brevo")  # authenticated by headers or the URL alone
PROBE_BYTES = 256  # an empty probe is a few bytes; anything longer without credentials is refused unread


def _safe(text: str) -> str:
    """Text for a JSON answer or a log line: a lone surrogate from a body would make the encoder fail."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _answer(status: int, message: str, *, unread: bool = False) -> JSONResponse:
    """``unread``: the body was not read to its end; the connection is closed after the answer, so that
    the rest of a big body is not received (and discarded) by the event loop."""
    headers = {"Connection": "close"} if unread else None
    return JSONResponse({"error": _safe(message)}, status_code=status, headers=headers)


def _unknown(provider: str) -> JSONResponse:
    return _answer(404, f"no webhook for {provider[:40]!r} (one of: {', '.join(PROVIDERS)})")


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
    """An empty test request: it carries no event, so answering 200 unauthenticated stores nothing.
    Only a few bytes are ever looked at (PROBE_BYTES): an unauthenticated body is not parsed."""
    if len(body) > PROBE_BYTES:
        return False
    if not body.strip():
        return True
    if provider == "mandrill":
        try:
            form = esp_events.mandrill_form(body)
        except MalformedPayload:
            return False
        body = form.get("mandrill_events", "").encode()
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return payload in ([], {}) or (provider == "sparkpost" and payload in ({"msys": {}}, [{"msys": {}}]))


async def _refused(provider: str, request: Request, exc: Forbidden, body: bytes | None = None) -> Response:
    if body is None:  # not read yet: a probe is tiny, so at most PROBE_BYTES are read to recognise one
        body = await capped_body(request, PROBE_BYTES)
    if body is not None and _is_probe(provider, body):
        return JSONResponse({"ok": True, "probe": True})
    log.warning("webhook %s refused (403): %s", provider, _safe(str(exc)))
    return _answer(403, str(exc), unread=body is None or len(body) >= PROBE_BYTES)


def _sns_message(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):  # ValueError: not JSON, not UTF-8, a 5,000-digit number
        raise Forbidden("SES webhook: the body is not an SNS message (not JSON)") from None
    if not isinstance(message, dict):
        raise Forbidden("SES webhook: the body is not an SNS message (not an object)")
    return message


def _mandrill_form(ctx: WebContext, url: str, body: bytes, signature: str | None) -> None:
    key = ctx.settings.mandrill_webhook_key
    try:
        form = esp_events.mandrill_form(body)
    except MalformedPayload as exc:
        raise Forbidden(f"Mandrill webhook: cannot check a signature over an unreadable form ({exc})") from None
    check_mandrill(key.get_secret_value() if key else None, url, form, signature)


async def _authenticate_body(ctx: WebContext, provider: str, request: Request, body: bytes) -> dict[str, Any] | None:
    """Mandrill and SES sign the body itself.  Raises Forbidden; returns the SNS message for SES."""
    s = ctx.settings
    if provider == "mandrill":
        url = s.mandrill_webhook_url or f"{s.base_url}/webhooks/mandrill"
        await run_in_threadpool(_mandrill_form, ctx, url, body, request.headers.get("X-Mandrill-Signature"))
        return None
    message = await run_in_threadpool(_sns_message, body)
    signed = ctx.sns.precheck(message, request.headers.get("x-amz-sns-message-type"))
    key = await ctx.sns.key(signed.certificate_url)
    await run_in_threadpool(ctx.sns.verify, message, signed, key)
    return message


async def _ses(ctx: WebContext, message: dict[str, Any]) -> list[IncomingEvent] | JSONResponse:
    kind = message.get("Type")
    if kind == "SubscriptionConfirmation":
        url = str(message.get("SubscribeURL", ""))
        try:
            check_sns_url(url, "SubscribeURL")
            # Confirming is a GET of the URL SNS gave (signature already verified), on the event loop with
            # a deadline; a failure is the caller's to retry (the SNS console resends the confirmation).
            await fetch_with_deadline(ctx.fetch, url, ctx.sns.timeout)
        except (Forbidden, FetchError) as exc:
            log.warning("SNS subscription to %s not confirmed: %s", message.get("TopicArn"), _safe(str(exc)))
            return _answer(400, f"subscription not confirmed: {exc}")
        log.info("SNS subscription to %s confirmed", message.get("TopicArn"))
        return JSONResponse({"confirmed": message.get("TopicArn")})
    if kind != "Notification":
        return JSONResponse({"ok": True})
    event = await run_in_threadpool(esp_events.ses_event, message)
    if event is None:
        # SES first posts a plain-text notice ("Successfully validated SNS topic for Amazon SES event
        # publishing."): not an event, acknowledged so that SNS does not retry it.
        notice = _safe(str(message.get("Message", ""))[:200])
        log.info("SNS notification without an SES event record, acknowledged: %r", notice)
        return JSONResponse({"ok": True, "ignored": "not an SES event record", "message": notice})
    return [event]


def _read(provider: str, body: bytes) -> list[IncomingEvent]:
    return esp_events.READERS[provider](body) if body.strip() else []


@router.post("/webhooks/{provider}")
async def receive(provider: str, request: Request) -> Response:
    if provider not in PROVIDERS:
        return _unknown(provider)
    ctx = context(request)
    limit = ctx.settings.webhook_max_bytes
    too_big = f"body larger than {limit:,} bytes (MAILSHOT_WEBHOOK_MAX_BYTES): not read"
    sns_message = None
    if provider in SHARED_SECRET:
        try:
            check_shared_secret(
                _secret(ctx, provider),
                provider,
                request.headers.get("Authorization"),
                request.query_params.get("token"),
            )
        except Forbidden as exc:
            return await _refused(provider, request, exc)
        body = await capped_body(request, limit)
        if body is None:
            return _answer(413, too_big, unread=True)
    else:
        body = await capped_body(request, limit)
        if body is None:
            return _answer(413, too_big, unread=True)
        try:
            sns_message = await _authenticate_body(ctx, provider, request, body)
        except Forbidden as exc:
            return await _refused(provider, request, exc, body)
    try:
        if sns_message is not None:
            parsed = await _ses(ctx, sns_message)
            if isinstance(parsed, JSONResponse):
                return parsed
            events = parsed
        else:
            events = await run_in_threadpool(_read, provider, body)
    except MalformedPayload as exc:
        log.warning("webhook %s: malformed (400): %s", provider, _safe(str(exc)))
        return _answer(400, str(exc))
    report = await run_in_threadpool(inbox.store, ctx.engine, events)
    ctx.applier.submit(report.ids)  # applied on arrival, in the background (feedback/applier.py)
    if report.untied:
        # Not an error for the provider (another site on the same account, an id we never sent): the
        # batch is acknowledged, and the operator sees how many events were left aside and why.
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(report.untied.items()))
        log.warning(
            "webhook %s: %d of %d event(s) not tied to a recipient: %s", provider, report.ignored, len(events), reasons
        )
    return JSONResponse(
        {
            "received": report.received,
            "stored": report.stored,
            "duplicates": report.duplicates,
            "ignored": report.ignored,
            "untied": report.untied,
        }
    )
