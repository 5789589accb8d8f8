"""Lists, subscribers, CSV import and unsubscription (mailshot_core.audience.subscribers) on SQLite."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import select

from helpers import two_lists
from mailshot_core.audience.addresses import check_name, normalise_email
from mailshot_core.audience.lists import get_list, list_lists
from mailshot_core.audience.subscribers import history, import_csv, unsubscribe
from mailshot_core.audience.subscriptions import add_subscriber
from mailshot_core.errors import InvalidInput, NotFound
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import (
    FeedbackEvent,
    Mailshot,
    Recipient,
    Subscriber,
    SubscriberStatus,
    Subscription,
    SubscriptionStatus,
    utcnow,
)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = two_lists(tmp_path)
    yield eng
    eng.dispose()


def dump(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, ordered: two dumps are equal only if nothing changed."""
    out = {}
    with engine.connect() as conn:
        for table in sorted(inspect(conn).get_table_names()):
            out[table] = sorted((tuple(r) for r in conn.execute(text(f'SELECT * FROM "{table}"'))), key=repr)
    return out


def write(tmp_path: Path, content: str | bytes, name: str = "in.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def members(engine: Engine, identifier: str, status: str = SubscriptionStatus.VALID) -> dict[str, str]:
    """address -> name of the list's subscriptions with that status."""
    with session_scope(engine) as s:
        mlist = get_list(s, identifier)
        rows = s.exec(
            select(Subscriber.email, Subscriber.nom)
            .join(Subscription, Subscription.subscriber_id == Subscriber.id)  # type: ignore[arg-type]
            .where(Subscription.list_id == mlist.id, Subscription.status == status)
        ).all()
    return dict(rows)


def do_import(engine: Engine, path: Path, identifier: str = "news", **kw: Any):
    with session_scope(engine) as s:
        return import_csv(s, path, identifier, **kw)


MIXED = (
    "email,nom,lang\n"  # 1
    "alice@example.org,Alice,fr\n"  # 2
    "not-an-address,X,fr\n"  # 3
    "\n"  # 4
    "  Bob@Example.ORG ,Bob,en\n"  # 5
    "carol@,Carol,fr\n"  # 6
    'dave@example.org,"Dave\nSmith",fr\n'  # 7-8: a name with a line break
    "eve@example.org,Eve\n"  # 9: a field missing
    'frank@example.org,"Frank, Jr.",de\n'  # 10
)


def test_import_reports_invalid_rows_by_line_and_imports_the_rest(engine: Engine, tmp_path: Path) -> None:
    """Invalid rows are reported with the file's line numbers and skipped; valid rows are imported."""
    report = do_import(engine, write(tmp_path, MIXED))
    assert [line for line, _ in report.errors] == [3, 6, 7, 9]
    reasons = dict(report.errors)
    assert "not-an-address" in reasons[3] and "carol@" in reasons[6]
    assert "single line" in reasons[7] and "expected 3 fields, found 2" in reasons[9]
    assert (report.new_subscribers, report.new_subscriptions) == (3, 3)
    assert members(engine, "news") == {
        "alice@example.org": "Alice",
        "bob@example.org": "Bob",
        "frank@example.org": "Frank, Jr.",
    }
    assert members(engine, "events") == {}
    with session_scope(engine) as s:
        assert s.exec(select(Subscriber.lang).where(Subscriber.email == "frank@example.org")).one() == "de"


def test_reimport_changes_nothing(engine: Engine, tmp_path: Path) -> None:
    """Importing the same file twice leaves every table exactly as after the first import."""
    path = write(tmp_path, MIXED)
    do_import(engine, path)
    before = dump(engine)
    report = do_import(engine, path)
    assert dump(engine) == before
    assert (report.new_subscribers, report.new_subscriptions, report.already_subscribed) == (0, 0, 3)


def test_semicolon_delimiter_and_bom(engine: Engine, tmp_path: Path) -> None:
    """A spreadsheet export (UTF-8 BOM, ';' delimiter, CRLF, other header case) imports normally."""
    content = "\ufeffEmail;Nom;Lang\r\nzoe@example.org;Zoé Müller;fr\r\nyann@example.org;Yann, Le Bihan;br\r\n"
    report = do_import(engine, write(tmp_path, content.encode("utf-8")))
    assert report.errors == []
    assert members(engine, "news") == {"zoe@example.org": "Zoé Müller", "yann@example.org": "Yann, Le Bihan"}


def test_single_column_file(engine: Engine, tmp_path: Path) -> None:
    """A file with only an email column imports (no delimiter to detect)."""
    report = do_import(engine, write(tmp_path, "email\na@example.org\nb@example.org\n"))
    assert (report.new_subscribers, report.errors) == (2, [])


def test_file_without_email_column_is_refused_unchanged(engine: Engine, tmp_path: Path) -> None:
    """A header without an 'email' column is InvalidInput naming line 1, and the database is unchanged."""
    do_import(engine, write(tmp_path, "email\nkept@example.org\n", "first.csv"))
    before = dump(engine)
    with pytest.raises(InvalidInput, match="line 1") as exc:
        do_import(engine, write(tmp_path, "mail,nom\nx@example.org,X\n"))
    assert "email" in str(exc.value)
    assert dump(engine) == before


def test_non_utf8_file_is_refused_unchanged(engine: Engine, tmp_path: Path) -> None:
    """A Latin-1 file is InvalidInput (save as UTF-8) and nothing is written."""
    before = dump(engine)
    path = write(tmp_path, "email,nom\nzoe@example.org,Zoé\n".encode("latin-1"))
    with pytest.raises(InvalidInput, match="UTF-8"):
        do_import(engine, path)
    assert dump(engine) == before


def test_empty_file_is_refused(engine: Engine, tmp_path: Path) -> None:
    """An empty file is InvalidInput, not an import of nothing."""
    with pytest.raises(InvalidInput, match="empty"):
        do_import(engine, write(tmp_path, ""))


def test_strict_import_with_one_bad_row_imports_nothing(engine: Engine, tmp_path: Path) -> None:
    """With strict=True one invalid row refuses the whole file, naming its line; nothing is written."""
    before = dump(engine)
    path = write(tmp_path, "email\na@example.org\nb@example.org\nbroken\nc@example.org\n")
    with pytest.raises(InvalidInput, match="line 4") as exc:
        do_import(engine, path, strict=True)
    assert "nothing imported" in str(exc.value)
    assert dump(engine) == before


def test_import_never_resubscribes_someone_who_left(engine: Engine, tmp_path: Path) -> None:
    """An address that unsubscribed (from the list, or from everything) is not re-subscribed by an import."""
    with session_scope(engine) as s:
        add_subscriber(s, "left-list@example.org", "news")
        add_subscriber(s, "left-list@example.org", "events")
        add_subscriber(s, "left-all@example.org", "news")
        unsubscribe(s, "left-list@example.org", "news", reason="too many mails")
        unsubscribe(s, "left-all@example.org", reason="gdpr")
    path = write(tmp_path, "email\nleft-list@example.org\nleft-all@example.org\nnew@example.org\n")
    report = do_import(engine, path, "news")
    assert report.kept_unsubscribed == 2 and report.new_subscriptions == 1
    assert set(members(engine, "news")) == {"new@example.org"}
    assert set(members(engine, "news", SubscriptionStatus.REFUSED)) == {"left-list@example.org", "left-all@example.org"}
    # Someone who left every list is not added to another list either.
    report = do_import(engine, path, "events")
    assert set(members(engine, "events")) == {"left-list@example.org", "new@example.org"}
    assert report.kept_unsubscribed == 1
    with session_scope(engine) as s:
        gone = s.exec(select(Subscriber).where(Subscriber.email == "left-all@example.org")).one()
        assert gone.status == SubscriberStatus.UNSUBSCRIBED and gone.unsubscribe_reason == "gdpr"


def test_duplicate_addresses_in_a_file_count_once(engine: Engine, tmp_path: Path) -> None:
    """The same address several times (any case, spaces) is one subscriber, one subscription; first row wins."""
    path = write(tmp_path, "email,nom\nsam@example.org,First\nSAM@example.org,Second\n sam@Example.org ,Third\n")
    report = do_import(engine, path)
    assert (report.new_subscribers, report.new_subscriptions, report.errors) == (1, 1, [])
    assert members(engine, "news") == {"sam@example.org": "First"}


def test_address_normalisation() -> None:
    """Addresses are trimmed and lower-cased; IDN domains stored as ASCII; junk is InvalidInput."""
    assert normalise_email("  Bob.Smith@Example.ORG ") == "bob.smith@example.org"
    assert normalise_email("zoe@exämple.org") == "zoe@xn--exmple-cua.org"
    for bad in [
        "",
        "   ",
        "bob",
        "bob@",
        "@example.org",
        "bob@@example.org",
        "bob smith@example.org",
        "josé@example.org",
    ]:
        with pytest.raises(InvalidInput):
            normalise_email(bad)


def test_add_subscriber_uses_the_normalised_address(engine: Engine) -> None:
    """Adding 'Bob@Example.org' then 'bob@example.org' gives one subscriber."""
    with session_scope(engine) as s:
        first, created = add_subscriber(s, "Bob@Example.org", "news", nom="Bob")
        second, again = add_subscriber(s, " bob@example.org", "news")
        assert (created, again) == (True, False)
        assert first.id == second.id and first.email == "bob@example.org"
        assert len(s.exec(select(Subscriber)).all()) == 1


@pytest.mark.parametrize("nom", ["Bob\r\nBcc: x@example.org", "Bob\nSmith", "Bob\rSmith"])
def test_names_with_cr_or_lf_are_refused(engine: Engine, nom: str) -> None:
    """A name with CR or LF (header injection) is InvalidInput, on its own or through add_subscriber."""
    with pytest.raises(InvalidInput, match="single line"):
        check_name(nom)
    with pytest.raises(InvalidInput), session_scope(engine) as s:
        add_subscriber(s, "bob@example.org", "news", nom=nom)
    assert check_name("  Bob Smith ") == "Bob Smith"


def test_unsubscribe_from_one_list_then_from_all(engine: Engine) -> None:
    """Leaving one list keeps the others; leaving all marks the subscriber with the reason; each is an event."""
    with session_scope(engine) as s:
        add_subscriber(s, "ann@example.org", "news")
        add_subscriber(s, "ann@example.org", "events")
    with session_scope(engine) as s:
        assert unsubscribe(s, "Ann@Example.org", "news", reason="too many mails", source="web") == 1
    assert set(members(engine, "news", SubscriptionStatus.REFUSED)) == {"ann@example.org"}
    assert set(members(engine, "events")) == {"ann@example.org"}
    with session_scope(engine) as s:
        sub = s.exec(select(Subscriber).where(Subscriber.email == "ann@example.org")).one()
        assert sub.status == SubscriberStatus.VALID and sub.unsubscribed_at is None
        assert unsubscribe(s, "ann@example.org", reason="gdpr request") == 1
        assert sub.status == SubscriberStatus.UNSUBSCRIBED
        assert sub.unsubscribe_reason == "gdpr request" and sub.unsubscribed_at is not None
        events = s.exec(select(FeedbackEvent).order_by(FeedbackEvent.id)).all()  # type: ignore[arg-type]
    assert [(e.source, e.kind, e.email) for e in events] == [
        ("web", "unsub", "ann@example.org"),
        ("cli", "unsub", "ann@example.org"),
    ]
    assert "too many mails" in (events[0].detail or "") and "news" in (events[0].detail or "")
    assert "gdpr request" in (events[1].detail or "") and "all lists" in (events[1].detail or "")
    assert all(e.applied_at is not None for e in events)
    assert members(engine, "events") == {}
    assert dict((m.identifier, n) for m, n in list_lists_of(engine)) == {"events": 0, "news": 0}


def list_lists_of(engine: Engine) -> list[tuple[Any, int]]:
    with session_scope(engine) as s:
        return list_lists(s)


def test_unsubscribe_unknown_address_or_list(engine: Engine) -> None:
    """Unsubscribing an unknown address or from an unknown list is NotFound, and records nothing."""
    with session_scope(engine) as s:
        add_subscriber(s, "ann@example.org", "news")
    before = dump(engine)
    with pytest.raises(NotFound, match=r"nobody@example\.org"), session_scope(engine) as s:
        unsubscribe(s, "nobody@example.org", reason="x")
    with pytest.raises(NotFound, match="nolist"), session_scope(engine) as s:
        unsubscribe(s, "ann@example.org", "nolist", reason="x")
    assert dump(engine) == before


def test_history_shows_lists_sendings_and_events(engine: Engine) -> None:
    """history() gives the address's subscriptions, every sending with its outcome, and its events."""
    with session_scope(engine) as s:
        sub, _ = add_subscriber(s, "ann@example.org", "news", nom="Ann")
        add_subscriber(s, "ann@example.org", "events")
        add_subscriber(s, "other@example.org", "news")
        shot = Mailshot(subject="Spring issue", lists="news")
        s.add(shot)
        s.flush()
        assert shot.id is not None and sub.id is not None
        s.add(
            Recipient(
                mailshot_id=shot.id,
                email="ann@example.org",
                subscriber_id=sub.id,
                status="sent",
                tries=1,
                last_attempt_at=utcnow(),
            )
        )
        s.add(Recipient(mailshot_id=shot.id, email="other@example.org", status="fail", tries=5, last_error="550 no"))
        shot_id = shot.id
    with session_scope(engine) as s:
        unsubscribe(s, "ann@example.org", "events", reason="not interested")
    with session_scope(engine) as s:
        h = history(s, "ANN@example.org")
    assert h.subscriber.email == "ann@example.org" and h.subscriber.nom == "Ann"
    assert [(name, status) for name, status, _ in h.subscriptions] == [("events", "refused"), ("news", "valid")]
    assert [(o.mailshot_id, o.subject, o.status, o.tries) for o in h.sendings] == [(shot_id, "Spring issue", "sent", 1)]
    assert h.sendings[0].at is not None and h.sendings[0].last_error is None and not h.sendings[0].archived
    assert [(e.kind, e.email) for e in h.events] == [("unsub", "ann@example.org")]
    with pytest.raises(NotFound), session_scope(engine) as s:
        history(s, "nobody@example.org")


def test_import_of_50000_rows(engine: Engine, tmp_path: Path) -> None:
    """A 50,000-row import completes with every valid row imported and the bad ones reported."""
    rows = [f"user{i}@example.org,User {i},fr\n" for i in range(50_000)]
    rows[10_000] = "broken-address,X,fr\n"  # line 10,002
    path = write(tmp_path, "email,nom,lang\n" + "".join(rows))
    start = time.perf_counter()
    report = do_import(engine, path)
    elapsed = time.perf_counter() - start
    print(f"\n50,000-row import: {elapsed:.2f} s ({50_000 / elapsed:,.0f} rows/s)")
    assert report.rows == 50_000
    assert report.errors and [line for line, _ in report.errors] == [10_002]
    assert (report.new_subscribers, report.new_subscriptions) == (49_999, 49_999)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM subscription WHERE status = 'valid'")).scalar() == 49_999
