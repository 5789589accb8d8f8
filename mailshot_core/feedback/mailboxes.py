"""Bounce mailboxes (IMAP over TLS, or a Maildir) -> feedback events (the ``ingest-bounces`` flow).

The mailbox is read, every message parsed (bounces.py) and matched to a recipient, the resulting
events written to the feedback inbox in one transaction (inbox.store: deduplicated, so a message
read twice after a crash is one event), and only *then* are the processed messages moved to the
processed folder.  Nothing is ever deleted: a message that could not be processed (not a bounce,
no failure found, a forged VERP address, unknown recipient) stays where it is and is reported with
the reason, for a human to look at.

Matching (who bounced): the signed VERP return path names the recipient.  A VERP-looking address
with a bad signature is never trusted, even when the report names a real subscriber: it changes
nothing.  Only when VERP is off (no MAILSHOT_BOUNCE_ADDRESS) is the Message-ID of the returned copy
of our message (one per recipient, message.message_id) matched, together with the failed address:
those ids are predictable, so with VERP on, a bounce without a valid signature is never acted on.
"""

from __future__ import annotations

import imaplib
import json
import logging
import mailbox
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from mailshot_core.config import Settings
from mailshot_core.errors import MailshotError
from mailshot_core.feedback import bounces, inbox
from mailshot_core.feedback.effects import Effect
from mailshot_core.feedback.esp_events import IncomingEvent, digest
from mailshot_core.store.models import Recipient

log = logging.getLogger("mailshot.bounces")
SOURCE = "bounce-mail"
_recipients = Recipient.__table__  # type: ignore[attr-defined]


class BounceSourceError(MailshotError):
    """The bounce mailbox cannot be reached or read; the message says which and why."""


class Mailbox(Protocol):
    """A folder of messages: list, read, and move what was processed."""

    def keys(self) -> list[str]: ...
    def read(self, key: str) -> bytes: ...
    def move_processed(self, keys: Sequence[str]) -> None: ...


# --- Maildir ----------------------------------------------------------------------------------------


class MaildirBox:
    """A Maildir; processed messages go to the Maildir++ subfolder ``.<processed>``."""

    def __init__(self, path: str | Path, processed: str) -> None:
        root = Path(path)
        if not all((root / d).is_dir() for d in ("cur", "new", "tmp")):
            raise BounceSourceError(f"MAILSHOT_BOUNCE_MAILDIR={root}: not a Maildir (needs cur/, new/ and tmp/)")
        self.box = mailbox.Maildir(root, factory=None, create=False)
        self.processed = processed

    def keys(self) -> list[str]:
        return sorted(self.box.keys())

    def read(self, key: str) -> bytes:
        return self.box.get_bytes(key)

    def move_processed(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        folder = (
            self.box.get_folder(self.processed)
            if self.processed in self.box.list_folders()
            else self.box.add_folder(self.processed)
        )
        for key in keys:
            folder.add(self.box.get_message(key))  # copy first: a crash here leaves a duplicate, never a loss
            self.box.discard(key)


# --- IMAP -------------------------------------------------------------------------------------------


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ImapBox:
    """One folder of an IMAP mailbox over implicit TLS (RFC 8314), certificate verified."""

    def __init__(self, settings: Settings, timeout: float = 30.0) -> None:
        host, port, user = settings.bounce_imap_host, settings.bounce_imap_port, settings.bounce_imap_user
        where = f"IMAP {host}:{port}"
        if not host or not user or settings.bounce_imap_password is None:
            raise BounceSourceError(
                "MAILSHOT_BOUNCE_IMAP_HOST, MAILSHOT_BOUNCE_IMAP_USER and MAILSHOT_BOUNCE_IMAP_PASSWORD must all be set"
            )
        self.folder, self.processed = settings.bounce_imap_folder, settings.bounce_processed_folder
        try:
            context = ssl.create_default_context(cafile=settings.bounce_imap_ca_file)
            self.imap = imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=timeout)
        except (OSError, ssl.SSLError) as exc:
            raise BounceSourceError(f"{where}: cannot connect over TLS: {exc}") from None
        try:
            self.imap.login(user, settings.bounce_imap_password.get_secret_value())
        except imaplib.IMAP4.error as exc:
            self.close()
            raise BounceSourceError(f"{where}: login as {user!r} refused: {exc}") from None
        # imaplib keeps the capabilities announced before login; servers announce more after (MOVE...).
        typ, data = self.imap.capability()
        self.caps = set(data[0].decode().upper().split()) if typ == "OK" and isinstance(data[0], bytes) else set()
        typ, data = self.imap.select(_quote(self.folder))
        if typ != "OK":
            self.close()
            raise BounceSourceError(f"{where}: cannot open folder {self.folder!r}: {data}")

    def _uid(self, *args: str) -> list[object]:
        typ, data = self.imap.uid(*args)
        if typ != "OK":
            raise BounceSourceError(f"IMAP UID {args[0]} failed: {data}")
        return list(data)

    def keys(self) -> list[str]:
        found = self._uid("SEARCH", "UNDELETED")
        first = found[0] if found else b""
        return [uid.decode() for uid in first.split()] if isinstance(first, bytes) else []

    def read(self, key: str) -> bytes:
        for item in self._uid("FETCH", key, "(BODY.PEEK[])"):  # PEEK: leave \Seen alone
            if isinstance(item, tuple) and isinstance(item[1], bytes):
                return item[1]
        raise BounceSourceError(f"IMAP message UID {key} vanished while being read")

    def move_processed(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        typ, data = self.imap.create(_quote(self.processed))
        if typ != "OK" and b"exist" not in b" ".join(d for d in data if isinstance(d, bytes)).lower():
            raise BounceSourceError(f"IMAP: cannot create folder {self.processed!r}: {data}")
        uids = ",".join(keys)
        if "MOVE" in self.caps:  # RFC 6851: atomic
            self._uid("MOVE", uids, _quote(self.processed))
            return
        # Copy, then flag and expunge only these UIDs (UIDPLUS), never someone else's deleted mail.
        self._uid("COPY", uids, _quote(self.processed))
        self._uid("STORE", uids, "+FLAGS.SILENT", r"(\Deleted)")
        if "UIDPLUS" in self.caps:
            self._uid("EXPUNGE", uids)

    def close(self) -> None:
        with suppress(imaplib.IMAP4.error, OSError):
            self.imap.logout()


@contextmanager
def open_source(settings: Settings) -> Iterator[Mailbox]:
    """The configured bounce mailbox: IMAP when MAILSHOT_BOUNCE_IMAP_HOST is set, else the Maildir."""
    if settings.bounce_imap_host:
        box = ImapBox(settings)
        try:
            yield box
        finally:
            box.close()
    elif settings.bounce_maildir:
        yield MaildirBox(settings.bounce_maildir, settings.bounce_processed_folder)
    else:
        raise BounceSourceError(
            "no bounce mailbox: set MAILSHOT_BOUNCE_IMAP_HOST (and user, password) or MAILSHOT_BOUNCE_MAILDIR"
        )


# --- matching and ingestion --------------------------------------------------------------------------


@dataclass
class IngestReport:
    seen: int = 0
    processed: int = 0  # moved to the processed folder
    events: int = 0  # feedback events stored (new ones)
    by_format: dict[str, int] = field(default_factory=dict)
    left: list[tuple[str, str]] = field(default_factory=list)  # (message key, why it stays)


def _norm_id(value: str | None) -> str:
    return (value or "").strip().strip("<>").strip().lower()


def _detail(report: bounces.BounceReport, failure: bounces.Failure | None) -> str:
    if failure is None:
        return f"{report.format} report"
    return " ".join(x for x in (report.format, failure.status or "", failure.email, failure.diagnostic) if x)[:1000]


def events_for(
    conn: Connection, report: bounces.BounceReport, raw: bytes, *, trust_message_id: bool = False
) -> list[IncomingEvent] | str:
    """The events a parsed bounce stands for, or why it cannot be processed.

    ``trust_message_id``: match by the quoted Message-ID when there is no VERP (VERP off only).
    """
    ident = report.message_id or digest(raw.decode("utf-8", "replace"))
    if report.verp is None and report.forged_verp:
        return f"VERP address {report.forged_verp} has no valid signature (forged or not ours): ignored"
    if not report.failures:
        return "no delivery failure found in this message (not a bounce, or a format not understood)"
    if all(f.effect is Effect.IGNORE for f in report.failures):
        return ""  # a delay warning or a not-spam report: understood, nothing to record
    cols = (_recipients.c.id, _recipients.c.mailshot_id, _recipients.c.email, _recipients.c.message_id)
    if report.verp is not None:
        row = conn.execute(select(*cols).where(_recipients.c.id == report.verp.recipient_id)).first()
        if row is None or row.mailshot_id != report.verp.mailshot_id:
            return f"VERP names recipient {report.verp.recipient_id} of sending {report.verp.mailshot_id}: no such recipient"
        effect = report.effect
        failure = next((f for f in report.failures if f.effect is effect), None)
        matched = [(row, effect, failure)]
    elif not trust_message_id:
        return "no signed VERP address (with MAILSHOT_BOUNCE_ADDRESS set, only VERP bounces are trusted)"
    else:
        wanted = _norm_id(report.original_message_id)
        if not wanted:
            return "no VERP address and no copy of our message: cannot tell which sending it is about"
        rows = conn.execute(select(*cols).where(_recipients.c.message_id.in_([f"<{wanted}>", wanted]))).all()
        by_email = {f.email: f for f in report.failures if f.effect is not Effect.IGNORE}
        matched = [(r, by_email[r.email].effect, by_email[r.email]) for r in rows if r.email in by_email]
        if not matched:
            return f"Message-ID {report.original_message_id} and the failed address match no recipient"
    return [
        IncomingEvent(
            source=SOURCE,
            event_id=f"{ident}:{row.id}",
            kind=effect.value,
            email=row.email,
            mailshot_id=row.mailshot_id,
            recipient_id=row.id,
            occurred_at=None,
            detail=_detail(report, failure),
            raw=json.dumps(
                {
                    "bounce_message_id": report.message_id,
                    "format": report.format,
                    "reported_address": failure.email if failure else None,
                    "status": failure.status if failure else None,
                    "diagnostic": failure.diagnostic if failure else None,
                },
                sort_keys=True,
            ),
        )
        for row, effect, failure in matched
    ]


def ingest(
    engine: Engine, key: bytes, box: Mailbox, *, trust_message_id: bool = False, limit: int = 1000
) -> IngestReport:
    """Read up to ``limit`` messages, store their events, then move the processed ones.

    ``trust_message_id``: see :func:`events_for` (the flow passes "VERP is off").
    """
    result = IngestReport()
    processed: list[str] = []
    events: list[IncomingEvent] = []
    with engine.connect() as conn:
        for msg_key in box.keys()[:limit]:
            result.seen += 1
            raw = box.read(msg_key)
            try:
                report = bounces.parse(raw, key)
            except Exception as exc:  # one broken message must not stop the mailbox
                result.left.append((msg_key, f"cannot be parsed: {exc!r}"))
                continue
            result.by_format[report.format] = result.by_format.get(report.format, 0) + 1
            found = events_for(conn, report, raw, trust_message_id=trust_message_id)
            if isinstance(found, str) and found:
                result.left.append((msg_key, found))
                continue
            events += found if isinstance(found, list) else []
            processed.append(msg_key)
    if events:
        result.events = inbox.store(engine, events).stored
    box.move_processed(processed)  # only after the events are committed
    result.processed = len(processed)
    for msg_key, why in result.left:
        log.warning("bounce %s left in the mailbox: %s", msg_key, why)
    return result


def ingest_configured(settings: Settings) -> IngestReport:
    """One pass over the configured mailbox (the flow and `mailshot ingest-bounces`)."""
    from mailshot_core.store.db import get_engine

    with open_source(settings) as box:
        return ingest(
            get_engine(settings.database_url),
            settings.secret_key.get_secret_value().encode(),
            box,
            trust_message_id=settings.bounce_address is None,  # VERP off: the quoted Message-ID is all there is
        )
