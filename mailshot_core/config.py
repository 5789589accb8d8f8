"""Settings: every ``MAILSHOT_*`` variable, read once at the edge (CLI, flow, web).

The domain never reads ``os.environ``; it receives a :class:`Settings` (or a small
piece of it).  Defaults give a working local setup: an SQLite file in the working
directory and a relay on localhost:1025 (what ``make demo`` starts).
"""

from __future__ import annotations

import ipaddress
import os
import re
from enum import StrEnum
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET = "change-me-mailshot-secret"
# "scheme://user:password@" -> the password part, to mask it in error messages.
# Greedy up to the last "@": a password may itself contain "@"; masking too much is harmless.
_URL_PASSWORD = re.compile(r"^([^:/@]*:?/*[^:/@]*:).*@")
_PREFECT_CLOUD_API = re.compile(
    r"^https://api\.prefect\.cloud/api/accounts/(?P<account>[^/]+)/workspaces/(?P<workspace>[^/]+)$"
)
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
# HMAC keys shorter than the hash's 32-byte block of entropy are guessable offline from one signed link.
MIN_SECRET_BYTES = 32
# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens, 63 characters at most
# each, 253 in all.  What goes into List-Id, Message-ID and the addresses' right-hand side.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# The left-hand side of the addresses we put in headers and envelopes: an RFC 5322 dot-atom of
# printable ASCII (no quoted strings: nothing of ours needs them, and they are where injections hide).
_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
# Column sizes of store/models.py that a setting is copied into (mailshot.from_name).
MAX_NAME_LENGTH = 255
SUPPORTED_DATABASES = ("sqlite", "postgresql")


class SmtpTls(StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    TLS = "tls"


class ConfigError(Exception):
    """Settings are invalid: one line per problem, each naming the variable and what is wrong.

    ``str()`` joins them on one line; the CLI prints each as its own ``error:`` line.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


def is_hostname(value: str) -> bool:
    """An RFC 1123 host name (no trailing dot, ASCII: internationalised names go in their xn-- form)."""
    return 0 < len(value) <= 253 and all(_LABEL.match(label) for label in value.split("."))


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def check_domain(value: str) -> str:
    """A domain name that can go into a header (List-Id, Message-ID, an address); ValueError otherwise."""
    if not is_hostname(value):
        raise ValueError("not a domain name (ASCII letters, digits, '-' between dots, e.g. news.example.org)")
    return value.lower()


def check_address(value: str) -> str:
    """An address we write into headers and envelopes: ``local@domain``, no spaces, quotes, brackets or
    line breaks (header injection), the domain a host name.  ValueError says what is wrong."""
    local, at, domain = value.rpartition("@")
    if not at or not local:
        raise ValueError("not an email address (expected local@domain)")
    if len(local) > 64 or not _LOCAL_PART.match(local):
        raise ValueError("not an email address: its local part (before '@') has characters an address cannot have")
    if not is_hostname(domain):
        raise ValueError("not an email address: the part after '@' is not a domain name")
    return value


def check_url(value: str, *, query: bool = False) -> str:
    """An http(s) URL with a valid host and port, without spaces, control characters or credentials;
    without a query or fragment unless ``query`` (the value is a base that paths are appended to)."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain spaces or control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    host = parts.hostname or ""
    if not (is_hostname(host) or is_ip(host)):
        raise ValueError("has no valid host name after http(s)://")
    try:
        parts.port  # noqa: B018 (urlsplit checks the port only when asked)
    except ValueError:
        raise ValueError("has an invalid port") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain a user or password")
    if not query and (parts.query or parts.fragment or "?" in value or "#" in value):
        raise ValueError("must not have a query (?...) or fragment (#...): paths are appended to it")
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MAILSHOT_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    database_url: str = Field("sqlite:///mailshot.db", description="SQLAlchemy URL of the mailshot database.")

    smtp_host: str = Field("localhost", description="SMTP relay host.")
    smtp_port: int = Field(1025, ge=1, le=65535, description="SMTP relay port.")
    smtp_user: str | None = Field(None, description="SMTP AUTH user (no AUTH when empty).")
    smtp_password: SecretStr | None = Field(None, description="SMTP AUTH password.")
    smtp_tls: SmtpTls = Field(SmtpTls.NONE, description="none, starttls or tls (implicit TLS, port 465).")
    smtp_timeout: float = Field(30.0, gt=0, description="Seconds before an SMTP command times out.")
    smtp_connections: int = Field(4, ge=1, le=64, description="Parallel SMTP connections per sending process.")
    smtp_validate_certs: bool = Field(True, description="Verify the relay's TLS certificate.")
    max_connections: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Connections to the transport across all runs and machines "
        "(a Prefect global concurrency limit; empty: no cross-run cap).",
    )
    transport: str = Field(
        "smtp", description="Default transport for new sendings: smtp, mailjet, sparkpost, mandrill, brevo or ses."
    )

    # ESP transports (transports/*.py) and their webhooks (web/webhooks.py).  *_url settings point the
    # API clients elsewhere (EU endpoints, or the fake servers of the tests).
    esp_connections: int = Field(4, ge=1, le=32, description="Parallel HTTP connections per batch to an ESP API.")
    esp_timeout: float = Field(60.0, gt=0, description="Seconds before an ESP API call times out.")
    mailjet_api_key: str | None = Field(None, description="Mailjet API key (Send API v3.1, Basic auth user).")
    mailjet_api_secret: SecretStr | None = Field(None, description="Mailjet API secret key.")
    mailjet_url: str = Field("https://api.mailjet.com", description="Mailjet API base URL.")
    mailjet_webhook_secret: SecretStr | None = Field(
        None, description="Password (Basic auth) or ?token= expected on POST /webhooks/mailjet."
    )
    sparkpost_api_key: SecretStr | None = Field(None, description="SparkPost API key.")
    sparkpost_url: str = Field(
        "https://api.sparkpost.com", description="SparkPost API base URL (EU: https://api.eu.sparkpost.com)."
    )
    sparkpost_webhook_secret: SecretStr | None = Field(
        None, description="Password (Basic auth) or ?token= expected on POST /webhooks/sparkpost."
    )
    mandrill_api_key: SecretStr | None = Field(None, description="Mandrill (Mailchimp Transactional) API key.")
    mandrill_url: str = Field("https://mandrillapp.com", description="Mandrill API base URL.")
    mandrill_webhook_key: SecretStr | None = Field(
        None, description="Mandrill webhook key: verifies X-Mandrill-Signature on POST /webhooks/mandrill."
    )
    mandrill_webhook_url: str | None = Field(
        None, description="URL registered at Mandrill, signed as is (default MAILSHOT_BASE_URL/webhooks/mandrill)."
    )
    brevo_api_key: SecretStr | None = Field(None, description="Brevo API key (api-key header).")
    brevo_url: str = Field("https://api.brevo.com", description="Brevo API base URL.")
    brevo_webhook_secret: SecretStr | None = Field(
        None, description="Password (Basic auth), bearer token or ?token= expected on POST /webhooks/brevo."
    )
    ses_region: str = Field("eu-west-1", description="Amazon SES region.")
    ses_access_key_id: str | None = Field(None, description="AWS access key id for SES (SigV4).")
    ses_secret_access_key: SecretStr | None = Field(None, description="AWS secret access key for SES.")
    ses_url: str | None = Field(None, description="SES API base URL (default https://email.REGION.amazonaws.com).")
    ses_configuration_set: str | None = Field(
        None, description="SES configuration set whose event destination is the SNS topic of the webhook."
    )
    ses_topic_arns: str = Field(
        "", description="Comma-separated SNS topic ARNs accepted on POST /webhooks/ses (empty: refuse all)."
    )

    from_email: str = Field("newsletter@example.org", description="Default sender address.")
    from_name: str = Field("Newsletter", description="Default sender display name.")
    reply_to: str | None = Field(None, description="Optional Reply-To address.")
    base_url: str = Field(
        "http://localhost:8000", description="Public URL of `mailshot web` (unsubscribe and tracking links)."
    )
    secret_key: SecretStr = Field(
        SecretStr(DEFAULT_SECRET),
        description="Key signing unsubscribe tokens and VERP addresses. Set your own in production.",
    )
    tracking: Literal["smtp", "all", "off"] = Field(
        "smtp",
        description="Open pixel and click redirects served by `mailshot web`, decided when a sending is created: "
        "`smtp` for sendings through the SMTP relay (ESPs track themselves), `all`, or `off`.",
    )
    tracking_machine_seconds: float = Field(
        10.0,
        ge=0,
        description="An open or click this soon after the message left is counted as a machine's "
        "(mail proxies, link scanners), not a person's.",
    )
    unsubscribe_mailto: str | None = Field(None, description="Address added as a mailto: List-Unsubscribe target.")
    bounce_address: str | None = Field(
        None,
        description="Envelope sender base for VERP (bounces+m1.r2.sig@domain); envelope = From when empty.",
    )
    list_id_domain: str | None = Field(
        None, description="Domain of List-Id headers (defaults to the From address's domain)."
    )

    max_try: int = Field(5, ge=1, le=100, description="Attempts before a recipient becomes `fail`.")
    retry_delay: float = Field(
        60.0, ge=0, description="Seconds before a temporarily failed recipient is retried (doubles per try)."
    )
    rate_per_day: int | None = Field(
        None, gt=0, description="Default pace: messages per day, spread evenly (empty: as fast as the relay allows)."
    )
    rate_per_hour: int | None = Field(None, gt=0, description="Default cap: messages per hour.")
    rate_per_minute: int | None = Field(None, gt=0, description="Default cap: messages per minute.")
    dask_address: str | None = Field(
        None,
        description="Fast mode on Dask (extra `mailshot[dask]`): a scheduler address (tcp://host:8786), "
        "or `local` for a local cluster of one process per core; empty: a local process pool.",
    )
    max_fail: int = Field(
        3,
        ge=1,
        le=100,
        description="An address whose last N sendings all failed or bounced (each sending having "
        "succeeded for someone else) is unsubscribed from all lists.",
    )
    max_fail_ratio: int = Field(
        50,
        ge=1,
        le=100,
        description="Circuit breaker: a sending whose failures exceed this percentage of at least 100 "
        "attempts is paused.",
    )
    bounce_maildir: str | None = Field(None, description="Maildir collecting bounces, read by ingest-bounces.")
    bounce_imap_host: str | None = Field(
        None, description="IMAP server of the bounce mailbox (TLS), read by ingest-bounces."
    )
    bounce_imap_port: int = Field(993, ge=1, le=65535, description="IMAP port (implicit TLS).")
    bounce_imap_user: str | None = Field(None, description="IMAP login of the bounce mailbox.")
    bounce_imap_password: SecretStr | None = Field(None, description="IMAP password of the bounce mailbox.")
    bounce_imap_folder: str = Field("INBOX", description="Folder holding new bounces.")
    bounce_processed_folder: str = Field(
        "mailshot-processed", description="Folder (IMAP, or Maildir++ subfolder) processed bounces are moved to."
    )
    bounce_imap_ca_file: str | None = Field(
        None, description="CA certificate file for the IMAP server (default: the system's trust store)."
    )
    batch_size: int = Field(500, ge=1, le=100_000, description="Recipients per batch (one Prefect task run).")
    claim_lease: float = Field(
        300.0, ge=60, description="Seconds without a heartbeat after which a worker's claims are recovered."
    )

    # --- issue 7: purge, dispatcher ---
    purge_after: str = Field(
        "12 months",
        description="Finished or cancelled sendings older than this are archived by purge-stats "
        "(recipient rows deleted, counters kept), e.g. '12 months', '90d'.",
    )
    start_expiry: str = Field(
        "6h",
        description="A scheduled sending not started this long after its start time is cancelled by "
        "dispatch-mailshots instead of going out late, e.g. '6h', '30min'.",
    )
    dispatch_interval: int = Field(
        600, ge=5, le=3600, description="Seconds between two dispatch-mailshots runs under `mailshot serve`."
    )
    legacy_url: SecretStr | None = Field(
        None,
        description="Default database URL of the SPIP site for import-legacy (kept out of Prefect's run history).",
    )

    # --- issue 15: the Newsletter API, double opt-in ---
    confirm_link_days: int = Field(7, ge=1, le=365, description="Days a double opt-in confirmation link stays valid.")

    # --- issue 14: hardening of the web app ---
    webhook_max_bytes: int = Field(
        5 * 1024 * 1024,
        ge=1024,
        le=1024**3,
        description="Largest webhook body accepted, in bytes (bigger: 413); read with this cap as it arrives.",
    )
    forwarded_allow_ips: str | None = Field(
        None,
        description="Reverse proxies (IPs or networks, comma-separated, or *) whose X-Forwarded-For `mailshot web` "
        "believes for the client address; default uvicorn's FORWARDED_ALLOW_IPS, else none.",
    )

    # --- issue 6: the follow-up pages (web/pages.py, web/login.py) ---
    admin_user: str = Field("admin", min_length=1, description="Login of the follow-up pages (/admin/).")
    admin_password: SecretStr | None = Field(
        None, description="Password of the follow-up pages; unset, the pages are disabled (secure by default)."
    )
    prefect_ui_url: str | None = Field(
        None,
        description="Prefect UI the pages link flow runs to (default: PREFECT_UI_URL, else derived from "
        "PREFECT_API_URL, else http://127.0.0.1:4200).",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        # os.environ decodes undecodable bytes as lone surrogates (PEP 383): they would fail later, far
        # from the setting, when written to a header, a log or the database.
        if isinstance(value, str):
            if "\x00" in value:
                raise ValueError("contains a NUL character")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(f"is not UTF-8 text (an undecodable byte at character {exc.start})") from None
        return value

    @field_validator("from_email", "reply_to", "unsubscribe_mailto", "bounce_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        return check_address(value)  # ValueError: the value is shown by describe_validation_error

    @field_validator("from_name")
    @classmethod
    def _name(cls, value: str) -> str:
        # It becomes the From display name of every sending that does not set its own, and is stored
        # in mailshot.from_name (255 characters).
        if "\r" in value or "\n" in value:
            raise ValueError("must be a single line (it contains a CR or LF character)")
        if len(value) > MAX_NAME_LENGTH:
            raise ValueError(f"is {len(value)} characters long; at most {MAX_NAME_LENGTH}")
        return value

    @field_validator("list_id_domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        return check_domain(value) if value else None

    @field_validator("smtp_host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not (is_hostname(value) or is_ip(value)):
            raise ValueError("not a host name or IP address")
        return value

    @field_validator("ses_region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d{1,2}", value):
            raise ValueError("not an AWS region name (e.g. eu-west-1)")
        return value

    @field_validator("ses_topic_arns")
    @classmethod
    def _topics(cls, value: str) -> str:
        for arn in filter(None, (a.strip() for a in value.split(","))):
            if not re.fullmatch(r"arn:[a-z-]+:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]{1,256}", arn):
                which = "" if arn == value.strip() else f" ({arn!r})"  # the whole value is shown anyway
                raise ValueError(f"not an SNS topic ARN{which}: expected arn:aws:sns:REGION:ACCOUNT:TOPIC")
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxies(cls, value: str | None) -> str | None:
        if not value:
            return None
        for item in (i.strip() for i in value.split(",")):
            if item == "*":
                continue
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                which = "" if item == value.strip() else f" ({item!r})"
                raise ValueError(f"not an IP address, a network (10.0.0.0/8) or *{which}") from None
        return value

    @field_validator("purge_after", "start_expiry")
    @classmethod
    def _duration(cls, value: str) -> str:
        from mailshot_core.duration import parse_duration

        parse_duration(value)  # DurationError (a ValueError) names the problem
        return value.strip()

    @field_validator("prefect_ui_url", "ses_url")
    @classmethod
    def _optional_url(cls, value: str | None) -> str | None:
        return cls._url(value) if value else None

    @field_validator("base_url", "mailjet_url", "sparkpost_url", "mandrill_url", "brevo_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value).rstrip("/")

    @field_validator("mandrill_webhook_url")
    @classmethod
    def _signed_url(cls, value: str | None) -> str | None:
        # Signed by Mandrill exactly as registered: checked, never rewritten (a trailing slash matters).
        return check_url(value, query=True) if value else None

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            url = make_url(value)
        except (ArgumentError, ValueError):  # ValueError: e.g. a non-numeric port
            # Never echo the value here: it may hold the database password.
            raise ValueError(
                "not an SQLAlchemy URL (e.g. sqlite:///mailshot.db or postgresql://user:password@host/db)"
            ) from None
        backend = url.get_backend_name()
        if backend not in SUPPORTED_DATABASES:
            raise ValueError(
                f"unsupported database {backend!r}: use sqlite:///FILE or postgresql://user:password@host/db"
            )
        try:
            url.get_dialect()  # the driver named after '+' must be importable
        except (NoSuchModuleError, ImportError) as exc:
            raise ValueError(f"the database driver {url.drivername!r} cannot be loaded ({exc})") from None
        return value

    @model_validator(mode="after")
    def _secret_for_public_sites(self) -> Settings:
        key = self.secret_key.get_secret_value()
        if not key:
            raise ValueError("MAILSHOT_SECRET_KEY: must not be empty (it signs every link and VERP address)")
        if self.is_local:
            return self
        # The default key is published in this repository: anyone could forge unsubscribe links with it.
        if key == DEFAULT_SECRET:
            raise ValueError(
                "MAILSHOT_SECRET_KEY must be set to your own random value when MAILSHOT_BASE_URL is public "
                "(the default key is published)"
            )
        if len(key.encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"MAILSHOT_SECRET_KEY is {len(key.encode())} bytes long: at least {MIN_SECRET_BYTES} when "
                "MAILSHOT_BASE_URL is public (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return self

    @property
    def is_local(self) -> bool:
        """MAILSHOT_BASE_URL names this machine: a development or demo setup."""
        return (urlsplit(self.base_url).hostname or "") in LOCAL_HOSTS

    @property
    def forwarded_ips(self) -> str:
        """Proxies whose X-Forwarded-For ``mailshot web`` believes: ours, else uvicorn's own
        FORWARDED_ALLOW_IPS from the environment, else none (uvicorn's default would trust loopback:
        then any local client, or a proxy that passes the header through, could name any address)."""
        return self.forwarded_allow_ips or os.environ.get("FORWARDED_ALLOW_IPS", "")

    @property
    def prefect_ui(self) -> str:
        """Base URL of the Prefect UI: ours, else Prefect's own settings from the environment.

        Read here, at the edge, because mailshot_core never imports prefect; the derivation follows
        Prefect's (``ui_url`` = the API URL without ``/api``; Prefect Cloud's API host -> its app host).
        """
        if self.prefect_ui_url:
            return self.prefect_ui_url.rstrip("/")
        if os.environ.get("PREFECT_UI_URL"):
            return os.environ["PREFECT_UI_URL"].rstrip("/")
        api = os.environ.get("PREFECT_API_URL", "").rstrip("/")
        cloud = _PREFECT_CLOUD_API.match(api)
        if cloud:
            return f"https://app.prefect.cloud/account/{cloud['account']}/workspace/{cloud['workspace']}"
        if api.endswith("/api"):
            return api.removesuffix("/api")
        return "http://127.0.0.1:4200"

    @property
    def list_domain(self) -> str:
        return self.list_id_domain or self.from_email.rsplit("@", 1)[1]


def describe_validation_error(exc: ValidationError) -> list[str]:
    """One line per bad variable, naming it as the user wrote it (MAILSHOT_X)."""
    lines = []
    for err in exc.errors():
        reason = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a rule across several settings: its message names them
            lines.append(reason)
            continue
        name = "MAILSHOT_" + "_".join(str(p) for p in err["loc"]).upper()
        given = err.get("input")
        secret = any(word in name for word in ("PASSWORD", "SECRET", "KEY", "TOKEN"))
        if isinstance(given, str) and name.endswith("_URL"):
            given = _URL_PASSWORD.sub(r"\1***@", given)  # a database URL carries its password
        shown = "" if secret or isinstance(given, dict) or given is None else f" (got {given!r})"
        lines.append(f"{name}: {reason}{shown}")
    return lines


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; raise :class:`ConfigError` with one clear line if any is invalid."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except UnicodeDecodeError as exc:  # python-dotenv reads .env as UTF-8
        raise ConfigError(f".env: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once (entry points only)."""
    return load_settings()
