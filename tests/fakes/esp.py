"""Fake ESP APIs on loopback: the documented send endpoints of Mailjet (v3.1), SparkPost
(transmissions), Mandrill (messages/send), Brevo (smtp/email) and Amazon SES (v2 SendEmail, SigV4).

Each fake checks credentials and the request like the real API would (required fields, limits),
records the calls, and "delivers": it applies the provider's own substitution (SparkPost/Mandrill
triple-brace placeholders, Brevo versions) and keeps what each recipient would receive, with the
metadata the provider would echo in its events.  Faults are injected per call (``fail_next``) and
per recipient (``reject``).
"""

from __future__ import annotations

import base64
import email
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from email.header import decode_header, make_header
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mailshot_core.transports.ses import sigv4_headers

Reply = tuple[int, dict[str, str], Any]
_PLACEHOLDER = re.compile(r"\{\{\{\s*(\w+)\s*\}\}\}")


class Invalid(Exception):
    """The request breaks the provider's documented rules: 400 with the reason."""


@dataclass
class Delivered:
    """What one recipient would receive, and what the provider would echo back in events."""

    email: str
    subject: str
    html: str
    text: str
    headers: dict[str, str]
    meta: dict[str, Any]
    provider_id: str


@dataclass
class FakeEsp:
    provider: str
    key: str = "test-key"
    secret: str = "test-secret"
    calls: list[Any] = field(default_factory=list)
    delivered: list[Delivered] = field(default_factory=list)
    reject: set[str] = field(default_factory=set)
    faults: list[Reply] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        self.faults.append((status, headers or {}, body if body is not None else {"error": "injected"}))

    def _next_id(self) -> str:
        return f"{self.provider}-{next(self._ids)}"

    # --- dispatch ---------------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        with self._lock:
            if self.faults:
                return self.faults.pop(0)
        route = {
            ("mailjet", "/v3.1/send"): self._mailjet,
            ("sparkpost", "/api/v1/transmissions"): self._sparkpost,
            ("mandrill", "/api/1.0/messages/send"): self._mandrill,
            ("brevo", "/v3/smtp/email"): self._brevo,
            ("ses", "/v2/email/outbound-emails"): self._ses,
        }.get((self.provider, path))
        if method != "POST" or route is None:
            return 404, {}, {"error": f"no {method} {path} on the fake {self.provider}"}
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            return 400, {}, {"error": "body is not JSON"}
        try:
            reply = route(headers, data, body)
        except Invalid as exc:
            return 400, {}, {"error": str(exc)}
        with self._lock:
            self.calls.append(data)
        return reply

    def _keep(self, d: Delivered) -> None:
        with self._lock:
            self.delivered.append(d)

    # --- Mailjet ----------------------------------------------------------------------------------

    def _mailjet(self, headers: dict[str, str], data: Any, body: bytes) -> Reply:
        expected = "Basic " + base64.b64encode(f"{self.key}:{self.secret}".encode()).decode()
        if headers.get("authorization") != expected:
            return 401, {}, {"ErrorMessage": "API key authentication/authorization failure", "StatusCode": 401}
        messages = data.get("Messages")
        if not isinstance(messages, list) or not 1 <= len(messages) <= 50:
            raise Invalid("Messages must hold 1 to 50 messages")
        items, failed = [], False
        for i, m in enumerate(messages):
            for name in ("From", "To", "Subject"):
                if not m.get(name):
                    raise Invalid(f"Messages[{i}].{name} is required")
            if not (m.get("TextPart") or m.get("HTMLPart")):
                raise Invalid(f"Messages[{i}]: TextPart or HTMLPart is required")
            if not isinstance(m.get("EventPayload", ""), str) or len(m.get("CustomID", "")) > 64:
                raise Invalid(f"Messages[{i}]: EventPayload must be a string, CustomID at most 64 characters")
            to = m["To"][0]["Email"]
            if to in self.reject:
                failed = True
                items.append(
                    {
                        "Status": "error",
                        "Errors": [
                            {
                                "ErrorIdentifier": "x",
                                "ErrorCode": "mj-0013",
                                "StatusCode": 400,
                                "ErrorMessage": f'"{to}" is an invalid email address.',
                                "ErrorRelatedTo": ["To[0].Email"],
                            }
                        ],
                    }
                )
                continue
            mid = str(next(self._ids) + 10**17)  # Mailjet ids are 64-bit integers
            meta = json.loads(m["EventPayload"])
            self._keep(
                Delivered(
                    to, m["Subject"], m.get("HTMLPart", ""), m.get("TextPart", ""), m.get("Headers", {}), meta, mid
                )
            )
            items.append(
                {"Status": "success", "CustomID": m.get("CustomID", ""), "To": [{"Email": to, "MessageID": int(mid)}]}
            )
        return (400 if failed else 200), {}, {"Messages": items}

    # --- SparkPost --------------------------------------------------------------------------------

    def _sparkpost(self, headers: dict[str, str], data: Any, body: bytes) -> Reply:
        if headers.get("authorization") != self.key:
            return 401, {}, {"errors": [{"message": "Unauthorized."}]}
        content, recipients = data.get("content") or {}, data.get("recipients") or []
        if not content.get("from") or not content.get("subject") or not (content.get("html") or content.get("text")):
            raise Invalid("content.from, content.subject and content.html or content.text are required")
        if not recipients:
            raise Invalid("recipients: at least one is required")
        top = data.get("substitution_data") or {}
        for i, r in enumerate(recipients):
            sub = {**top, **(r.get("substitution_data") or {})}
            bad = set(sub) & {"address", "email", "email_id", "env_from", "return_path"}
            if bad or not r.get("address", {}).get("email"):
                raise Invalid(f"recipients[{i}]: address.email required, reserved substitution keys {bad}")

            def fill(template: str, sub: dict[str, Any] = sub) -> str:
                return _PLACEHOLDER.sub(lambda m: str(sub.get(m[1], "")), template)

            meta = {**(data.get("metadata") or {}), **(r.get("metadata") or {})}  # = rcpt_meta in events
            self._keep(
                Delivered(
                    r["address"]["email"],
                    fill(content["subject"]),
                    fill(content.get("html", "")),
                    fill(content.get("text", "")),
                    {k: fill(v) for k, v in (content.get("headers") or {}).items()},
                    meta,
                    self._next_id(),
                )
            )
        results = {"total_rejected_recipients": 0, "total_accepted_recipients": len(recipients), "id": self._next_id()}
        return 200, {}, {"results": results}

    # --- Mandrill ---------------------------------------------------------------------------------

    def _mandrill(self, headers: dict[str, str], data: Any, body: bytes) -> Reply:
        if data.get("key") != self.key:
            return 500, {}, {"status": "error", "code": -1, "name": "Invalid_Key", "message": "Invalid API key"}
        m = data.get("message") or {}
        to = m.get("to") or []
        if not to or not m.get("from_email"):
            return (
                500,
                {},
                {"status": "error", "code": -2, "name": "ValidationError", "message": "to and from_email required"},
            )
        if len(to) > 1 and m.get("preserve_recipients") is not False:
            raise Invalid("bulk message without preserve_recipients=false: every recipient would see the others")
        merge = {v["rcpt"]: {x["name"]: x["content"] for x in v["vars"]} for v in m.get("merge_vars") or []}
        rmeta = {v["rcpt"]: v["values"] for v in m.get("recipient_metadata") or []}
        results = []
        for r in to:
            addr = r["email"]
            if addr in self.reject:
                results.append(
                    {"email": addr, "status": "rejected", "reject_reason": "hard-bounce", "_id": self._next_id()}
                )
                continue
            sub = merge.get(addr, {})

            def fill(template: str, sub: dict[str, Any] = sub) -> str:
                return _PLACEHOLDER.sub(lambda mt: str(sub.get(mt[1], "")), template)

            pid = self._next_id()
            meta = {**(m.get("metadata") or {}), **rmeta.get(addr, {})}  # = msg.metadata in events
            self._keep(
                Delivered(
                    addr,
                    fill(m["subject"]),
                    fill(m.get("html", "")),
                    fill(m.get("text", "")),
                    dict(m.get("headers") or {}),
                    meta,
                    pid,
                )
            )
            results.append(
                {"email": addr, "status": "queued" if len(to) > 10 else "sent", "reject_reason": None, "_id": pid}
            )
        return 200, {}, results

    # --- Brevo ------------------------------------------------------------------------------------

    def _brevo(self, headers: dict[str, str], data: Any, body: bytes) -> Reply:
        if headers.get("api-key") != self.key:
            return 401, {}, {"code": "unauthorized", "message": "Key not found"}
        versions = data.get("messageVersions") or []
        if not data.get("sender", {}).get("email") or not 1 <= len(versions) <= 1000:
            raise Invalid("sender.email and 1 to 1000 messageVersions are required")
        ids = []
        for i, v in enumerate(versions):
            if not v.get("to") or len(v["to"]) > 99:
                raise Invalid(f"messageVersions[{i}].to: 1 to 99 recipients")
            subject, html = v.get("subject") or data.get("subject"), v.get("htmlContent") or data.get("htmlContent")
            if not subject or not (html or v.get("textContent") or data.get("textContent")):
                raise Invalid(f"messageVersions[{i}]: subject and content are required")
            pid = f"<{self._next_id()}@smtp-relay.mailin.fr>"
            ids.append(pid)
            hdrs = dict(data.get("headers") or {})
            meta = {"X-Mailin-custom": hdrs.get("X-Mailin-custom"), "tags": data.get("tags"), "message-id": pid}
            self._keep(
                Delivered(
                    v["to"][0]["email"],
                    subject,
                    html or "",
                    v.get("textContent") or data.get("textContent") or "",
                    hdrs,
                    meta,
                    pid,
                )
            )
        return 201, {}, {"messageIds": ids}

    # --- Amazon SES -------------------------------------------------------------------------------

    def _ses(self, headers: dict[str, str], data: Any, body: bytes) -> Reply:
        auth = headers.get("authorization", "")
        match = re.match(
            r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([\w-]+)/ses/aws4_request, SignedHeaders=([\w;-]+), Signature=(\w+)$",
            auth,
        )
        if not match or match[1] != self.key:
            return (
                403,
                {"x-amzn-ErrorType": "UnrecognizedClientException"},
                {"message": "The security token included in the request is invalid."},
            )
        signed = {n: headers[n] for n in match[4].split(";") if n not in ("host", "x-amz-date")}
        when = datetime.strptime(headers.get("x-amz-date", ""), "%Y%m%dT%H%M%SZ").replace(
            tzinfo=__import__("datetime").UTC
        )
        expected = sigv4_headers(
            "POST",
            f"http://{headers['host']}/v2/email/outbound-emails",
            body,
            signed,
            access_key=self.key,
            secret_key=self.secret,
            region=match[3],
            service="ses",
            now=when,
        )["Authorization"]
        if expected != auth:
            return (
                403,
                {"x-amzn-ErrorType": "SignatureDoesNotMatchException"},
                {"message": "The request signature we calculated does not match the signature you provided."},
            )
        raw = base64.b64decode(data["Content"]["Raw"]["Data"])
        to = data["Destination"]["ToAddresses"][0]
        tags = {t["Name"]: t["Value"] for t in data.get("EmailTags") or []}
        if any(not re.fullmatch(r"[\w-]{1,256}", f"{k}{v}") for k, v in tags.items()):
            raise Invalid("EmailTags: names and values are ASCII letters, digits, _ and - only")
        if to in self.reject:
            return 400, {"x-amzn-ErrorType": "MessageRejected"}, {"message": "Email address is on the suppression list"}
        # compat32: the default policy's parser costs milliseconds, which this in-process fake would
        # steal from the sender under test (one GIL).
        msg = email.message_from_bytes(raw)
        bodies = {
            part.get_content_type(): part.get_payload(decode=True).decode()
            for part in msg.walk()
            if not part.is_multipart()
        }
        subject = str(make_header(decode_header(msg["Subject"])))
        pid = self._next_id()
        self._keep(
            Delivered(
                to,
                subject,
                bodies.get("text/html", ""),
                bodies.get("text/plain", ""),
                {k: " ".join(str(v).split()) for k, v in msg.items()},
                {k: [v] for k, v in tags.items()},  # = mail.tags in SES events
                pid,
            )
        )
        return 200, {}, {"MessageId": pid}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs
    # One segment per reply: headers and body written separately met the client's delayed ACK
    # (Nagle), ~40 ms per request.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fake: FakeEsp = self.server.fake  # type: ignore[attr-defined]
        status, headers, payload = fake.handle(
            "POST", self.path.split("?")[0], {k.lower(): v for k, v in self.headers.items()}, body
        )
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet tests
        pass


class FakeEspServer:
    """A FakeEsp served over HTTP on a free loopback port, in a thread."""

    def __init__(self, provider: str) -> None:
        self.fake = FakeEsp(provider)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.fake = self.fake  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeEsp:
        self.thread.start()
        return self.fake

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def settings_for(provider: str, url: str, fake: FakeEsp) -> dict[str, Any]:
    """MAILSHOT_* overrides pointing a transport at its fake."""
    return {
        "mailjet": {"mailjet_url": url, "mailjet_api_key": fake.key, "mailjet_api_secret": fake.secret},
        "sparkpost": {"sparkpost_url": url, "sparkpost_api_key": fake.key},
        "mandrill": {"mandrill_url": url, "mandrill_api_key": fake.key},
        "brevo": {"brevo_url": url, "brevo_api_key": fake.key},
        "ses": {
            "ses_url": url,
            "ses_access_key_id": fake.key,
            "ses_secret_access_key": fake.secret,
            "ses_region": "eu-west-1",
        },
    }[provider]
