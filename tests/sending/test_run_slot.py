"""A sending's run slot (sending/run_slot.py) and the sendings table rows (sending/overview.py), without Prefect."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

from conftest import engine_for, make_settings
from helpers import create, seed
from mailshot_core.sending import overview, run_slot, sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import utcnow


def test_two_callers_that_read_the_same_slot_never_both_take_it(db_url: str, tmp_path: Path) -> None:
    """Eight threads read the slot, then all try to reserve it from what they read: exactly one wins,
    on SQLite and PostgreSQL (two dispatcher ticks at once never both start a run)."""
    settings = make_settings(db_url)
    engine = engine_for(settings)
    seed(engine, tmp_path, 1)
    mid = create(engine, settings)
    barrier = threading.Barrier(8)
    won: list[str] = []

    def tick() -> None:
        with session_scope(engine) as session:
            seen = run_slot.current_run(session, mid)
        barrier.wait()
        with session_scope(engine) as session:
            token = run_slot.reserve(session, mid, seen)
        if token:
            won.append(token)

    threads = [threading.Thread(target=tick) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(won) == 1
    with session_scope(engine) as session:
        assert run_slot.current_run(session, mid) == won[0]
        assert run_slot.settle(session, mid, won[0], "run-1")
        assert not run_slot.settle(session, mid, won[0], "run-2")  # our placeholder is gone: never overwrite
        assert run_slot.current_run(session, mid) == "run-1"
        token = run_slot.reserve(session, mid, "run-1")
        assert token is not None
        run_slot.release(session, mid, token, "run-1")  # the run could not be created: as it was
        assert run_slot.current_run(session, mid) == "run-1"


def test_a_placeholder_is_alive_while_fresh_and_taken_over_once_stale() -> None:
    """A placeholder younger than its TTL means a run is being created; older or unreadable, it is a
    crashed caller's leftover; anything else is not a placeholder (None: ask Prefect)."""
    now = utcnow()
    assert run_slot.placeholder_is_fresh(run_slot.placeholder(now - timedelta(seconds=5)), now) is True
    assert run_slot.placeholder_is_fresh(run_slot.placeholder(now - run_slot.PLACEHOLDER_TTL), now) is False
    assert run_slot.placeholder_is_fresh("pending:yesterday", now) is False
    assert run_slot.placeholder_is_fresh("4a1c7e0e-0000-4000-8000-000000000000", now) is None
    assert len(run_slot.placeholder(now)) <= 64  # mailshot.flow_run_id is VARCHAR(64)


def test_upcoming_lists_scheduled_sendings_not_yet_due(sqlite_url: str, tmp_path: Path) -> None:
    """Only `init` sendings whose start time is ahead: drafts, due and running ones are not upcoming."""
    settings = make_settings(sqlite_url)
    engine = engine_for(settings)
    seed(engine, tmp_path, 1)
    now = utcnow()
    later = create(engine, settings, start_at=now + timedelta(hours=2))
    soon = create(engine, settings, start_at=now + timedelta(minutes=5))
    create(engine, settings)  # processing
    create(engine, settings, send_now=False)  # draft
    with session_scope(engine) as session:
        found = run_slot.upcoming(session, now)
        assert [u.id for u in found] == [soon, later]
        assert found[0].start_at == now + timedelta(minutes=5)
        assert run_slot.upcoming(session, now + timedelta(hours=3)) == []


def test_sendings_table_rows(sqlite_url: str, tmp_path: Path) -> None:
    """Newest first: id, subject (a `|` cannot cut the markdown row), status in words, % accepted (a dash,
    not "-" which markdown makes a bullet), lists, dates, and the follow-up page's link only when a base
    URL is given."""
    settings = make_settings(sqlite_url)
    engine = engine_for(settings)
    seed(engine, tmp_path, 4)
    first = create(engine, settings, subject="Issue 1 | news")
    draft = create(engine, settings, subject="Issue 2", send_now=False)
    with session_scope(engine) as session:
        m = sendings.get(session, first)
        m.total, m.sent = 4, 3
        session.add(m)
    with session_scope(engine) as session:
        rows = overview.sendings_table(session, "https://news.example.org/")
        bare = overview.sendings_table(session, None, limit=1)
    assert [r["id"] for r in rows] == [str(draft), str(first)]
    assert rows[0]["status"] == "draft" and rows[0]["progress"] == "—" and rows[0]["start"] == "—"
    assert rows[1]["status"] == "sending" and rows[1]["progress"] == "75.0 %" and rows[1]["recipients"] == "4"
    assert rows[1]["subject"] == "Issue 1 \\| news"
    assert rows[1]["lists"] == "news" and len(rows[1]["created"]) == len("2026-12-01 08:00")
    assert rows[1]["page"] == f"[open](https://news.example.org/admin/sendings/{first})"
    assert [list(r) for r in bare] == [[k for k in rows[0] if k != "page"]]
