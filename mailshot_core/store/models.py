"""Tables of the mailshot database: the business truth (DESIGN §2).

Prefect keeps orchestration history; every guarantee (no duplicate, nothing lost,
counters equal to a recount) is enforced here.  Schema changes go through Alembic
(``mailshot_core/migrations``); these classes and the latest migration must agree,
which ``tests/store/test_migrations.py`` checks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Aware UTC; stored as timestamptz on PostgreSQL and as UTC text on SQLite."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Aware UTC: a time without an offset is UTC (SQLite gives stored times back naive)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SubscriberStatus(StrEnum):
    VALID = "valid"
    PENDING = "pending"  # every subscription waits for the double opt-in link: nothing is sent to it
    UNSUBSCRIBED = "unsubscribed"


class SubscriptionStatus(StrEnum):
    PENDING = "pending"
    VALID = "valid"
    REFUSED = "refused"


class MailshotStatus(StrEnum):
    DRAFT = "draft"  # created, nothing starts it until the operator says send (or schedules it)
    INIT = "init"  # scheduled, waiting for start_at
    PROCESSING = "processing"
    PAUSE = "pause"
    END = "end"
    CANCEL = "cancel"
    ARCHIVE = "archive"


class RecipientStatus(StrEnum):
    TODO = "todo"
    CLAIMED = "claimed"  # reserved for a batch by a worker; not attempted yet, safe to release
    SENDING = "sending"  # handed to the transport: its fate is unknown until the reply is recorded
    SENT = "sent"
    FAIL = "fail"
    UNKNOWN = "unknown"  # was `sending` when its worker died: maybe delivered, never resent by default
    READ = "read"
    CLIC = "clic"
    SPAM = "spam"
    BOUNCE = "bounce"
    UNSUB = "unsub"
    KILL = "kill"


class MailingList(SQLModel, table=True):
    __tablename__ = "mailing_list"

    id: int | None = Field(default=None, primary_key=True)
    identifier: str = Field(max_length=100, unique=True, index=True)
    title: str = Field(default="", max_length=255)
    description: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    # Open: visitors may subscribe themselves (the public page, the API's unforced subscribe); closed
    # lists are filled by the operator (SPIP Mailsubscribers' "open"/"close").
    open: bool = False
    # The sender of its sendings (SPIP bulkstart: the first of a sending's lists that has one).
    from_name: str = Field(default="", max_length=255)
    from_email: str = Field(default="", max_length=320)
    double_optin: bool = True  # a visitor's subscription stays pending until the emailed link is followed
    lang: str = Field(default="", max_length=16)  # the confirmation message's language when the visitor gives none
    # The confirmation message (a sandboxed template; None: the default one in the list's language).
    confirm_subject: str | None = Field(default=None, max_length=255)
    confirm_text: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow)


class Subscriber(SQLModel, table=True):
    __tablename__ = "subscriber"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True, index=True)  # normalised: see subscribers.normalise_email
    nom: str = Field(default="", max_length=255)
    lang: str = Field(default="", max_length=16)
    status: str = Field(default=SubscriberStatus.VALID, max_length=20)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    unsubscribed_at: datetime | None = None
    unsubscribe_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class Subscription(SQLModel, table=True):
    __tablename__ = "subscription"

    subscriber_id: int = Field(foreign_key="subscriber.id", primary_key=True)
    list_id: int = Field(foreign_key="mailing_list.id", primary_key=True, index=True)
    status: str = Field(default=SubscriptionStatus.VALID, max_length=20)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    confirmed_at: datetime | None = None  # when the double opt-in link was followed (None: not by a link)


class OptinEvent(SQLModel, table=True):
    """The opt-in trail of an address: who asked for what, when, from where (SPIP's optin_log).

    Kept apart from the feedback inbox: these are consent records, not delivery events.  ``list_id``
    None means every list (an unsubscription from all).  Erasing an address deletes its trail.
    """

    __tablename__ = "optin_event"
    __table_args__ = (Index("ix_optin_event_subscriber_at", "subscriber_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    subscriber_id: int = Field(foreign_key="subscriber.id")
    list_id: int | None = Field(default=None, foreign_key="mailing_list.id")
    # requested (pending, link sent), confirmed (link followed), subscribed (directly: operator, forced
    # API call, import), unsubscribed, refused (graceful: someone who left was not re-subscribed)
    action: str = Field(max_length=20)
    source: str = Field(max_length=40)  # page, api, cli, import, spip, admin, link ...
    client: str | None = Field(default=None, max_length=64)  # the visitor's address, or the API key's name
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    at: datetime = Field(default_factory=utcnow)


class ApiKey(SQLModel, table=True):
    """A Newsletter API key: only its SHA-256 is kept; ``prefix`` finds it and names it in logs."""

    __tablename__ = "api_key"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    prefix: str = Field(max_length=16, unique=True, index=True)
    secret_hash: str = Field(max_length=64)  # hex SHA-256 of the whole key
    scope: str = Field(max_length=20)  # read < subscribers < send < admin
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class IdempotentRequest(SQLModel, table=True):
    """A POST made with an ``Idempotency-Key``: a retry with the same key gets the first answer.

    The row is written before the request is handled (``status_code`` None while it runs), so two
    concurrent retries cannot both create; ``fingerprint`` (method, path, body) tells a retry from a
    different request that reuses the key.
    """

    __tablename__ = "idempotent_request"

    api_key_id: int = Field(foreign_key="api_key.id", primary_key=True)
    key: str = Field(max_length=255, primary_key=True)
    fingerprint: str = Field(max_length=64)
    status_code: int | None = None
    body: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, index=True)


class Mailshot(SQLModel, table=True):
    __tablename__ = "mailshot"

    id: int | None = Field(default=None, primary_key=True)
    subject: str = Field(sa_column=Column(Text, nullable=False))
    html: str = Field(default="", sa_column=Column(Text, nullable=False))
    text: str = Field(default="", sa_column=Column(Text, nullable=False))
    lists: str = Field(default="", sa_column=Column(Text, nullable=False))  # comma-separated identifiers
    graceful: bool = False
    from_name: str = Field(default="", max_length=255)
    from_email: str = Field(default="", max_length=320)
    transport: str = Field(default="smtp", max_length=40)
    rate_per_day: int | None = None
    rate_per_hour: int | None = None
    rate_per_minute: int | None = None
    fast: bool = False
    track: bool = False  # our own open pixel and click redirects in the HTML (tracking.py)
    status: str = Field(default=MailshotStatus.PROCESSING, max_length=20, index=True)
    status_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    materialised: bool = False

    # Counters: always equal to sendings.recount() until archive (the tests compare them after every scenario).
    total: int = 0
    current: int = 0
    sent: int = 0
    failed: int = 0
    nb_read: int = 0
    nb_clic: int = 0
    nb_spam: int = 0
    nb_bounce: int = 0
    nb_unsub: int = 0
    nb_unknown: int = 0
    nb_kill: int = 0  # never sent: cancelled, or unsubscribed before their turn (not failures)
    # Recipients with at least one open (click) that looked like a machine's (tracking.machine_reason):
    # such a hit does not make the recipient `read` (`clic`), so it is counted apart, once per
    # recipient, from the applied feedback events (tracking.machine_recount).
    nb_read_machine: int = 0
    nb_clic_machine: int = 0

    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    start_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    flow_run_id: str | None = Field(default=None, max_length=64)


class Recipient(SQLModel, table=True):
    __tablename__ = "recipient"
    __table_args__ = (
        UniqueConstraint("mailshot_id", "email", name="uq_recipient_mailshot_email"),
        # The claim query's index: next rows to send, fewest tries first (retry-at-end rule).
        Index("ix_recipient_claim", "mailshot_id", "status", "tries", "id"),
        Index("ix_recipient_claim_token", "claim_token"),
        Index("ix_recipient_sent_at", "sent_at"),  # hard rate cap: accepted in the last hour/day
    )

    id: int | None = Field(default=None, primary_key=True)
    mailshot_id: int = Field(foreign_key="mailshot.id")
    email: str = Field(max_length=320, index=True)
    subscriber_id: int | None = Field(default=None, foreign_key="subscriber.id")
    status: str = Field(default=RecipientStatus.TODO, max_length=10)
    tries: int = 0
    throttled: int = 0  # attempts the relay deferred to slow us down: not counted towards MAILSHOT_MAX_TRY
    claim_token: str | None = Field(default=None, max_length=80)
    claimed_at: datetime | None = None
    next_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    sent_at: datetime | None = None
    last_error_code: int | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    message_id: str | None = Field(default=None, max_length=255)


class SendWorker(SQLModel, table=True):
    """One row per live sending process: lets a new run tell dead claims from live ones."""

    __tablename__ = "send_worker"

    token: str = Field(primary_key=True, max_length=80)
    mailshot_id: int = Field(foreign_key="mailshot.id", index=True)
    hostname: str = Field(max_length=255)
    pid: int
    run_id: str | None = Field(default=None, max_length=64)  # the send run it works for (send_run.id)
    started_at: datetime = Field(default_factory=utcnow)
    heartbeat_at: datetime = Field(default_factory=utcnow)


class FeedbackEvent(SQLModel, table=True):
    """Inbox of delivery feedback: written first, applied after, idempotent (DESIGN §2)."""

    __tablename__ = "feedback_event"
    __table_args__ = (UniqueConstraint("source", "provider_event_id", name="uq_feedback_provider_event"),)

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=40)  # smtp, mailjet, sparkpost, imap, web ...
    provider_event_id: str | None = Field(default=None, max_length=255)
    mailshot_id: int | None = Field(default=None, foreign_key="mailshot.id", index=True)
    recipient_id: int | None = None
    email: str = Field(max_length=320, index=True)
    kind: str = Field(max_length=20)  # hard_bounce, soft_bounce, reject, spam, unsub, read, clic
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    raw: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    received_at: datetime = Field(default_factory=utcnow)
    applied_at: datetime | None = Field(default=None, index=True)


class TrackedLink(SQLModel, table=True):
    __tablename__ = "tracked_link"
    __table_args__ = (UniqueConstraint("mailshot_id", "url", name="uq_tracked_link"),)

    id: int | None = Field(default=None, primary_key=True)
    mailshot_id: int = Field(foreign_key="mailshot.id")
    url: str = Field(sa_column=Column(Text, nullable=False))


class SendPace(SQLModel, table=True):
    """GCRA state of one sending identity (a transport): the next free send slot (ratelimit.py)."""

    __tablename__ = "send_pace"

    identity: str = Field(primary_key=True, max_length=120)
    tat: datetime


class SendRun(SQLModel, table=True):
    """What one run of a sending did, whatever its end: the data team's per-run record.

    ``id`` is the Prefect flow run id (or a local one for runs without Prefect).  The ledger adds to
    the counters in the same transaction as the recipient rows; crash recovery adds the run's
    in-doubt messages; ``ended_at``/``final_status`` are set by the run itself, or by whoever finds
    it dead; ``recorded_at`` once its record artifact is written in Prefect.
    """

    __tablename__ = "send_run"

    id: str = Field(primary_key=True, max_length=64)
    mailshot_id: int = Field(foreign_key="mailshot.id", index=True)
    transport: str = Field(default="smtp", max_length=40)
    started_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None
    sent: int = 0
    failed: int = 0
    throttled: int = 0  # attempts the relay deferred ("slow down"); counted in retried unless they failed
    retried: int = 0  # attempts queued again (temporary failures and throttles)
    in_doubt: int = 0
    final_status: str | None = Field(default=None, max_length=20)
    end_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    recorded_at: datetime | None = None


# --- issue 7: archive evidence, legacy import (purge.py, legacy.py) ---------------------------------


class DeliveryOutcome(SQLModel, table=True):
    """The fate of one address in one archived sending: what purge.py keeps of a recipient row.

    Archiving deletes the recipient rows; the auto-unsubscribe rule (MAX_FAIL: the last N deliveries
    to an address all failed, each in a sending that succeeded for someone else) still needs, per
    address, the status of its recent deliveries.  A sending's own success is its kept ``sent``
    counter.  Only the most recent outcomes per address are kept (purge.OUTCOMES_KEPT).
    """

    __tablename__ = "delivery_outcome"
    __table_args__ = (Index("ix_delivery_outcome_email_at", "email", "at"),)

    email: str = Field(primary_key=True, max_length=320)
    mailshot_id: int = Field(primary_key=True, foreign_key="mailshot.id", index=True)
    subscriber_id: int | None = None
    status: str = Field(max_length=10)  # the recipient status at archive time (sent, fail, bounce, read ...)
    tries: int = 0
    at: datetime | None = None  # last attempt (or sent_at)


class LegacyImport(SQLModel, table=True):
    """Which row of a legacy SPIP database became which sending: a re-run imports nothing twice."""

    __tablename__ = "legacy_import"

    source: str = Field(primary_key=True, max_length=20)  # spip-listes, spip-lettres, mailshot
    legacy_table: str = Field(primary_key=True, max_length=64)  # without the prefix: courriers, lettres ...
    legacy_id: str = Field(primary_key=True, max_length=64)
    target_id: int
    imported_at: datetime = Field(default_factory=utcnow)


def max_length(model: type[SQLModel], column: str) -> int:
    """The size of a text column (its ``max_length``): what input must be checked against before it is
    written, on SQLite too (which stores any length, while PostgreSQL refuses the row and the whole
    transaction with StringDataRightTruncation)."""
    length = model.__table__.c[column].type.length  # type: ignore[attr-defined]
    assert isinstance(length, int), f"{model.__name__}.{column} has no length"
    return length
