"""Sending pace (ratelimit.py): GCRA slots shared through the database, plus a hard cap from the ledger."""

from __future__ import annotations

import bisect
import itertools
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from conftest import engine_for, make_settings
from helpers import create, drive, seed
from mailshot_core.devtools.relay import DevRelay
from mailshot_core.sending.pacing import Cadence, Pacer, cap_wait
from mailshot_core.store import db
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import Recipient

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _simulate(url: str, cadence: Cadence, seconds: float, workers: int = 2) -> list[float]:
    """Workers take turns asking for slots; the fake clock jumps to each granted slot (no sleeping)."""
    engine = db.get_engine(url)
    clock = FakeClock()
    pacers = [Pacer(engine, "smtp", cadence, clock) for _ in range(workers)]
    times: list[float] = []
    while True:
        for pacer in pacers:
            slot = pacer.next_slot()
            offset = (slot - T0).total_seconds()
            if offset >= seconds:
                return sorted(times)
            times.append(offset)
            clock.now = max(clock.now, slot)


def _max_in_window(times: list[float], window: float) -> int:
    """Most events in any half-open window [t, t + window)."""
    return max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times))


@pytest.mark.parametrize(
    ("cadence", "window", "budget"),
    [
        (Cadence(per_day=86_400), 1.0, 1),  # one per second, evenly spread
        (Cadence(per_day=86_400, per_minute=50), 60.0, 50),  # the per-minute cap binds
        (Cadence(per_day=86_400, per_hour=3000), 60.0, 50),  # 3000/h = 50/min spread evenly
    ],
)
def test_cadence_never_exceeds_its_budget_and_averages_within_2_percent(
    db_url: str, cadence: Cadence, window: float, budget: int
) -> None:
    """Two workers, 2 simulated minutes: no window over budget; the average rate is within 2% of it."""
    times = _simulate(db_url, cadence, 120.0)
    assert _max_in_window(times, window) <= budget
    expected = 120.0 / window * budget
    assert abs(len(times) - expected) <= 0.02 * expected, (len(times), expected)


def test_a_day_of_cadence_spreads_evenly(sqlite_url: str) -> None:
    """1,000 per day over a simulated day: exactly one message every 86.4 s, 1,000 in the day."""
    times = _simulate(sqlite_url, Cadence(per_day=1000), 86_400.0, workers=3)
    assert len(times) == 1000
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(times)}
    assert gaps == {86.4}


def test_hard_cap_counts_what_the_ledger_says_was_sent(sqlite_url: str, tmp_path: Path) -> None:
    """Messages already accepted in the last hour (any worker, any pace) hold back the next one."""
    settings = make_settings(sqlite_url)
    engine = engine_for(settings)
    seed(engine, tmp_path, 5)
    mid = create(engine, settings)
    from mailshot_core.sending import claims, sendings

    with session_scope(engine) as session:
        claims.materialise(session, sendings.get(session, mid))
    with session_scope(engine) as session:
        rows = session.exec(select(Recipient).order_by(col(Recipient.id))).all()
        for i, r in enumerate(rows[:4]):
            r.sent_at = T0 - timedelta(minutes=50 - i)  # 4 sent between 08:10 and 08:13 yesterday's hour
            r.status = "sent"
    cadence = Cadence(per_hour=4)
    with session_scope(engine) as session:
        wait = cap_wait(session, "smtp", cadence, T0)
    # The window holds 4 = the budget: wait until the oldest (sent 50 min ago) is an hour old.
    assert wait == pytest.approx(600.0)
    with session_scope(engine) as session:
        assert cap_wait(session, "smtp", Cadence(per_hour=5), T0) == 0.0


def test_cadence_validation() -> None:
    """Rates must be positive; no rate at all means unlimited."""
    assert not Cadence().limited and Cadence().interval() == 0
    assert Cadence(per_day=100).interval() == 864
    with pytest.raises(ValueError, match="positive"):
        Cadence(per_minute=0)


def test_paced_sending_spaces_messages(sqlite_url: str, tmp_path: Path) -> None:
    """A sending created with a per-minute cap is paced by the pipeline (lower bound only: never a flaky upper one)."""
    with DevRelay() as relay:
        settings = make_settings(sqlite_url, relay, smtp_connections=4)
        engine = engine_for(settings)
        seed(engine, tmp_path, 8)
        mid = create(engine, settings, rate_per_minute=600)  # one every 0.1 s
        started = time.monotonic()
        m = drive(engine, settings, mid)
        elapsed = time.monotonic() - started
        stamps = sorted(msg.received_at for msg in relay.messages)
    assert m.sent == 8
    assert elapsed >= 0.7 * 0.95
    assert (stamps[-1] - stamps[0]).total_seconds() >= 0.6


def test_unused_slots_are_given_back_when_a_batch_ends(db_url: str) -> None:
    """A batch that reserved more slots than it used returns them: the pace does not sag between batches."""
    engine = db.get_engine(db_url)
    clock = FakeClock()
    first = Pacer(engine, "smtp", Cadence(per_minute=600), clock)  # 0.1 s apart, 5 slots per reservation
    used = first.next_slot()
    first.close()
    second = Pacer(engine, "smtp", Cadence(per_minute=600), clock)
    assert (second.next_slot() - used).total_seconds() == pytest.approx(0.1)


def test_slots_are_not_given_back_when_someone_reserved_after(db_url: str) -> None:
    """Giving back is compare-and-set: another worker's later reservation is never overlapped."""
    engine = db.get_engine(db_url)
    clock = FakeClock()
    a = Pacer(engine, "smtp", Cadence(per_minute=600), clock)
    b = Pacer(engine, "smtp", Cadence(per_minute=600), clock)
    a.next_slot()
    b_first = b.next_slot()  # reserved after a's 5 slots
    a.close()
    c = Pacer(engine, "smtp", Cadence(per_minute=600), clock)
    assert c.next_slot() >= b_first + timedelta(seconds=0.5)
