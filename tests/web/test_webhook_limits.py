"""Webhook hardening over real HTTP (uvicorn): bodies read with a cap, nothing parsed before
authentication, the event loop never held by a big body or a slow certificate host, secrets kept out
of the access log."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import engine_for, make_settings
from fakes.webhooks import (
    BUILDERS,
    SECRET,
    SnsSigner,
    WebServer,
    basic,
    free_socket,
    sns_notification,
    webhook_settings,
)
from mailshot_core.web.auth import FetchError, fetch_with_deadline, https_get
from mailshot_core.web.server import ACCESS_LOGGER, redact

MB = 1024 * 1024


def _web(sqlite_url: str, signer: SnsSigner | None = None, **kw: Any) -> WebServer:
    sock = free_socket()
    settings = make_settings(sqlite_url, **webhook_settings(sock.getsockname()[1]), **kw.pop("settings", {}))
    engine_for(settings)  # the schema, as `mailshot web` migrates it first
    return WebServer(settings, sock, signer, **kw)


def post_raw(url: str, path: str, headers: dict[str, str], size: int, chunked: bool = False) -> int | None:
    """POST ``size`` bytes on a raw socket, reading the answer while sending (the server may answer and
    close before the body is all sent).  Returns the status, or None if the connection died unanswered."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    received = bytearray()

    def read() -> None:  # up to the end of the answer's head: the status is all we want
        try:
            while b"\r\n\r\n" not in received and (chunk := sock.recv(65536)):
                received.extend(chunk)
        except OSError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(size)}
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": host, **headers, **framing}.items())
    block = b"[" + b" " * (64 * 1024 - 2) + b"]"
    try:
        sock.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode())
        sent = 0
        while sent < size:
            sock.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            sent += len(block)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # refused and closed before the end: what a cap does
    reader.join(30)
    sock.close()
    line = bytes(received).split(b"\r\n", 1)[0]
    return int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else None


def test_bodies_over_the_cap_get_413(sqlite_url: str) -> None:
    """Past MAILSHOT_WEBHOOK_MAX_BYTES an authenticated body gets 413, whether announced (Content-Length)
    or streamed (chunked: counted as it arrives); below it the same kind of body is read."""
    with _web(sqlite_url, settings={"webhook_max_bytes": 64 * 1024}) as web:
        auth = basic()
        assert post_raw(web.url, "/webhooks/mailjet", auth, 200 * 1024) == 413
        assert post_raw(web.url, "/webhooks/mailjet", auth, 200 * 1024, chunked=True) == 413
        assert post_raw(web.url, "/webhooks/mandrill", {}, 200 * 1024, chunked=True) == 413  # body-signed
        r = web.client.post("/webhooks/mailjet", content=b" " * (65 * 1024), headers=auth)
        assert r.status_code == 413 and "MAILSHOT_WEBHOOK_MAX_BYTES" in r.json()["error"]
        r = web.client.post("/webhooks/mailjet", content=b"[]" + b" " * (60 * 1024), headers=auth)
        assert r.status_code == 200 and r.json()["received"] == 0


def test_an_unauthenticated_body_is_refused_unread(sqlite_url: str) -> None:
    """Without credentials, a shared-secret provider answers 403 without reading the body (a big one is
    never parsed); a tiny empty probe is still recognised (200)."""
    with _web(sqlite_url) as web:
        assert post_raw(web.url, "/webhooks/brevo", {}, 20 * MB) == 403
        assert web.client.post("/webhooks/brevo", content=b"[]").status_code == 200
        assert web.client.post("/webhooks/sparkpost", json=[{"msys": {}}]).status_code == 200
        big_probe_lookalike = b"[" + b" " * 300 + b"]"  # longer than any probe: not parsed, refused
        assert web.client.post("/webhooks/brevo", content=big_probe_lookalike).status_code == 403


def test_a_100_mb_unauthenticated_body_does_not_hold_other_requests(sqlite_url: str) -> None:
    """While 100 MB bodies are posted without credentials (to a shared-secret provider: refused unread;
    to a body-signed one: read up to the cap, then 413), and big authenticated batches are parsed (in
    worker threads), a small request is answered at once.  The only timed assertion of the suite, with a
    generous bound (measured: see the report)."""
    batch = json.dumps([BUILDERS["mailjet"]("open", f"u{i}@example.com", 999, i) for i in range(16_000)]).encode()
    assert 4 * MB < len(batch) < 5 * MB
    with _web(sqlite_url) as web:
        statuses: list[int | None] = []
        parsed: list[int] = []

        def flood() -> None:
            for _ in range(3):
                for path in ("/webhooks/mandrill", "/webhooks/mailjet", "/webhooks/ses", "/webhooks/sparkpost"):
                    statuses.append(post_raw(web.url, path, {}, 100 * MB, chunked=path.endswith(("mandrill", "ses"))))

        def authenticated() -> None:
            with WebServer.client_for(web.url) as client:
                for _ in range(2):
                    parsed.append(client.post("/webhooks/mailjet", content=batch, headers=basic()).status_code)

        workers = [threading.Thread(target=flood), threading.Thread(target=authenticated)]
        for w in workers:
            w.start()
        latencies = []
        while any(w.is_alive() for w in workers) or not latencies:
            start = time.perf_counter()
            r = web.client.get("/o/not-a-token")  # the open pixel (a forged token: 404), about 1 KB
            latencies.append(time.perf_counter() - start)
            assert r.status_code == 404
        for w in workers:
            w.join()
        assert statuses == [413, 403, 413, 403] * 3, statuses
        assert parsed == [200, 200]
        latencies.sort()
        worst, median = latencies[-1], latencies[len(latencies) // 2]
        print(
            f"\n{len(latencies)} small requests meanwhile: median {median * 1000:.1f} ms, worst {worst * 1000:.1f} ms"
        )
        assert worst < 2.0


class SlowCertificates:
    """SNS's certificate host, hanging: the fetch starts and never ends (a third party, simulated)."""

    def __init__(self) -> None:
        self.started = threading.Event()

    async def fetch(self, url: str) -> bytes:
        self.started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def test_a_slow_or_failing_certificate_fetch_is_a_403_and_blocks_nothing(sqlite_url: str) -> None:
    """The SNS certificate is fetched on the event loop with a deadline: while it hangs, other requests
    are answered; past the deadline the message gets 403 (never 500); a failed fetch too."""
    signer = SnsSigner()
    slow = SlowCertificates()
    record = BUILDERS["ses"]("Open", "u0@example.com", 1, 1)
    with _web(sqlite_url, signer, fetch=slow.fetch, fetch_timeout=3.0) as web:
        answer: dict[str, Any] = {}

        def post() -> None:
            answer["r"] = web.client.post("/webhooks/ses", json=sns_notification(signer, record))

        poster = threading.Thread(target=post)
        poster.start()
        assert slow.started.wait(10)
        assert web.client.get("/webhooks/ses").status_code == 200  # answered while the fetch hangs
        assert poster.is_alive()
        poster.join(30)
        assert answer["r"].status_code == 403 and "no answer within 3 s" in answer["r"].json()["error"]

    async def failing(url: str) -> bytes:
        raise FetchError(f"GET {url}: ConnectError: connection refused")

    with _web(sqlite_url, signer, fetch=failing) as web:
        r = web.client.post("/webhooks/ses", json=sns_notification(signer, record))
        assert r.status_code == 403 and "SNS signing certificate unavailable" in r.json()["error"]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts and never says a word (a TLS handshake that never ends)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def test_the_real_fetcher_fails_cleanly(silent_server: int) -> None:
    """https_get (httpx) against a host that never answers stops at the deadline, and against a closed
    port fails at once: both as FetchError, which the webhook turns into 403."""

    async def both() -> list[str]:
        errors = []
        for url in (f"https://127.0.0.1:{silent_server}/cert.pem", "https://127.0.0.1:1/cert.pem"):
            try:
                await fetch_with_deadline(https_get, url, 0.5)
            except FetchError as exc:
                errors.append(str(exc))
        return errors

    slow, refused = asyncio.run(both())
    assert "no answer within 0.5 s" in slow
    assert refused.startswith("GET https://127.0.0.1:1/cert.pem: ConnectError")


def test_the_plain_text_sns_notice_is_acknowledged(sqlite_url: str) -> None:
    """SES's first notification on a new topic is plain text, not JSON: 200, nothing stored."""
    signer = SnsSigner()
    notice = signer.sign(
        {
            "Type": "Notification",
            "MessageId": "a1b2c3",
            "TopicArn": webhook_settings(0)["ses_topic_arns"],
            "Message": "Successfully validated SNS topic for Amazon SES event publishing.",
            "Timestamp": "2024-01-01T00:00:00.000Z",
        }
    )
    with _web(sqlite_url, signer) as web:
        r = web.client.post("/webhooks/ses", json=notice, headers={"x-amz-sns-message-type": "Notification"})
        assert r.status_code == 200 and r.json()["ignored"] == "not an SES event record"


def test_the_token_never_reaches_the_access_log(sqlite_url: str) -> None:
    """`?token=SECRET` authenticates a webhook; uvicorn's access log shows `token=***` instead."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    keep = Keep()
    with _web(sqlite_url, log_level="info") as web:
        logging.getLogger(ACCESS_LOGGER).addHandler(keep)
        try:
            body = [BUILDERS["mailjet"]("open", "u0@example.com", 1, 1)]
            assert web.client.post(f"/webhooks/mailjet?token={SECRET}&x=1", json=body).status_code == 200
            assert web.client.post("/webhooks/mailjet?token=wrong-guess", json=body).status_code == 403
        finally:
            logging.getLogger(ACCESS_LOGGER).removeHandler(keep)
    posts = [line for line in lines if "POST /webhooks/mailjet" in line]
    assert len(posts) == 2, lines
    assert all("token=***" in line for line in posts) and "&x=1" in posts[0]
    assert not any(SECRET in line or "wrong-guess" in line for line in lines)
    assert redact("/w?a=1&token=s3cr%2Ft&key=k#f") == "/w?a=1&token=***&key=***#f"


def test_malformed_json_reasons_are_4xx_not_5xx(sqlite_url: str) -> None:
    """Deep nesting, a 5,000-digit number, a lone surrogate, ids beyond our columns: 400 with the reason
    or 200 (not ours), never a 500, on an authenticated webhook."""
    with _web(sqlite_url) as web:
        auth = basic()
        deep = b"[" * 100_000 + b"]" * 100_000
        r = web.client.post("/webhooks/brevo", content=deep, headers=auth)
        assert r.status_code == 400 and "nested too deep" in r.json()["error"]
        r = web.client.post("/webhooks/brevo", content=b"[" + b"1" * 5000 + b"]", headers=auth)
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        surrogate = b'[{"event": "opened", "email": "\\ud800@example.com"}]'
        r = web.client.post("/webhooks/brevo", content=surrogate, headers=auth)
        assert r.status_code == 400 and "field 'email' is not valid text" in r.json()["error"]
        event = BUILDERS["mailjet"]("open", "u0@example.com", 1, 1)
        event.update(
            CustomID="m99999999999999999999999-r1", Payload=json.dumps({"m": 10**30, "r": 1}), customcampaign=""
        )
        r = web.client.post("/webhooks/mailjet", json=[event], headers=auth)
        assert r.status_code == 200 and r.json()["untied"] == {"without any sending id of ours": 1}
