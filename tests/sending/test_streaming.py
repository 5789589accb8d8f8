"""Issue 16: recipients become claimable while they are being materialised, chunk by chunk.

The streamed materialisation must keep the whole one's rules: only valid subscribers with a valid
subscription to one of the sending's lists (a pending double opt-in gets nothing), each address once
across lists, counters derivable from the rows at every commit, a cancel honoured between chunks,
and a run killed half-way goes on where it stopped.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import select

from conftest import engine_for, make_settings
from helpers import create, recipients, seed
from mailshot_core.devtools.relay import DevRelay
from mailshot_core.sending import claims, lifecycle, pipeline, sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import MailshotStatus, Recipient, utcnow

# u0..u29 on "news", u0..u19 also on "other" (the same subscribers: deduplicated), and two who must
# get nothing: u3's address is unconfirmed, u25's only subscription is pending.
EXPECTED = {f"u{i}@example.com" for i in range(30)} - {"u3@example.com", "u25@example.com"}


def _audience(engine: object, tmp_path: Path) -> None:
    seed(engine, tmp_path, 30)  # type: ignore[arg-type]
    seed(engine, tmp_path, 20, list_name="other")  # type: ignore[arg-type]
    seed(engine, tmp_path, 5, list_name="elsewhere", domain="example.net")  # type: ignore[arg-type]
    with session_scope(engine) as session:  # type: ignore[arg-type]
        session.execute(text("UPDATE subscriber SET status = 'pending' WHERE email = 'u3@example.com'"))
        session.execute(
            text(
                "UPDATE subscription SET status = 'pending' "
                "WHERE subscriber_id = (SELECT id FROM subscriber WHERE email = 'u25@example.com')"
            )
        )


def _counters_match(engine: object, mailshot_id: int) -> None:
    with session_scope(engine) as session:  # type: ignore[arg-type]
        m = sendings.get(session, mailshot_id)
        assert sendings.stored_counters(m) == sendings.recount(session, mailshot_id)


def test_chunks_add_the_same_recipients_as_the_whole_materialisation(db_url: str, tmp_path: Path) -> None:
    """Chunk by chunk: the same rows as one INSERT .. SELECT, total right after every chunk, and an
    interrupted materialisation resumed from materialised_up_to adds only what is missing."""
    settings = make_settings(db_url)
    engine = engine_for(settings)
    _audience(engine, tmp_path)
    whole, streamed = create(engine, settings, ("news", "other")), create(engine, settings, ("news", "other"))
    with session_scope(engine) as session:
        claims.materialise(session, sendings.get(session, whole))
    chunks = 0
    after: int | None = 0
    while after is not None:
        if chunks == 2:  # a new run: where did the last one stop?
            with session_scope(engine) as session:
                after = claims.materialised_up_to(session, streamed)
            assert after > 0
        with session_scope(engine) as session:
            after = claims.materialise_next(session, sendings.get(session, streamed, lock=True), after, 7)
        chunks += 1
        _counters_match(engine, streamed)
    assert chunks == 5  # 28 recipients in chunks of 7, then the one that finds nothing left
    assert set(recipients(engine, streamed)) == set(recipients(engine, whole)) == EXPECTED
    with session_scope(engine) as session:
        m = sendings.get(session, streamed)
        assert (m.materialised, m.total) == (True, len(EXPECTED))


def test_a_streamed_sending_sends_everyone_once_while_it_materialises(
    db_url: str, tmp_path: Path, relay: DevRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start_sending(stream=...) adds the first chunk only; batches are sent while the rest comes in;
    every expected recipient gets one message and nobody else any."""
    monkeypatch.setattr(lifecycle, "CHUNK", 4)
    settings = make_settings(db_url, relay, batch_size=3)
    engine = engine_for(settings)
    _audience(engine, tmp_path)
    mid = create(engine, settings, ("news", "other"))
    started = lifecycle.start_sending(engine, settings, mid, stream=4)
    assert started.total == 4 and started.materialiser is not None
    try:
        for _ in range(1000):
            step = lifecycle.next_step(engine, settings, mid)
            if step.action == "send":
                pipeline.send_batch(engine, settings, mid)
            elif step.action == "wait":
                time.sleep(step.seconds)
            else:
                break
        assert step.action == "done"
        started.materialiser.check()
    finally:
        started.materialiser.stop()
    m = lifecycle.end_sending(engine, mid, finished=True)
    received = Counter(msg.rcpt_tos[0] for msg in relay.messages)
    assert set(received) == EXPECTED and set(received.values()) == {1}
    assert (m.status, m.materialised, m.total, m.sent) == (MailshotStatus.END, True, len(EXPECTED), len(EXPECTED))
    _counters_match(engine, mid)


def test_a_cancel_between_chunks_stops_the_materialisation(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while recipients are still being added: the materialiser adds no todo row after it."""
    monkeypatch.setattr(lifecycle, "CHUNK", 4)
    settings = make_settings(db_url)
    engine = engine_for(settings)
    _audience(engine, tmp_path)
    mid = create(engine, settings, ("news", "other"))
    started = lifecycle.start_sending(engine, settings, mid, stream=4)
    assert started.materialiser is not None
    with session_scope(engine) as session:
        sendings.cancel(session, mid)
    try:
        assert started.materialiser.ended(timeout=60)
    finally:
        started.materialiser.stop()
    with session_scope(engine) as session:
        statuses = Counter(session.exec(select(Recipient.status).where(Recipient.mailshot_id == mid)).all())
    assert set(statuses) == {"kill"}
    _counters_match(engine, mid)


def test_the_head_start_sends_small_then_full_batches_until_the_pool_has_claimed(
    db_url: str, tmp_path: Path, relay: DevRelay
) -> None:
    """send_head_start: a first batch of a few messages per connection, then the pool is started, then
    a batch topped up a whole batch at a time until a worker of another process is registered on the
    sending (workers_besides), which then ends with what it holds."""
    settings = make_settings(db_url, relay, batch_size=10, smtp_connections=2)
    engine = engine_for(settings)
    seed(engine, tmp_path, 40)
    mid = create(engine, settings)
    lifecycle.start_sending(engine, settings, mid)
    pool_started_at: list[int] = []
    looked: list[int] = []

    def pool_ready() -> bool:
        with session_scope(engine) as session:
            if len(looked) == 2:  # a worker process registers on the sending
                claims.register_worker(session, mid, f"elsewhere:{os.getpid() + 1}:x", utcnow())
            looked.append(len(relay.messages))
            return claims.workers_besides(session, mid, os.getpid()) > 0

    report = pipeline.send_head_start(
        engine,
        settings,
        mid,
        start_pool=lambda: pool_started_at.append(len(relay.messages)),
        pool_ready=pool_ready,
    )
    assert pool_started_at == [8]  # 4 per connection first, then the pool starts
    # Asked before the second batch, at its top-ups (the second registers the worker), and at its end.
    assert len(looked) == 4 and looked[0] == 8 and looked[-1] == 28
    assert report.sent == 28 and len({m.rcpt_tos[0] for m in relay.messages}) == 28  # 8, 10, one top-up of 10
    _counters_match(engine, mid)
