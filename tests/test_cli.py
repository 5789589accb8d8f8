"""The `mailshot` command as a new user meets it: happy path and every kind of bad input.

Each bad input must give exactly one clear `error:` line (saying what and where), exit
code 1, and leave the database byte-for-byte as it was.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from mailshot_core.cli import main
from mailshot_core.config import get_settings


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    db_file = tmp_path / "cli.db"
    monkeypatch.setenv("MAILSHOT_DATABASE_URL", f"sqlite:///{db_file}")

    def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        get_settings.cache_clear()
        monkeypatch.setattr(sys, "argv", ["mailshot", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        for k in env or {}:
            monkeypatch.delenv(k)
        get_settings.cache_clear()
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    run.db_file = db_file  # type: ignore[attr-defined]
    return run


def _dump(db_file: Path) -> list[tuple[object, ...]]:
    con = sqlite3.connect(db_file)
    try:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type='table' order by name")]
        rows: list[tuple[object, ...]] = []
        for t in tables:
            rows += [(t, *r) for r in con.execute(f"select * from {t}")]
        return rows
    finally:
        con.close()


@pytest.fixture
def seeded(cli, tmp_path: Path):  # type: ignore[no-untyped-def]
    assert cli("lists", "create", "news", "--title", "News")[0] == 0
    (tmp_path / "ok.csv").write_text("email,nom\nann@example.org,Ann\nbob@example.org,Bob\n")
    assert cli("subscribers", "import", str(tmp_path / "ok.csv"), "--list", "news")[0] == 0
    (tmp_path / "body.html").write_text("<p>Hello {{ nom }}</p>")
    code, out, _ = cli("create", "--subject", "Hi", "--html", str(tmp_path / "body.html"), "--list", "news", "--send")
    assert code == 0 and out.strip().splitlines()[-1] == "1"
    return cli


def test_create_prints_the_id_alone_on_the_last_line(seeded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`mailshot create` prints the new id as the last stdout line; status --json has the documented keys."""
    code, out, _ = seeded("create", "--subject", "Second", "--html", str(tmp_path / "body.html"), "--list", "news")
    assert code == 0 and out.strip().splitlines()[-1] == "2"
    code, out, _ = seeded("status", "2", "--json")
    data = json.loads(out)
    assert {"id", "status", "total", "current", "sent", "failed"} <= set(data)
    assert data["id"] == 2 and data["status"] == "draft"


def test_a_draft_waits_for_send_and_test_messages_work_on_it(seeded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A sending created without a start instruction is a draft: `--send` starts it, `--start-at` schedules it."""
    body = str(tmp_path / "body.html")
    _, out, err = seeded("create", "--subject", "Now", "--html", body, "--list", "news", "--send")
    assert json.loads(seeded("status", out.strip().splitlines()[-1], "--json")[1])["status"] == "processing"
    _, out, _ = seeded(
        "create", "--subject", "Later", "--html", body, "--list", "news", "--start-at", "2999-01-01T08:00"
    )
    assert json.loads(seeded("status", out.strip().splitlines()[-1], "--json")[1])["status"] == "init"
    _, _, err = seeded("create", "--subject", "Draft", "--html", body, "--list", "news")
    assert "a draft" in err and "mailshot send" in err


BAD_INPUTS = [
    ("list sender not an address", ["lists", "update", "news", "--from-email", "nobody"], "invalid address 'nobody'"),
    ("list update without a field", ["lists", "update", "news"], "nothing to change"),
    ("list confirmation without link", ["lists", "update", "news", "--confirm-text", "{tmp}/body.html"], "url_confirm"),
    ("list confirmation bad syntax", ["lists", "update", "news", "--confirm-subject", "{{ x"], "confirmation subject"),
    ("unknown list to update", ["lists", "update", "nope", "--open"], "unknown list 'nope'"),
    ("malformed CSV", ["subscribers", "import", "{tmp}/nohead.csv", "--list", "news"], "line 1: no 'email' column"),
    ("CSV file missing", ["subscribers", "import", "{tmp}/missing.csv", "--list", "news"], "no such file"),
    ("CSV not UTF-8", ["subscribers", "import", "{tmp}/latin1.csv", "--list", "news"], "not UTF-8"),
    (
        "strict CSV with a bad row",
        ["subscribers", "import", "{tmp}/onebad.csv", "--list", "news", "--strict"],
        "line 3: invalid address",
    ),
    ("invalid address", ["subscribers", "add", "not-an-address", "--list", "news"], "invalid address 'not-an-address'"),
    (
        "CR/LF in a name",
        ["subscribers", "add", "x@example.org", "--list", "news", "--nom", "Evil\r\nBcc: a@b.c"],
        "CR or LF",
    ),
    (
        "name longer than its column",
        ["subscribers", "add", "x@example.org", "--list", "news", "--nom", "N" * 100_000],
        "name is 100000 characters long; at most 255",
    ),
    ("list title too long", ["lists", "create", "other", "--title", "T" * 300], "list title is 300 characters long"),
    (
        "sender name too long",
        ["create", "--subject", "S", "--html", "{tmp}/body.html", "--list", "news", "--from-name", "F" * 256],
        "sender name is 256 characters long; at most 255",
    ),
    (
        "subject too long",
        ["create", "--subject", "S" * 5000, "--html", "{tmp}/body.html", "--list", "news"],
        "subject is 5000 characters long; at most 998",
    ),
    ("unknown list on import", ["subscribers", "import", "{tmp}/ok.csv", "--list", "nope"], "unknown list 'nope'"),
    (
        "unknown list on create",
        ["create", "--subject", "S", "--html", "{tmp}/body.html", "--list", "nope"],
        "unknown list 'nope' (existing lists: news)",
    ),
    (
        "template syntax error",
        ["create", "--subject", "S", "--html", "{tmp}/broken.html", "--list", "news"],
        "HTML template, line 2:",
    ),
    (
        "unknown template variable",
        ["create", "--subject", "Hi {{ prenom }}", "--html", "{tmp}/body.html", "--list", "news"],
        "unknown variable prenom",
    ),
    (
        "CR/LF in subject",
        ["create", "--subject", "Hi\r\nBcc: x@y.z", "--html", "{tmp}/body.html", "--list", "news"],
        "subject must be a single line",
    ),
    (
        "CR/LF in sender name",
        ["create", "--subject", "S", "--html", "{tmp}/body.html", "--list", "news", "--from-name", "A\nB"],
        "sender name must be a single line",
    ),
    (
        "runaway template",
        ["create", "--subject", "S", "--html", "{tmp}/huge.html", "--list", "news"],
        "HTML template: the operator '*' would make a value of 300,000,000 characters",
    ),
    ("HTML file missing", ["create", "--subject", "S", "--html", "{tmp}/none.html", "--list", "news"], "HTML file"),
    (
        "bad start date",
        ["create", "--subject", "S", "--html", "{tmp}/body.html", "--list", "news", "--start-at", "tomorrow"],
        "--start-at: not an ISO 8601",
    ),
    (
        "zero rate",
        ["create", "--subject", "S", "--html", "{tmp}/body.html", "--list", "news", "--rate-per-day", "0"],
        "--rate-per-day must be a positive number",
    ),
    ("unknown sending (status)", ["status", "999"], "no sending with id 999"),
    ("unknown sending (send)", ["send", "999"], "no sending with id 999"),
    ("unknown sending (pause)", ["pause", "999"], "no sending with id 999"),
    ("unknown sending (test)", ["test", "999", "a@example.org"], "no sending with id 999"),
    ("resume a running sending", ["resume", "1"], "not paused"),
    ("duplicate list", ["lists", "create", "news"], "list 'news' already exists"),
    ("unknown subscriber", ["subscribers", "show", "ghost@example.org"], "no subscriber with address"),
]


@pytest.mark.parametrize(("case", "args", "expected"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gives_one_clear_line_and_changes_nothing(
    seeded, tmp_path: Path, case: str, args: list[str], expected: str
) -> None:  # type: ignore[no-untyped-def]
    """Every bad input: exit 1, exactly one `error:` line naming the problem, database unchanged."""
    (tmp_path / "nohead.csv").write_text("mail;name\nann@example.org;Ann\n")
    (tmp_path / "latin1.csv").write_bytes("email,nom\nzoé@example.org,Zoé\n".encode("latin-1"))
    (tmp_path / "onebad.csv").write_text("email\ncarl@example.org\nbroken@@example.org\n")
    (tmp_path / "broken.html").write_text("<p>Hello</p>\n<p>{{ nom </p>\n")
    (tmp_path / "huge.html").write_text("<p>{{ 'x' * 300000000 }}</p>\n")
    before = _dump(seeded.db_file)
    code, _out, err = seeded(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, (case, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert expected in lines[0], lines[0]
    assert _dump(seeded.db_file) == before


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAILSHOT_SMTP_PORT", "abc"),
        ("MAILSHOT_SMTP_TLS", "maybe"),
        ("MAILSHOT_MAX_TRY", "0"),
        ("MAILSHOT_BASE_URL", "ftp://x"),
        ("MAILSHOT_FROM_EMAIL", "nobody"),
        ("MAILSHOT_DATABASE_URL", "not a url"),
    ],
)
def test_bad_setting_names_the_variable(seeded, variable: str, value: str) -> None:  # type: ignore[no-untyped-def]
    """An invalid MAILSHOT_* value gives one line naming the variable, and nothing runs."""
    before = _dump(seeded.db_file)
    code, _, err = seeded("lists", "create", "other", env={variable: value})
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"error: {variable}:"), lines[0]
    assert _dump(seeded.db_file) == before


def test_import_reports_invalid_rows_by_line_and_keeps_the_valid_ones(seeded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A CSV with bad rows: each reported with its line number, valid rows imported; a re-run changes nothing."""
    (tmp_path / "mixed.csv").write_text(
        "email,nom\ncarl@example.org,Carl\nbad address,X\n\ndave@example.org,Dave\neve@@example.org,Eve\n"
    )
    code, out, err = seeded("subscribers", "import", str(tmp_path / "mixed.csv"), "--list", "news")
    assert code == 0
    assert "mixed.csv, line 3:" in err and "mixed.csv, line 6:" in err
    assert "2 subscribed to news" in out
    before = _dump(seeded.db_file)
    code, out, _ = seeded("subscribers", "import", str(tmp_path / "mixed.csv"), "--list", "news")
    assert code == 0 and "0 subscribed" in out and "2 already subscribed" in out
    assert _dump(seeded.db_file) == before


def test_pause_resume_cancel_and_show(seeded) -> None:  # type: ignore[no-untyped-def]
    """Operators drive a sending's status from the CLI and read an address's history."""
    assert "paused" in seeded("pause", "1")[1]
    assert "resumed" in seeded("resume", "1")[1]
    assert "cancelled" in seeded("cancel", "1")[1]
    code, out, _ = seeded("status", "1", "--json")
    assert json.loads(out)["status"] == "cancel"
    assert seeded("subscribers", "unsubscribe", "ann@example.org")[0] == 0
    code, out, _ = seeded("subscribers", "show", "ann@example.org")
    assert code == 0 and "unsubscribed" in out and "unsubscribed by the operator" in out


def test_unsupported_database_url_is_one_line(cli) -> None:  # type: ignore[no-untyped-def]
    """MAILSHOT_DATABASE_URL=bogus:// (or a driver that is not installed) is one `error:` line, no traceback."""
    for url, why in (("bogus://", "unsupported database 'bogus'"), ("postgresql+nodriver://u@h/d", "cannot be loaded")):
        code, out, err = cli("lists", "list", env={"MAILSHOT_DATABASE_URL": url})
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 1 and len(lines) == 1, err
        assert lines[0].startswith("error: MAILSHOT_DATABASE_URL: ") and why in lines[0], lines[0]
        assert "Traceback" not in err + out


def test_each_bad_setting_is_its_own_error_line(cli) -> None:  # type: ignore[no-untyped-def]
    """Settings are all checked at start: two bad variables give two `error:` lines, one naming each."""
    code, _, err = cli(
        "lists", "list", env={"MAILSHOT_LIST_ID_DOMAIN": "ex.org> <x", "MAILSHOT_BASE_URL": "https://a b.example"}
    )
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 2, err
    assert sorted(line.split(":")[1] for line in lines) == [" MAILSHOT_BASE_URL", " MAILSHOT_LIST_ID_DOMAIN"]
    assert any("MAILSHOT_LIST_ID_DOMAIN: not a domain name" in line for line in lines)
    assert any("MAILSHOT_BASE_URL: must not contain spaces" in line for line in lines)


def test_non_utf8_argument_is_one_clear_line(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A command-line argument that is not UTF-8 is refused with one line naming it, in-process (the
    surrogate Python makes of the byte) and from a real shell-like exec with raw bytes; nothing is written."""
    code, _, err = cli("lists", "create", "caf\udce9")
    assert code == 1 and err.strip() == (
        "error: argument 3 ('caf\\\\xe9') is not UTF-8 text: byte 0xe9 at character 4; give it in UTF-8"
    ), err
    assert not cli.db_file.exists()
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILSHOT_")}
    env["MAILSHOT_DATABASE_URL"] = f"sqlite:///{tmp_path}/raw.db"
    done = subprocess.run(
        [sys.executable, "-m", "mailshot_core.cli", b"subscribers", b"add", b"a@example.org", b"--list", b"l\xff"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.decode().strip().startswith("error: argument 5 ('l\\\\xff') is not UTF-8 text: byte 0xff")
    assert b"Traceback" not in done.stderr and not (tmp_path / "raw.db").exists()


def test_lists_carry_their_sender_and_public_status(seeded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`lists create/update` set the fields SPIP's lists have; `lists list` shows them with pending counts;
    a sending on the list takes its sender."""
    cli = seeded
    code, out, err = cli(
        "lists", "update", "news", "--open", "--from-name", "The Team", "--from-email", "Team@Example.org"
    )
    assert code == 0, err
    assert "from_email, from_name, open" in out
    code, out, _ = cli("lists", "list", env={"COLUMNS": "200"})
    assert code == 0
    row = next(line for line in out.splitlines() if " news " in line)
    assert "open" in row and "The Team <team@example.org>" in row and "double" in row
    assert cli("create", "--subject", "Hi", "--html", str(tmp_path / "body.html"), "--list", "news")[0] == 0
    con = sqlite3.connect(cli.db_file)
    try:
        assert con.execute("select from_name, from_email from mailshot order by id desc").fetchone() == (
            "The Team",
            "team@example.org",
        )
    finally:
        con.close()


def test_api_keys_create_list_revoke(cli) -> None:  # type: ignore[no-untyped-def]
    """`api-keys create` prints the key once (only its hash is stored); `list` shows it without the secret and
    when it was last used; `revoke` makes it fail; a bad scope, a taken name or an unknown key is one clear
    line and changes nothing."""
    code, out, err = cli("api-keys", "create", "shop", "--scope", "subscribers")
    assert code == 0, err
    key = out.strip().splitlines()[-1]
    assert key.startswith("msk_") and "not shown again" in err
    con = sqlite3.connect(cli.db_file)
    try:
        stored = con.execute("select prefix, secret_hash, scope from api_key").fetchall()
    finally:
        con.close()
    assert len(stored) == 1 and stored[0][2] == "subscribers" and key not in stored[0][1]
    code, out, _ = cli("api-keys", "list", env={"COLUMNS": "200"})
    assert code == 0 and "shop" in out and f"msk_{stored[0][0]}_" in out and key not in out and "never" in out
    before = _dump(cli.db_file)
    for args, message in (
        (("api-keys", "create", "other", "--scope", "root"), "unknown scope 'root'"),
        (("api-keys", "create", "shop"), "already exists"),
        (("api-keys", "revoke", "nobody"), "no API key named 'nobody'"),
    ):
        code, _, err = cli(*args)
        assert code == 1 and err.startswith("error: ") and message in err, err
    assert _dump(cli.db_file) == before
    code, out, _ = cli("api-keys", "revoke", "shop")
    assert code == 0 and "revoked" in out
    from mailshot_core.store.db import get_engine
    from mailshot_core.web.api.keys import authenticate

    assert authenticate(get_engine(f"sqlite:///{cli.db_file}"), key) is None


def test_show_prints_pending_subscriptions_and_the_opt_in_trail(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`mailshot subscribers show`: a pending subscription in the lists, and the trail: what, which list,
    from where (source, client), and when the link was followed."""
    from mailshot_core.audience import subscriptions
    from mailshot_core.store.db import get_engine, session_scope

    assert cli("lists", "create", "news", "--title", "News", "--open")[0] == 0
    assert cli("lists", "create", "offers", "--open")[0] == 0
    assert cli("subscribers", "add", "carol@example.org", "--list", "news")[0] == 0
    with session_scope(get_engine(f"sqlite:///{tmp_path / 'cli.db'}")) as session:
        subscriptions.subscribe(
            session, "carol@example.org", ["offers"], public=True, source="page", client="192.0.2.9"
        )
    code, out, _ = cli("subscribers", "show", "carol@example.org")
    assert code == 0 and "Opt-in trail" in out
    rows = [line for line in out.splitlines() if "carol" not in line]
    assert any("offers" in r and "pending" in r for r in rows), out
    assert any("subscribed" in r and "news" in r and "cli" in r and "forced" in r for r in rows), out
    assert any("requested" in r and "offers" in r and "page" in r and "192.0.2.9" in r for r in rows), out
