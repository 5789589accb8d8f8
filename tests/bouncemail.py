"""Generated bounce mail for the tests: RFC 3464 DSNs and RFC 5965 feedback reports, as MTAs write them."""

from __future__ import annotations

import itertools

_ids = itertools.count(1)


def _headers_of(original: bytes) -> str:
    text = original.decode("ascii", "replace").replace("\r\n", "\n")
    return text.split("\n\n", 1)[0]


def dsn(
    to: str,
    recipient: str,
    status: str,
    diagnostic: str,
    *,
    action: str = "failed",
    original: bytes | None = None,
) -> bytes:
    """A Postfix-style multipart/report DSN addressed to ``to`` (the envelope sender we used)."""
    quoted = f"--B\nContent-Type: text/rfc822-headers\n\n{_headers_of(original)}\n\n" if original is not None else ""
    text = f"""\
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
To: {to}
X-Original-To: {to}
Subject: Undelivered Mail Returned to Sender
Message-ID: <bounce.{next(_ids)}@mx.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

This is the mail system at host mx.example.net.  I'm sorry to have to inform you ...

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; {recipient}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.example.com
Diagnostic-Code: smtp; {diagnostic}

{quoted}--B--
"""
    return text.encode()


def arf(to: str, complainer: str, original: bytes, feedback_type: str = "abuse") -> bytes:
    """An RFC 5965 feedback report quoting our message (as a feedback loop sends it)."""
    body = original.decode("ascii", "replace").replace("\r\n", "\n")
    text = f"""\
From: fbl@isp.example.com
To: {to}
Subject: FW: complaint
Message-ID: <arf.{next(_ids)}@isp.example.com>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="B"

--B
Content-Type: text/plain

This is an email abuse report.

--B
Content-Type: message/feedback-report

Feedback-Type: {feedback_type}
User-Agent: FBL/1.0
Version: 1
Original-Rcpt-To: {complainer}

--B
Content-Type: message/rfc822

{body}
--B--
"""
    return text.encode()
