"""The web app's on-arrival applier (feedback/applier.py): ESP events change recipients without
waiting for the hourly apply-feedback sweep, and events deferred by a send in progress are tried again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlmodel import col, select

from conftest import engine_for, make_settings
from fakes.webhooks import mailjet_event
from helpers import create, seed
from mailshot_core.feedback import esp_events, inbox
from mailshot_core.feedback.applier import Applier
from mailshot_core.feedback.inbox import ApplyReport
from mailshot_core.sending import lifecycle
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import Recipient, RecipientStatus


def _sending(url: str, tmp: Path, n: int) -> tuple[Any, int, dict[str, int]]:
    settings = make_settings(url)
    engine = engine_for(settings)
    seed(engine, tmp, n)
    mid = create(engine, settings)
    lifecycle.start_sending(engine, settings, mid)  # materialise the recipient rows
    with session_scope(engine) as session:
        session.execute(update(Recipient).where(col(Recipient.mailshot_id) == mid).values(status="sent"))
        ids = dict(session.execute(select(Recipient.email, Recipient.id).where(Recipient.mailshot_id == mid)).all())
    return engine, mid, ids


def _status(engine: Any, rid: int) -> str:
    with session_scope(engine) as session:
        return session.exec(select(Recipient.status).where(Recipient.id == rid)).one()


def test_submitted_events_are_applied_once_each_by_the_background_thread(sqlite_url: str, tmp_path: Path) -> None:
    """Ids handed over by several webhooks are applied (statuses) by one background thread, each id
    tried once (ids that arrive while it works are merged into its next round), none left to the sweep."""
    engine, mid, ids = _sending(sqlite_url, tmp_path, 20)
    rounds: list[list[int]] = []

    def recording(engine: Any, **kw: Any) -> ApplyReport:
        rounds.append(list(kw["ids"]))
        return inbox.apply_pending(engine, **kw)

    applier = Applier(engine, max_fail=3, apply=recording)
    stored = []
    for i in range(20):
        body = json.dumps([mailjet_event("open", f"u{i}@example.com", mid, ids[f"u{i}@example.com"])]).encode()
        stored.append(inbox.store(engine, esp_events.mailjet(body)))
        applier.submit(stored[-1].ids)
    assert applier.wait_idle(60)
    assert all(len(r.ids) == 1 for r in stored)
    assert applier.applied == 20
    assert sorted(i for r in rounds for i in r) == sorted(i for r in stored for i in r.ids)  # each id tried once
    assert all(_status(engine, rid) == RecipientStatus.READ for rid in ids.values())
    assert inbox.apply_all(engine).applied == 0  # nothing left for the sweep


def test_events_deferred_by_a_send_in_progress_are_tried_again(sqlite_url: str, tmp_path: Path) -> None:
    """An event about a recipient being handed over waits (the ledger owns that row); the applier tries
    it again after a delay and applies it once the row is settled, without the sweep."""
    engine, mid, ids = _sending(sqlite_url, tmp_path, 2)
    rid = ids["u0@example.com"]
    with session_scope(engine) as session:
        session.execute(update(Recipient).where(col(Recipient.id) == rid).values(status=RecipientStatus.SENDING))
    reports: list[ApplyReport] = []

    def settle_after_first_try(engine: Any, **kw: Any) -> ApplyReport:
        reports.append(inbox.apply_pending(engine, **kw))
        if len(reports) == 1:  # the ledger records the reply between the two attempts
            with session_scope(engine) as session:
                session.execute(update(Recipient).where(col(Recipient.id) == rid).values(status=RecipientStatus.SENT))
        return reports[-1]

    applier = Applier(engine, max_fail=3, retry_after=(0.05,), apply=settle_after_first_try)
    body = json.dumps([mailjet_event("click", "u0@example.com", mid, rid)]).encode()
    applier.submit(inbox.store(engine, esp_events.mailjet(body)).ids)
    assert applier.wait_idle(60)
    assert [(r.applied, r.deferred) for r in reports] == [(0, 1), (1, 0)]
    assert _status(engine, rid) == RecipientStatus.CLIC


def test_deferred_events_are_left_to_the_sweep_after_the_last_retry(sqlite_url: str, tmp_path: Path) -> None:
    """A row still in flight after every retry keeps its event pending: the hourly sweep applies it."""
    engine, mid, ids = _sending(sqlite_url, tmp_path, 1)
    rid = ids["u0@example.com"]
    with session_scope(engine) as session:
        session.execute(update(Recipient).where(col(Recipient.id) == rid).values(status=RecipientStatus.SENDING))
    applier = Applier(engine, max_fail=3, retry_after=(0.01, 0.01))
    body = json.dumps([mailjet_event("open", "u0@example.com", mid, rid)]).encode()
    applier.submit(inbox.store(engine, esp_events.mailjet(body)).ids)
    assert applier.wait_idle(60)
    assert applier.applied == 0 and _status(engine, rid) == RecipientStatus.SENDING
    with session_scope(engine) as session:
        session.execute(update(Recipient).where(col(Recipient.id) == rid).values(status=RecipientStatus.SENT))
    assert inbox.apply_all(engine).applied == 1
