"""Settings (mailshot_core.config): defaults, one clear line per bad variable, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailshot_core.config import ConfigError, SmtpTls, load_settings


@pytest.fixture(autouse=True)
def _clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh working directory (no .env) and no MAILSHOT_* variable from the developer's shell."""
    monkeypatch.chdir(tmp_path)
    import os

    for name in [n for n in os.environ if n.startswith("MAILSHOT_")]:
        monkeypatch.delenv(name)


def test_defaults_give_a_working_local_setup() -> None:
    """Without any variable the settings load: local SQLite, relay on localhost:1025, documented constants."""
    s = load_settings()
    assert s.database_url == "sqlite:///mailshot.db"
    assert (s.smtp_host, s.smtp_port, s.smtp_tls) == ("localhost", 1025, SmtpTls.NONE)
    assert s.max_try == 5
    assert s.base_url == "http://localhost:8000"
    assert s.from_email == "newsletter@example.org" and s.list_domain == "example.org"
    assert s.smtp_password is None and s.bounce_address is None


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("MAILSHOT_SMTP_PORT", "abc", "integer"),
        ("MAILSHOT_SMTP_PORT", "70000", "65535"),
        ("MAILSHOT_SMTP_TLS", "foo", "starttls"),
        ("MAILSHOT_MAX_TRY", "0", "greater than or equal to 1"),
        ("MAILSHOT_BASE_URL", "ftp://x", "http"),
        ("MAILSHOT_FROM_EMAIL", "nope", "email address"),
        ("MAILSHOT_BOUNCE_ADDRESS", "bounces example.org", "email address"),
        ("MAILSHOT_BATCH_SIZE", "-1", "greater than"),
        ("MAILSHOT_DATABASE_URL", "not a url", "SQLAlchemy URL"),
        ("MAILSHOT_DATABASE_URL", "bogus://", "unsupported database 'bogus'"),
        ("MAILSHOT_DATABASE_URL", "mysql://u@h/db", "unsupported database 'mysql'"),
        ("MAILSHOT_DATABASE_URL", "postgresql+nodriver://u@h/db", "cannot be loaded"),
        ("MAILSHOT_LIST_ID_DOMAIN", "ex.org> <x", "not a domain name"),
        ("MAILSHOT_LIST_ID_DOMAIN", "ex.org\r\nBcc: victim@example.com", "not a domain name"),
        ("MAILSHOT_LIST_ID_DOMAIN", "-bad-.example.org", "not a domain name"),
        ("MAILSHOT_FROM_EMAIL", "news@example.org\r\nBcc: victim@example.com", "email address"),
        ("MAILSHOT_FROM_EMAIL", '"quoted"@example.org', "local part"),
        ("MAILSHOT_REPLY_TO", "a@ex.org> <x", "email address"),
        ("MAILSHOT_BOUNCE_ADDRESS", "bounces@exa mple.org", "not a domain name"),
        ("MAILSHOT_UNSUBSCRIBE_MAILTO", "unsub@", "email address"),
        ("MAILSHOT_FROM_NAME", "News\r\nBcc: victim@example.com", "single line"),
        ("MAILSHOT_FROM_NAME", "N" * 256, "at most 255"),
        ("MAILSHOT_BASE_URL", "https://news.example .org", "spaces"),
        ("MAILSHOT_BASE_URL", " https://news.example.org", "spaces"),
        ("MAILSHOT_BASE_URL", "https://", "host name"),
        ("MAILSHOT_BASE_URL", "https://news.example.org:99999", "port"),
        ("MAILSHOT_BASE_URL", "https://user:pw@news.example.org", "user or password"),
        ("MAILSHOT_BASE_URL", "https://news.example.org/?a=1", "query"),
        ("MAILSHOT_MAILJET_URL", "api.mailjet.com", "http"),
        ("MAILSHOT_SMTP_HOST", "relay example.org", "host name"),
        ("MAILSHOT_SES_REGION", "Europe", "AWS region"),
        ("MAILSHOT_SES_TOPIC_ARNS", "mailshot-events", "SNS topic ARN"),
        ("MAILSHOT_FORWARDED_ALLOW_IPS", "10.0.0.1,proxy.local", "not an IP address"),
        ("MAILSHOT_WEBHOOK_MAX_BYTES", "10", "greater than or equal to 1024"),
    ],
)
def test_bad_variable_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, reason: str
) -> None:
    """Each invalid variable gives a ConfigError whose message is one line naming the variable and why."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    message = str(exc.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"{variable}: "), message
    assert reason in message
    assert message.count(repr(value)) <= 1, message  # the value is shown once, not twice


def test_several_bad_variables_are_all_named_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two bad variables are both reported, still on one line."""
    monkeypatch.setenv("MAILSHOT_SMTP_PORT", "abc")
    monkeypatch.setenv("MAILSHOT_MAX_TRY", "0")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    message = str(exc.value)
    assert "\n" not in message
    assert "MAILSHOT_SMTP_PORT" in message and "MAILSHOT_MAX_TRY" in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql//mailshot:hunter2-Secret@db.example.org/mailshot",  # missing ':'
        "postgresql://mailshot:hunter2-Secret@db.example.org:54x2/mailshot",  # bad port
        "postgresql://mailshot:hunter2-Secret@pass@db.example.org:x/mailshot",  # '@' in the password
    ],
)
def test_database_password_never_appears_in_the_message(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """A malformed database URL is reported without the password it contains."""
    monkeypatch.setenv("MAILSHOT_DATABASE_URL", url)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    message = str(exc.value)
    assert message.startswith("MAILSHOT_DATABASE_URL: ")
    assert "hunter2" not in message and "Secret" not in message, message
    assert "\n" not in message


def test_secret_values_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad password or key is named but its value is not echoed, even alongside other errors."""
    monkeypatch.setenv("MAILSHOT_SMTP_PASSWORD", "hunter2-Secret")
    monkeypatch.setenv("MAILSHOT_SMTP_PORT", "abc")
    with pytest.raises(ConfigError) as exc:
        load_settings(smtp_password=["hunter2-Secret"], secret_key=12345678)
    message = str(exc.value)
    assert "MAILSHOT_SMTP_PASSWORD" in message and "MAILSHOT_SECRET_KEY" in message
    assert "hunter2" not in message and "12345678" not in message, message
    assert "\n" not in message


def test_default_key_refused_for_a_public_site(monkeypatch: pytest.MonkeyPatch) -> None:
    """The published default secret key is refused when the base URL is public."""
    monkeypatch.setenv("MAILSHOT_BASE_URL", "https://news.example.org")
    with pytest.raises(ConfigError, match="MAILSHOT_SECRET_KEY"):
        load_settings()
    monkeypatch.setenv("MAILSHOT_SECRET_KEY", "a-real-random-value-of-32-bytes-x")
    settings = load_settings()
    assert settings.base_url == "https://news.example.org"
    assert "a-real-random-value" not in repr(settings)


def test_short_or_empty_secret_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key under 32 bytes is refused for a public site (guessable offline from one signed link), accepted
    for a local one; an empty key is refused everywhere; the key itself is never shown."""
    monkeypatch.setenv("MAILSHOT_BASE_URL", "https://news.example.org")
    monkeypatch.setenv("MAILSHOT_SECRET_KEY", "short-Secret-31-bytes-long-xxxx")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert "MAILSHOT_SECRET_KEY is 31 bytes long: at least 32" in str(exc.value)
    assert "short-Secret" not in str(exc.value)
    monkeypatch.setenv("MAILSHOT_SECRET_KEY", "short-Secret-32-bytes-long-xxxxx")
    assert load_settings().secret_key.get_secret_value().endswith("xxxxx")
    for local in ("http://localhost:8000", "http://127.0.0.1:8000", "http://[::1]:8000"):
        monkeypatch.setenv("MAILSHOT_BASE_URL", local)
        monkeypatch.setenv("MAILSHOT_SECRET_KEY", "dev")
        assert load_settings().is_local
        monkeypatch.setenv("MAILSHOT_SECRET_KEY", "")
        with pytest.raises(ConfigError, match="MAILSHOT_SECRET_KEY: must not be empty"):
            load_settings()


def test_valid_header_settings_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks refuse injections, not real values: plus addresses, subdomains, ports, paths, IPv6 hosts."""
    for name, value in {
        "MAILSHOT_FROM_EMAIL": "o'brien+news@mail.example.org",
        "MAILSHOT_BOUNCE_ADDRESS": "bounces@bounces.example.org",
        "MAILSHOT_LIST_ID_DOMAIN": "Lists.Example.ORG",
        "MAILSHOT_BASE_URL": "https://example.org:8443/news",
        "MAILSHOT_SES_URL": "http://[::1]:9000",
        "MAILSHOT_MANDRILL_WEBHOOK_URL": "https://example.org/webhooks/mandrill?site=a",
        "MAILSHOT_SMTP_HOST": "::1",
        "MAILSHOT_FORWARDED_ALLOW_IPS": "127.0.0.1, 10.0.0.0/8, ::1",
        "MAILSHOT_SECRET_KEY": "x" * 32,
    }.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert s.list_domain == "lists.example.org" and s.base_url == "https://example.org:8443/news"
    assert s.forwarded_ips == "127.0.0.1, 10.0.0.0/8, ::1"


def test_undecodable_bytes_in_a_setting_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A non-UTF-8 byte in a variable (a lone surrogate once decoded by Python) or in .env is one clear line."""
    monkeypatch.setenv("MAILSHOT_FROM_NAME", "Caf\udce9")  # b"Caf\xe9" as os.environ hands it over
    with pytest.raises(ConfigError, match=r"^MAILSHOT_FROM_NAME: is not UTF-8 text"):
        load_settings()
    monkeypatch.delenv("MAILSHOT_FROM_NAME")
    (tmp_path / ".env").write_bytes(b"MAILSHOT_FROM_NAME=Caf\xe9\n")
    with pytest.raises(ConfigError, match=r"^\.env: not UTF-8 text"):
        load_settings()
    (tmp_path / ".env").unlink()
    with pytest.raises(ConfigError, match=r"^MAILSHOT_ADMIN_USER: contains a NUL character"):
        load_settings(admin_user="adm\x00in")


def test_env_file_in_cwd_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .env file in the working directory is read; a real environment variable wins over it."""
    (tmp_path / ".env").write_text(
        "MAILSHOT_SMTP_PORT=2525\nMAILSHOT_FROM_EMAIL=letters@example.net\nMAILSHOT_SMTP_TLS=starttls\n",
        encoding="utf-8",
    )
    settings = load_settings()
    assert (settings.smtp_port, settings.from_email, settings.smtp_tls) == (
        2525,
        "letters@example.net",
        SmtpTls.STARTTLS,
    )
    monkeypatch.setenv("MAILSHOT_SMTP_PORT", "2626")
    assert load_settings().smtp_port == 2626


def test_bad_value_in_env_file_is_named(tmp_path: Path) -> None:
    """A bad value in .env is reported like one from the environment."""
    (tmp_path / ".env").write_text("MAILSHOT_MAX_TRY=zero\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^MAILSHOT_MAX_TRY: "):
        load_settings()
