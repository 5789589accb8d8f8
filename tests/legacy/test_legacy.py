"""import-legacy against a real MariaDB holding SPIP-Listes, SPIP-Lettres and Mailshot+Mailsubscribers data.

The databases are written from the plugins' documented schemas (tests/legacy_fixtures.py), with
latin1 tables holding ISO-8859-15 bytes, and rows the importer cannot map.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import select

from conftest import engine_for, make_settings
from legacy_fixtures import SCENARIOS, load
from mailshot_core.errors import MailshotError
from mailshot_core.legacy import mapping
from mailshot_core.sending import sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import FeedbackEvent, Mailshot, Recipient
from mariaserver import MariaServer, MariaServerError
from test_cli import _dump, cli  # noqa: F401 (the fixture)

TABLES = ("mailing_list", "subscriber", "subscription", "mailshot", "recipient", "legacy_import")


@pytest.fixture(scope="session")
def maria() -> Iterator[MariaServer]:
    server = MariaServer()
    try:
        server.start()
    except MariaServerError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"MariaDB unavailable: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sites(maria: MariaServer) -> dict[str, str]:
    """One SPIP database per source, loaded once: source -> SQLAlchemy URL."""
    urls = {}
    for source, scenario in SCENARIOS.items():
        name = "site_" + source.replace("-", "_")
        urls[source] = maria.create_database(name)
        with maria.connect(name) as conn:
            load(conn, scenario)
    return urls


def _snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {t: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {t} ORDER BY 1, 2"))] for t in TABLES}


def _state(engine: Engine) -> dict[str, Any]:
    """Lists, subscribers (status), subscriptions, sendings (status, counters) and recipients, by natural keys."""
    with engine.connect() as conn:
        q = lambda sql: [tuple(r) for r in conn.execute(text(sql))]  # noqa: E731
        return {
            "lists": dict(q("SELECT identifier, title FROM mailing_list")),
            "subscribers": {e: (n, s) for e, n, s in q("SELECT email, nom, status FROM subscriber")},
            "subscriptions": sorted(
                q(
                    "SELECT s.email, l.identifier, sub.status FROM subscription sub "
                    "JOIN subscriber s ON s.id = sub.subscriber_id JOIN mailing_list l ON l.id = sub.list_id"
                )
            ),
        }


def _sendings(engine: Engine) -> list[Mailshot]:
    with session_scope(engine) as session:
        return list(session.exec(select(Mailshot).order_by(Mailshot.id)).all())


def _recipients(engine: Engine, mailshot_id: int) -> dict[str, tuple[str, int]]:
    with session_scope(engine) as session:
        rows = session.exec(select(Recipient).where(Recipient.mailshot_id == mailshot_id)).all()
        return {r.email: (r.status, r.tries) for r in rows}


def _problems(report: mapping.ImportReport) -> set[tuple[str, str]]:
    return {(p.table, p.row_id) for p in report.problems}


def _counters_are_a_recount(engine: Engine) -> None:
    with session_scope(engine) as session:
        for m in session.exec(select(Mailshot)).all():
            assert m.id is not None
            if m.status != "archive":
                assert sendings.stored_counters(m) == sendings.recount(session, m.id), m.id


def test_spip_listes(sites: dict[str, str], db_url: str) -> None:
    """Lists, subscribers (format 'non' refused), memberships, courriers with their totals; re-run changes nothing."""
    engine = engine_for(make_settings(db_url))
    report = mapping.import_legacy(engine, sites["spip-listes"], "spip-listes")
    state = _state(engine)
    assert state["lists"] == {"1-lettre-d-info": "Lettre d'info", "2-evenements": "Événements"}
    assert state["subscribers"] == {
        "zoe@example.com": ("Zoé Œuvrard", "valid"),  # ISO-8859-15 bytes in a latin1 table, decoded
        "bob@example.com": ("Bob", "valid"),
        "nf@example.com": ("Sans format", "valid"),
    }
    assert state["subscriptions"] == [
        ("bob@example.com", "1-lettre-d-info", "pending"),
        ("nf@example.com", "1-lettre-d-info", "refused"),
        ("zoe@example.com", "1-lettre-d-info", "valid"),
        ("zoe@example.com", "2-evenements", "valid"),
    ]
    first, second = _sendings(engine)
    assert first.subject == "Numéro 1 : 5 € l'œuvre" and "__bLg__" not in first.html and "5 € l'œuvre" in first.html
    assert (first.status, first.total, first.current, first.sent, first.failed) == ("archive", 3, 3, 2, 1)
    assert first.lists == "1-lettre-d-info" and "was 'end'" in (first.status_reason or "")
    assert (second.status, second.total, second.current, second.sent, second.failed) == ("archive", 10, 7, 4, 3)
    assert "was 'cancel'" in (second.status_reason or "")
    assert _problems(report) == {
        ("spip_listes", "3"),
        ("spip_auteurs", "4"),
        ("spip_auteurs", "6"),
        ("spip_auteurs_listes", "4/1"),
        ("spip_auteurs_listes", "2/3"),
        ("spip_courriers", "2"),  # unfinished: imported with its totals, reported
        ("spip_courriers", "4"),  # a draft, never sent: reported, not imported
    }
    reasons = {p.row_id: p.reason for p in report.problems if p.table == "spip_courriers"}
    assert reasons["2"].startswith("unfinished in SPIP-Listes (7 of 10 processed)")
    assert reasons["4"] == "draft, never sent (statut 'publie'): not imported"
    assert report.created["sendings"] == 2 and report.created["recipients"] == 0

    before = _snapshot(engine)
    again = mapping.import_legacy(engine, sites["spip-listes"], "spip-listes")
    assert _snapshot(engine) == before
    assert sum(again.created.values()) == 0 and again.existing["sendings"] == 2


def test_spip_lettres(sites: dict[str, str], db_url: str) -> None:
    """Subscribers, rubriques as lists, unsubscribed addresses, sent letters with their recipients."""
    engine = engine_for(make_settings(db_url))
    report = mapping.import_legacy(engine, sites["spip-lettres"], "spip-lettres")
    state = _state(engine)
    assert state["lists"] == {"rubrique-1-actualites": "Actualités", "rubrique-0-site": "Whole site"}
    assert state["subscribers"] == {
        "a1@example.org": ("Ann", "valid"),
        "a2@example.org": ("Ægir Ünal", "valid"),
        "a4@example.org": ("Left", "unsubscribed"),
        "gone@example.org": ("", "unsubscribed"),
    }
    assert state["subscriptions"] == [
        ("a1@example.org", "rubrique-0-site", "valid"),
        ("a1@example.org", "rubrique-1-actualites", "valid"),
        ("a2@example.org", "rubrique-1-actualites", "pending"),
        ("a4@example.org", "rubrique-1-actualites", "refused"),
    ]
    letter, unfinished = _sendings(engine)
    assert letter.subject == "Lettre n°1 : 10 € d'œuvres" and letter.html == "<p>Prix : 10 €, Œuvre</p>"
    assert (letter.status, letter.total, letter.current, letter.sent, letter.failed) == ("end", 3, 3, 2, 1)
    assert letter.lists == "rubrique-1-actualites"
    assert letter.id is not None and unfinished.id is not None
    assert _recipients(engine, letter.id) == {
        "a1@example.org": ("sent", 1),
        "a2@example.org": ("fail", 1),
        "a4@example.org": ("sent", 1),
    }
    # Still being sent in SPIP: paused here, its waiting recipient `todo`, so status and counters are right.
    assert (unfinished.status, unfinished.total, unfinished.current, unfinished.sent) == ("pause", 2, 1, 1)
    assert _recipients(engine, unfinished.id) == {"a1@example.org": ("sent", 1), "a2@example.org": ("todo", 0)}
    assert "paused here; resume or cancel it" in (unfinished.status_reason or "")
    assert _problems(report) == {
        ("spip_abonnes", "3"),
        ("spip_abonnes_rubriques", "2/2"),
        ("spip_abonnes_rubriques", "3/1"),
        ("spip_abonnes_lettres", "3/1"),
        ("spip_abonnes_lettres", "99/1"),
        ("spip_lettres", "2"),  # a draft: reported, not imported
        ("spip_lettres", "3"),  # unfinished: imported paused, reported
    }
    reasons = {p.row_id: p.reason for p in report.problems if p.table == "spip_lettres"}
    assert reasons["2"] == "draft (brouillon), never sent: not imported"
    assert reasons["3"].startswith("unfinished in SPIP-Lettres (statut 'envoi_en_cours', 1 recipient(s) still to send)")
    _counters_are_a_recount(engine)

    before = _snapshot(engine)
    again = mapping.import_legacy(engine, sites["spip-lettres"], "spip-lettres")
    assert _snapshot(engine) == before
    assert sum(again.created.values()) == 0


def test_mailshot_and_mailsubscribers(sites: dict[str, str], db_url: str) -> None:
    """Mailsubscribers 2.x tables and SPIP Mailshot sendings with their per-recipient rows."""
    engine = engine_for(make_settings(db_url))
    report = mapping.import_legacy(engine, sites["mailshot"], "mailshot")
    state = _state(engine)
    assert state["lists"] == {"newsletter": "La lettre", "events": "Événements"}  # the public title when set
    with engine.connect() as conn:
        fields = {
            r[0]: tuple(r[1:])
            for r in conn.execute(text("SELECT identifier, description, open, from_name, from_email FROM mailing_list"))
        }
    assert fields == {
        "newsletter": ("Chaque mois", True, "La rédaction", "redaction@example.org"),
        "events": ("", False, "", ""),
    }
    assert state["subscribers"] == {
        "m1@example.net": ("Mélanie", "valid"),
        "m2@example.net": ("", "valid"),
        "m3@example.net": ("", "unsubscribed"),
        "m5@example.net": ("Five", "valid"),
    }
    assert state["subscriptions"] == [
        ("m1@example.net", "newsletter", "valid"),
        ("m2@example.net", "newsletter", "pending"),
        ("m3@example.net", "newsletter", "refused"),
        ("m5@example.net", "events", "valid"),
        ("m5@example.net", "newsletter", "valid"),
    ]
    ended, archived, stopped, cancelled, scheduled = _sendings(engine)
    assert ended.subject == "Hello 5 € world" and ended.from_name == "Équipe" and ended.graceful
    assert ended.lists == "newsletter,events"
    assert ended.id is not None and stopped.id is not None and cancelled.id is not None
    # raw_feedback is the row's last word: SPIP's `fail` after a hard bounce is `bounce` here, its `spam`
    # after an unsubscription is `unsub`; each becomes an (applied) feedback event.
    assert _recipients(engine, ended.id) == {
        "m1@example.net": ("read", 1),
        "m5@example.net": ("sent", 1),
        "m2@example.net": ("bounce", 5),
        "m3@example.net": ("spam", 1),
        "m6@example.net": ("unsub", 1),
    }
    assert (ended.status, ended.total, ended.current, ended.sent, ended.failed) == ("end", 5, 5, 5, 0)
    assert (ended.nb_read, ended.nb_bounce, ended.nb_spam, ended.nb_unsub) == (1, 1, 1, 1)
    with session_scope(engine) as session:
        events = session.exec(select(FeedbackEvent).where(FeedbackEvent.source == "spip-import")).all()
        imported = {(e.email, e.kind, e.raw, e.mailshot_id, e.applied_at is not None) for e in events}
        assert all(e.recipient_id is not None for e in events)
    assert imported == {
        ("m1@example.net", "read", "read|open", ended.id, True),
        ("m2@example.net", "hard_bounce", "hard_bounce|bounce", ended.id, True),
        ("m3@example.net", "spam", "spam|spam_complaint", ended.id, True),
        ("m6@example.net", "unsub", "unsub|unsub", ended.id, True),
    }
    assert report.created["feedback events"] == 4
    assert (archived.status, archived.total, archived.sent, archived.failed) == ("archive", 100, 95, 5)
    assert (archived.nb_read, archived.nb_clic, archived.nb_spam) == (40, 10, 1)
    # Unfinished in SPIP: paused, its waiting rows `todo`; the operator resumes or cancels it.
    assert (stopped.status, stopped.total, stopped.current) == ("pause", 2, 1)
    assert _recipients(engine, stopped.id) == {"m1@example.net": ("sent", 1), "m5@example.net": ("todo", 0)}
    assert cancelled.status == "cancel" and _recipients(engine, cancelled.id) == {"m1@example.net": ("kill", 0)}
    assert (scheduled.status, scheduled.materialised, scheduled.total) == ("pause", False, 0)
    assert _problems(report) == {
        ("spip_mailsubscribinglists", "3"),
        ("spip_mailsubscribers", "4"),
        ("spip_mailsubscriptions", "4/1"),
        ("spip_mailsubscriptions", "1/3"),
        ("spip_mailshots", "3"),  # was processing: imported paused
        ("spip_mailshots", "4"),
        ("spip_mailshots", "6"),  # was init: imported paused, not materialised
        ("spip_mailshots_destinataires", "1/not an address"),
    }
    reasons = {p.row_id: p.reason for p in report.problems if p.table == "spip_mailshots"}
    assert (
        reasons["3"] == "was 'processing' in SPIP: imported paused (1 recipient(s) still to send); resume or cancel it"
    )
    assert "not materialised: a resume sends to its lists" in reasons["6"]
    _counters_are_a_recount(engine)

    before = _snapshot(engine)
    again = mapping.import_legacy(engine, sites["mailshot"], "mailshot")
    assert _snapshot(engine) == before
    assert sum(again.created.values()) == 0


def test_cli_dry_run_then_import_all_then_bad_input(cli, sites: dict[str, str], maria: MariaServer) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """--dry-run prints what would be imported and changes nothing; bad input is one clear error, nothing changed."""
    engine = engine_for(make_settings(f"sqlite:///{cli.db_file}"))
    empty = _dump(cli.db_file)
    code, out, err = cli("import-legacy", "--url", sites["spip-lettres"], "--dry-run")
    assert code == 0, err
    assert (
        "spip-lettres: would import 2 lists, 4 subscribers, 4 subscriptions, 2 unsubscribed, 2 sendings, 5 recipients"
        in out
    )
    assert "not imported or changed: spip_abonnes_lettres #99/1: no valid address for id_abonne 99" in err
    assert _dump(cli.db_file) == empty

    code, out, _ = cli("import-legacy", "--dry-run", env={"MAILSHOT_LEGACY_URL": sites["spip-listes"]})
    assert code == 0 and "spip-listes: would import 2 lists" in out
    bad_url = sites["mailshot"].replace(f":{maria.port}/", ":1/")
    for args, why in (
        ([], "--url: give the SPIP site's database URL"),
        (["--url", "postgresql://u:secret@localhost/x"], "a SPIP site's MySQL/MariaDB database is expected"),
        (["--url", bad_url], "cannot connect to the legacy database"),
        (["--url", sites["mailshot"], "--prefix", "other_"], "no legacy table found"),
        (["--url", sites["mailshot"], "--source", "clevermail"], "--source: unknown source 'clevermail'"),
        (["--url", sites["mailshot"], "--prefix", "x; DROP"], "--prefix"),
    ):
        code, _, err = cli("import-legacy", *args)
        assert code == 1 and err.startswith("error:") and why in err, err
        assert "secret" not in err
    assert _dump(cli.db_file) == empty

    # Three sources into one database: the addresses shared across sources merge.
    for source in ("spip-listes", "spip-lettres", "mailshot"):
        code, out, err = cli("import-legacy", "--url", sites[source], "--source", "all")
        assert code == 0, err
    assert len(_sendings(engine)) == 9
    assert _state(engine)["subscribers"]["a4@example.org"][1] == "unsubscribed"


def test_table_prefix(maria: MariaServer, sqlite_url: str) -> None:
    """A site installed with another table prefix is read with --prefix."""
    url = maria.create_database("site_prefixed")
    with maria.connect("site_prefixed") as conn:
        load(conn, SCENARIOS["spip-lettres"], prefix="news_")
    engine = engine_for(make_settings(sqlite_url))
    with pytest.raises(MailshotError, match="no legacy table found"):
        mapping.import_legacy(engine, url)
    report = mapping.import_legacy(engine, url, prefix="news_")
    assert report.sources == ["spip-lettres"] and report.created["sendings"] == 2


def test_a_table_without_its_key_columns_is_a_clear_error(maria: MariaServer, sqlite_url: str) -> None:
    """A table named like the plugin's but without its id column: one clear error, nothing imported."""
    url = maria.create_database("site_odd")
    with maria.connect("site_odd") as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE spip_abonnes (email varchar(255), nom varchar(255))")
        cur.execute("INSERT INTO spip_abonnes VALUES ('x@example.org', 'X')")
    engine = engine_for(make_settings(sqlite_url))
    with pytest.raises(
        MailshotError, match="table spip_abonnes has no column id_abonne: not the expected plugin schema"
    ):
        mapping.import_legacy(engine, url, "spip-lettres")
    assert _state(engine)["subscribers"] == {}


def test_mailsubscribers_1x_listes_column(maria: MariaServer, sqlite_url: str) -> None:
    """Mailsubscribers 1.x kept the lists in a comma-separated `listes` column: read too (original §8.1)."""
    url = maria.create_database("site_ms1")
    with maria.connect("site_ms1") as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE spip_mailsubscribers (id_mailsubscriber bigint(21) NOT NULL AUTO_INCREMENT, "
            "email varchar(255) NOT NULL DEFAULT '', nom text NOT NULL, listes text NOT NULL, optin text NOT NULL, "
            "date datetime NOT NULL, statut varchar(20) NOT NULL DEFAULT 'prepa', jeton char(25) NOT NULL DEFAULT '', "
            "lang varchar(10) NOT NULL DEFAULT '', PRIMARY KEY (id_mailsubscriber)) DEFAULT CHARSET=latin1"
        )
        cur.executemany(
            "INSERT INTO spip_mailsubscribers (email, nom, listes, optin, date, statut) VALUES (%s, %s, %s, '', NOW(), %s)",
            [
                (b"v@example.net", "Val\xe9rie".encode("latin1"), b"newsletter,events", "valide"),
                (b"p@example.net", b"", b"newsletter", "prop"),
            ],
        )
    engine = engine_for(make_settings(sqlite_url))
    mapping.import_legacy(engine, url, "mailshot")
    state = _state(engine)
    assert state["subscribers"]["v@example.net"] == ("Valérie", "valid")
    assert state["subscriptions"] == [
        ("p@example.net", "newsletter", "pending"),
        ("v@example.net", "events", "valid"),
        ("v@example.net", "newsletter", "valid"),
    ]


def test_import_legacy_flow_reads_the_url_from_the_settings(
    prefect_harness: None, sites: dict[str, str], sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow takes the URL from MAILSHOT_LEGACY_URL (no password in the run's parameters); re-run: nothing new."""
    from flows.import_legacy import import_legacy
    from mailshot_core.config import get_settings

    monkeypatch.setenv("MAILSHOT_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MAILSHOT_LEGACY_URL", sites["spip-lettres"])
    get_settings.cache_clear()
    try:
        first = import_legacy(source="spip-lettres")
        again = import_legacy(source="spip-lettres")
    finally:
        get_settings.cache_clear()
    assert first["created"]["sendings"] == 2 and first["problems"] == 7
    assert sum(again["created"].values()) == 0 and again["existing"]["sendings"] == 2
