"""Load: 20,000 webhook events in batches of 100, a tenth of them duplicates, posted over HTTP (the web
app applies them on arrival) while apply-feedback runs concurrently: 0 lost, 0 applied twice (DESIGN §4,
issue 4)."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update

from conftest import engine_for, make_settings
from fakes.webhooks import SnsSigner, WebServer, basic, free_socket, mailjet_event, webhook_settings
from helpers import create, seed
from mailshot_core.feedback import inbox
from mailshot_core.sending import lifecycle, sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import FeedbackEvent, Recipient, Subscriber

RECIPIENTS = 2000
PER_RECIPIENT = 9  # 18,000 distinct events
DUPLICATES = 2000  # + 2,000 repeats = 20,000 posted
BATCH = 100


def test_20000_events_with_duplicates_while_applying(db_url: str, tmp_path: Path) -> None:
    """Every distinct event is stored once and applied exactly once, whatever the interleaving of
    posts (4 clients), the web app's on-arrival applier and apply runs (2 at a time); statuses and
    counters end as a recount says."""
    sock = free_socket()
    settings = make_settings(db_url, **webhook_settings(sock.getsockname()[1]))
    engine = engine_for(settings)
    seed(engine, tmp_path, RECIPIENTS)
    mid = create(engine, settings)
    lifecycle.start_sending(engine, settings, mid)  # materialise, then pretend every message was accepted
    with session_scope(engine) as session:
        session.execute(update(Recipient).where(Recipient.mailshot_id == mid).values(status="sent"))
        sendings.finish(session, mid)
        ids = dict(session.execute(select(Recipient.email, Recipient.id).where(Recipient.mailshot_id == mid)).all())

    rng = random.Random(4)
    unique: list[dict[str, Any]] = []
    for n, (email, rid) in enumerate(sorted(ids.items())):
        kinds = ["sent", "open", "click", "open", "click", "open", "click", "open", "sent"]
        if n % 20 == 0:  # 1 in 20 complains: 100 unsubscriptions on the way
            kinds[rng.randrange(PER_RECIPIENT)] = "spam"
        unique += [mailjet_event(kind, email, mid, rid, time=1_700_000_000 + k) for k, kind in enumerate(kinds)]
    posted = unique + rng.sample(unique, DUPLICATES)
    rng.shuffle(posted)
    batches = [posted[i : i + BATCH] for i in range(0, len(posted), BATCH)]
    assert len(posted) == 20_000 and len(batches) == 200

    applied: list[int] = []
    posting = threading.Event()
    posting.set()

    def apply_loop() -> None:
        # Back to back, with a short pause: the flow runs every minute, here as often as it can be
        # useful without spinning on an empty inbox.
        while posting.is_set():
            applied.append(inbox.apply_all(engine).applied)
            time.sleep(0.05)

    with WebServer(settings, sock, SnsSigner()) as web, ThreadPoolExecutor(6) as pool:
        appliers = [pool.submit(apply_loop) for _ in range(2)]

        def send(batch: list[dict[str, Any]]) -> dict[str, int]:
            r = web.client.post("/webhooks/mailjet", json=batch, headers=basic())
            assert r.status_code == 200, r.text
            return dict(r.json())

        try:
            replies = list(pool.map(send, batches, chunksize=1))
        finally:  # a failed post must fail the test, not leave the appliers looping forever
            posting.clear()
        for f in appliers:
            f.result()
        web.settle()
        applied.append(web.applier.applied)
    applied.append(inbox.apply_all(engine).applied)

    assert sum(r["stored"] for r in replies) == len(unique)  # 0 lost
    assert sum(r["duplicates"] for r in replies) == DUPLICATES
    assert sum(applied) == len(unique)  # each applied exactly once, across every run
    with session_scope(engine) as session:
        count = session.execute(
            select(func.count())
            .select_from(FeedbackEvent)
            .where(FeedbackEvent.source == "mailjet", FeedbackEvent.provider_event_id.is_not(None))
        ).scalar_one()
        pending = session.execute(
            select(func.count()).select_from(FeedbackEvent).where(FeedbackEvent.applied_at.is_(None))
        ).scalar_one()
        statuses = dict(
            session.execute(
                select(Recipient.status, func.count()).where(Recipient.mailshot_id == mid).group_by(Recipient.status)
            ).all()
        )
        m = sendings.get(session, mid)
        assert sendings.stored_counters(m) == sendings.recount(session, mid)
        gone = session.execute(
            select(func.count()).select_from(Subscriber).where(Subscriber.status == "unsubscribed")
        ).scalar_one()
        unsub_records = session.execute(
            select(func.count())
            .select_from(FeedbackEvent)
            .where(FeedbackEvent.kind == "unsub", FeedbackEvent.source == "mailjet")
        ).scalar_one()
    assert count == len(unique) and pending == 0
    assert statuses == {"spam": RECIPIENTS // 20, "clic": RECIPIENTS - RECIPIENTS // 20}
    assert (m.nb_spam, m.nb_clic, m.sent) == (100, 1900, 2000)
    assert gone == unsub_records == 100  # unsubscribed once each, however many events said so
