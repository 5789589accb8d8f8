"""dispatch-mailshots: due schedules start, orphaned sendings resume, late schedules expire; flows in the harness."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import col

from conftest import engine_for, make_settings
from helpers import create, drive, seed
from mailshot_core.config import Settings, get_settings
from mailshot_core.devtools.relay import DevRelay
from mailshot_core.duration import parse_duration
from mailshot_core.sending import dispatch, sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import Mailshot, MailshotStatus, utcnow


def test_due_schedules_and_sendings_in_progress_are_candidates_late_ones_expire(
    sqlite_url: str, tmp_path: Path
) -> None:
    """At a given time: due init + processing are candidates; init more than START_EXPIRY late is cancelled."""
    settings = make_settings(sqlite_url)
    engine = engine_for(settings)
    seed(engine, tmp_path, 3)
    now = utcnow()
    running = create(engine, settings)
    due = create(engine, settings, start_at=now + timedelta(minutes=10))
    later = create(engine, settings, start_at=now + timedelta(hours=3))
    late = create(engine, settings, start_at=now + timedelta(minutes=20))
    paused = create(engine, settings)
    with session_scope(engine) as session:
        sendings.pause(session, paused)
    clock = now + timedelta(hours=1)  # `due` is 50 min late, `late` 40 min: with a 45 min expiry only `due` expires
    with session_scope(engine) as session:
        expired = dispatch.expire_late(session, parse_duration("45min"), clock)
    assert expired == [due]
    with session_scope(engine) as session:
        m = sendings.get(session, due)
        assert m.status == MailshotStatus.CANCEL and "expired: scheduled for" in (m.status_reason or "")
        assert "MAILSHOT_START_EXPIRY" in (m.status_reason or "")
        assert [c.id for c in dispatch.candidates(session, clock)] == [running, late]
        assert sendings.get(session, later).status == MailshotStatus.INIT
        dispatch.record_run(session, running, "run-1")
    with session_scope(engine) as session:
        assert [c.flow_run_id for c in dispatch.candidates(session, clock)] == ["run-1", None]


@pytest.fixture
def flow_env(monkeypatch: pytest.MonkeyPatch, sqlite_url: str, relay: DevRelay) -> Iterator[Settings]:
    """Flows read their settings from MAILSHOT_* like a deployment does."""
    for k, v in {
        "MAILSHOT_DATABASE_URL": sqlite_url,
        "MAILSHOT_SMTP_HOST": relay.host,
        "MAILSHOT_SMTP_PORT": str(relay.port),
        "MAILSHOT_FROM_EMAIL": "news@example.org",
        "MAILSHOT_RETRY_DELAY": "0",
    }.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_dispatcher_starts_one_run_per_sending_and_not_twice(
    prefect_harness: None, flow_env: Settings, tmp_path: Path
) -> None:
    """A sending without a live run gets a send-mailshot run; while that run is scheduled, no second one."""
    from flows.dispatch_mailshots import dispatch_mailshots
    from flows.send_mailshot import send_mailshot

    send_mailshot.to_deployment(name="dispatch-test").apply()
    engine = engine_for(flow_env)
    seed(engine, tmp_path, 2)
    mid = create(engine, flow_env)
    first = dispatch_mailshots(deployment="send-mailshot/dispatch-test")
    assert first["started"] == [mid] and first["expired"] == []
    with session_scope(engine) as session:
        run_id = sendings.get(session, mid).flow_run_id
    assert run_id
    second = dispatch_mailshots(deployment="send-mailshot/dispatch-test")  # the run is still SCHEDULED: alive
    assert second["started"] == [] and second["running"] == [mid]
    with session_scope(engine) as session:
        assert sendings.get(session, mid).flow_run_id == run_id

    # The run crashed (its machine died): the sending is resumed by a new run.
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(UUID(run_id), Crashed(), force=True)
    third = dispatch_mailshots(deployment="send-mailshot/dispatch-test")
    assert third["started"] == [mid]
    with session_scope(engine) as session:
        assert sendings.get(session, mid).flow_run_id not in (None, run_id)
        dispatch.record_run(session, mid, "4a1c7e0e-0000-4000-8000-000000000000")  # a run this server never knew
    assert dispatch_mailshots(deployment="send-mailshot/dispatch-test")["started"] == [mid]


def test_create_and_send_and_purge_flows(prefect_harness: None, flow_env: Settings, tmp_path: Path) -> None:
    """create-and-send validates and creates (scheduled: left to the dispatcher); purge-stats archives and reports."""
    from flows.create_and_send import create_and_send
    from flows.purge_stats import purge_stats

    engine = engine_for(flow_env)
    seed(engine, tmp_path, 3)
    scheduled = create_and_send(
        subject="Later {{ nom }}", html="<p>Hi {{ nom }}</p>", lists=["news"], start_at=utcnow() + timedelta(days=1)
    )
    assert scheduled["status"] == MailshotStatus.INIT and scheduled["send_run"] is None
    with pytest.raises(Exception, match="unknown list 'nope'"):
        create_and_send(subject="x", html="<p>x</p>", lists=["nope"])
    done = []
    for _ in range(2):
        mid = create(engine, flow_env)
        drive(engine, flow_env, mid)
        done.append(mid)
    with session_scope(engine) as session:
        session.execute(
            update(Mailshot).where(col(Mailshot.id).in_(done)).values(ended_at=utcnow() - timedelta(days=400))
        )
    dry = purge_stats(dry_run=True)
    assert dry["archived"] == [done[0]] and dry["dry_run"]
    assert purge_stats()["archived"] == [done[0]]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["purge-stats"])))
    latest = max(artifacts, key=lambda a: a.created or utcnow())
    assert latest.description and "archived 1 sending(s)" in latest.description
    assert f'"sending": {done[0]}' in str(latest.data)
    with session_scope(engine) as session:
        assert sendings.get(session, done[0]).status == MailshotStatus.ARCHIVE
        assert sendings.get(session, done[1]).status == MailshotStatus.END
