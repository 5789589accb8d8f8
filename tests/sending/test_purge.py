"""purge-stats: old finished sendings are archived, counters kept exactly, the newest one survives."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from conftest import engine_for, make_settings
from helpers import create, drive, seed
from mailshot_core.audience import subscribers
from mailshot_core.config import Settings
from mailshot_core.devtools.relay import DevRelay, FaultPlan
from mailshot_core.duration import parse_duration
from mailshot_core.sending import archive, claims, sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import DeliveryOutcome, Mailshot, MailshotStatus, Recipient, utcnow
from test_cli import _dump, cli  # noqa: F401 (the fixture)


def _feedback(engine: Engine, mailshot_id: int, statuses: dict[str, str]) -> None:
    """What apply-feedback does to rows and counters (issue 4's pipeline is not needed for this rule)."""
    with session_scope(engine) as session:
        for email, status in statuses.items():
            session.execute(
                update(Recipient)
                .where(col(Recipient.mailshot_id) == mailshot_id, col(Recipient.email) == email)
                .values(status=status)
            )
        m = sendings.get(session, mailshot_id)
        for name, value in sendings.recount(session, mailshot_id).items():
            setattr(m, name, value)
        session.add(m)


def _ended(engine: Engine, mailshot_id: int, days_ago: int) -> None:
    with session_scope(engine) as session:
        session.execute(
            update(Mailshot).where(col(Mailshot.id) == mailshot_id).values(ended_at=utcnow() - timedelta(days=days_ago))
        )


def _counters(engine: Engine) -> dict[int, dict[str, int]]:
    with session_scope(engine) as session:
        return {m.id: sendings.stored_counters(m) for m in session.exec(select(Mailshot)).all() if m.id}


def _rows(engine: Engine, mailshot_id: int) -> int:
    with session_scope(engine) as session:
        return int(
            session.exec(select(func.count()).select_from(Recipient).where(Recipient.mailshot_id == mailshot_id)).one()
        )


def _four_sendings(db_url: str, tmp_path: Path) -> tuple[Engine, Settings, list[int]]:
    """Three ended sendings (with a 550 failure and feedback) and a cancelled one."""
    plan = FaultPlan({"u3@example.com": ["550 5.1.1 No such user"]})
    with DevRelay(faults=plan) as relay:
        settings = make_settings(db_url, relay, batch_size=50)
        engine = engine_for(settings)
        seed(engine, tmp_path, 12)
        ids = []
        for n in range(3):
            mid = create(engine, settings, subject=f"Issue {n}")
            drive(engine, settings, mid)
            ids.append(mid)
    _feedback(engine, ids[0], {"u1@example.com": "read", "u2@example.com": "clic", "u4@example.com": "spam"})
    _feedback(engine, ids[1], {"u5@example.com": "bounce", "u6@example.com": "unsub"})
    cancelled = create(engine, settings, subject="Cancelled")
    with session_scope(engine) as session:
        m = sendings.get(session, cancelled)
        claims.materialise(session, m)
        sendings.cancel(session, cancelled)
    ids.append(cancelled)
    return engine, settings, ids


def test_purge_keeps_every_counter_and_removes_the_rows(db_url: str, tmp_path: Path) -> None:
    """Sendings ended > 12 months ago are archived: rows gone, counters identical, outcomes kept."""
    engine, _, (a, b, recent, cancelled) = _four_sendings(db_url, tmp_path)
    for mid, days in ((a, 430), (b, 400), (cancelled, 390), (recent, 20)):
        _ended(engine, mid, days)
    before = _counters(engine)
    assert before[a]["nb_read"] == 2 and before[a]["nb_clic"] == 1 and before[a]["nb_spam"] == 1
    assert before[b]["nb_bounce"] == 1 and before[b]["nb_unsub"] == 1 and before[a]["failed"] == 1
    assert before[cancelled]["nb_kill"] == 12 and before[cancelled]["failed"] == 0  # every recipient killed

    dry = archive.purge(engine, parse_duration("12 months"), dry_run=True)
    assert [x.id for x in dry.archived] == [a, b, cancelled]
    assert _counters(engine) == before and _rows(engine, a) == 12  # a dry run changes nothing

    report = archive.purge(engine, parse_duration("12 months"))
    assert [x.id for x in report.archived] == [a, b, cancelled]
    assert [x.recipients for x in report.archived] == [12, 12, 12]
    assert report.repaired == []
    assert _counters(engine) == before  # every counter of every sending, identical
    with session_scope(engine) as session:
        statuses = {m.id: m.status for m in session.exec(select(Mailshot)).all()}
        assert statuses == {a: "archive", b: "archive", cancelled: "archive", recent: "end"}
        # The MAX_FAIL evidence survives: u3's 550 failures in the archived sendings, by sending.
        assert [(o.mailshot_id, o.status) for o in archive.outcomes(session, "u3@example.com")] == [
            (cancelled, "kill"),
            (b, "fail"),
            (a, "fail"),
        ]
        assert session.exec(select(func.count()).select_from(DeliveryOutcome)).one() == 36
        # ... and so does the address's history (`mailshot subscribers show`, the subscriber page).
        shown = [(o.mailshot_id, o.status, o.archived) for o in subscribers.history(session, "u3@example.com").sendings]
        assert shown == [(a, "fail", True), (b, "fail", True), (recent, "fail", False), (cancelled, "kill", True)]
    for mid in (a, b, cancelled):
        assert _rows(engine, mid) == 0
    assert _rows(engine, recent) == 12
    assert "archived 3 sending(s)" in report.summary()
    # A second purge has nothing left to do.
    assert archive.purge(engine, parse_duration("12 months")).archived == []


def test_the_most_recent_sending_is_never_archived(sqlite_url: str, tmp_path: Path) -> None:
    """Even when every sending is older than the cutoff, the latest finished one keeps its rows."""
    engine, _, ids = _four_sendings(sqlite_url, tmp_path)
    for n, mid in enumerate(ids):
        _ended(engine, mid, 800 - n)
    report = archive.purge(engine, parse_duration("0d"))
    assert report.kept_latest == ids[-1]
    assert [x.id for x in report.archived] == ids[:-1]
    assert _rows(engine, ids[-1]) == 12
    # A newer sending that is already archived (an imported SPIP courrier) does not count as the latest.
    with session_scope(engine) as session:
        session.add(Mailshot(subject="imported", status=MailshotStatus.ARCHIVE, ended_at=utcnow()))
    assert archive.purge(engine, parse_duration("0d")).archived == []
    assert _rows(engine, ids[-1]) == 12


def test_outcomes_are_bounded_per_address(sqlite_url: str) -> None:
    """Only the OUTCOMES_KEPT most recent archived outcomes of an address are kept (older ones can't count)."""
    engine = engine_for(make_settings(sqlite_url))
    with session_scope(engine) as session:
        for n in range(archive.OUTCOMES_KEPT + 3):
            m = Mailshot(subject=f"s{n}", status=MailshotStatus.ARCHIVE)
            session.add(m)
            session.flush()
            assert m.id is not None
            session.add(DeliveryOutcome(email="a@example.com", mailshot_id=m.id, status="fail", tries=2))
            session.add(DeliveryOutcome(email="b@example.com", mailshot_id=m.id, status="sent", tries=1))
    with session_scope(engine) as session:
        assert archive.prune_outcomes(session) == 6
        kept = archive.outcomes(session, "a@example.com")
        assert len(kept) == archive.OUTCOMES_KEPT and kept[0].mailshot_id == archive.OUTCOMES_KEPT + 3


def test_only_finished_sendings_are_archived(sqlite_url: str, tmp_path: Path) -> None:
    """A sending in progress or paused is never archived, however old."""
    settings = make_settings(sqlite_url)
    engine = engine_for(settings)
    seed(engine, tmp_path, 3)
    running = create(engine, settings)
    paused = create(engine, settings)
    with session_scope(engine) as session:
        sendings.pause(session, paused)
        session.execute(update(Mailshot).values(updated_at=utcnow() - timedelta(days=900)))
    assert archive.purge(engine, parse_duration("1d")).archived == []
    with session_scope(engine) as session:
        assert {m.status for m in session.exec(select(Mailshot)).all()} == {"processing", "pause"}
        with pytest.raises(Exception, match="only ended or cancelled"):
            archive.archive(session, sendings.get(session, running), utcnow())


def test_cli_purge_dry_run_and_bad_durations(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """`mailshot purge --dry-run` lists and changes nothing; a bad duration is one clear error, nothing changed."""
    url = f"sqlite:///{cli.db_file}"
    engine, _, ids = _four_sendings(url, tmp_path)
    for n, mid in enumerate(ids):
        _ended(engine, mid, 500 - n)
    before = _dump(cli.db_file)
    code, out, _ = cli("purge", "--older-than", "12 months", "--dry-run")
    assert code == 0, out
    assert "would archive 3 sending(s)" in out and f"sending {ids[-1]} is the most recent" in out
    for bad, why in (("12", "not a duration"), ("5m", "ambiguous"), ("3 parsecs", "unknown unit")):
        code, out, err = cli("purge", "--older-than", bad)
        assert code == 1 and err.startswith("error: --older-than:") and why in err, err
    code, _, err = cli("purge", env={"MAILSHOT_PURGE_AFTER": "soon"})
    assert code == 1 and "MAILSHOT_PURGE_AFTER" in err
    assert _dump(cli.db_file) == before
    code, out, _ = cli("purge")  # MAILSHOT_PURGE_AFTER: 12 months
    assert code == 0 and "archived 3 sending(s)" in out
