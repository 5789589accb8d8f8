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
    monkeypatch.setenv("MAILSHOT_SECRET_KEY", "a-real-random-value")
    settings = load_settings()
    assert settings.base_url == "https://news.example.org"
    assert "a-real-random-value" not in repr(settings)


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
