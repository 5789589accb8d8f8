"""dispatch-mailshots: due schedules start, scheduled ones get a run for their start time, orphaned
sendings resume, late schedules expire, concurrent ticks start one run; flows in the harness."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prefect.client.schemas.objects import StateType
from sqlalchemy import update
from sqlmodel import col

from conftest import REPO, engine_for, make_settings, runs_tagged
from helpers import create, drive, seed
from mailshot_core.config import Settings, get_settings
from mailshot_core.devtools.relay import DevRelay
from mailshot_core.duration import parse_duration
from mailshot_core.sending import dispatch, run_slot, sendings
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


def test_purge_flow_archives_and_reports(prefect_harness: None, flow_env: Settings, tmp_path: Path) -> None:
    """purge-stats archives finished sendings older than the cutoff (the latest kept) and reports it."""
    from flows.purge_stats import purge_stats

    engine = engine_for(flow_env)
    seed(engine, tmp_path, 3)
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


def test_a_scheduled_sending_gets_a_run_for_its_start_time_and_a_new_one_when_rescheduled(
    send_now_deployment: str, flow_env: Settings, tmp_path: Path, test_start: datetime
) -> None:
    """The tick gives a scheduled sending without a run one run of send-mailshot/now, scheduled 10 s
    after its start time (runners pick runs up to 10 s early) and tagged mailshot:<id>; a later tick
    keeps it; once the sending is rescheduled, the waiting run is deleted and replaced."""
    from flows.dispatch_mailshots import dispatch_mailshots
    from flows.sending_runs import START_MARGIN

    engine = engine_for(flow_env)
    seed(engine, tmp_path, 1)
    start = (utcnow() + timedelta(hours=2)).replace(microsecond=0)
    mid = create(engine, flow_env, start_at=start)
    first = dispatch_mailshots()
    assert first["scheduled"] == [mid] and mid not in first["started"]
    (run,) = runs_tagged(mid, test_start)
    assert run.deployment_id is not None and run.state.type == StateType.SCHEDULED  # type: ignore[attr-defined]
    assert run.state.state_details.scheduled_time == start + START_MARGIN  # type: ignore[attr-defined]
    with session_scope(engine) as session:
        assert sendings.get(session, mid).flow_run_id == str(run.id)  # type: ignore[attr-defined]
    assert mid not in dispatch_mailshots()["scheduled"]
    assert len(runs_tagged(mid, test_start)) == 1

    later = start + timedelta(days=1)
    with session_scope(engine) as session:
        sendings.schedule(session, mid, later)
    assert dispatch_mailshots()["scheduled"] == [mid]
    (replacement,) = runs_tagged(mid, test_start)  # the first one was deleted: it had not run
    assert replacement.state.state_details.scheduled_time == later + START_MARGIN  # type: ignore[attr-defined]


def test_ticks_running_at_once_start_one_run_per_sending(
    send_now_deployment: str, flow_env: Settings, tmp_path: Path, test_start: datetime
) -> None:
    """Four callers of ensure_run at the same moment (what concurrent ticks do for each sending), on a
    sending without a run: the compare-and-set lets one create a run, the others create none."""
    from flows.sending_runs import ensure_run

    engine = engine_for(flow_env)
    seed(engine, tmp_path, 1)
    mid = create(engine, flow_env)
    barrier = threading.Barrier(4)
    served = []

    def tick() -> None:
        barrier.wait()
        served.append(ensure_run(engine, mid))

    threads = [threading.Thread(target=tick) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(s.created for s in served) == [False, False, False, True]
    (run,) = runs_tagged(mid, test_start)
    with session_scope(engine) as session:
        assert sendings.get(session, mid).flow_run_id == str(run.id)  # type: ignore[attr-defined]


def test_a_crashed_ticks_placeholder_is_taken_over_once_stale(
    send_now_deployment: str, flow_env: Settings, tmp_path: Path, test_start: datetime
) -> None:
    """A placeholder left by a tick that died before creating its run blocks nobody for long: while fresh
    it counts as a run being created, once older than its TTL the next tick starts the run."""
    from flows.dispatch_mailshots import dispatch_mailshots

    engine = engine_for(flow_env)
    seed(engine, tmp_path, 1)
    mid = create(engine, flow_env)
    with session_scope(engine) as session:
        dispatch.record_run(session, mid, run_slot.placeholder(utcnow()))
    assert mid not in dispatch_mailshots()["started"] and runs_tagged(mid, test_start) == []
    with session_scope(engine) as session:
        dispatch.record_run(session, mid, run_slot.placeholder(utcnow() - run_slot.PLACEHOLDER_TTL))
    assert mid in dispatch_mailshots()["started"]
    assert len(runs_tagged(mid, test_start)) == 1


def test_quiet_scheduled_runs_log_nothing_above_debug(prefect_harness: None, flow_env: Settings) -> None:
    """On an idle site (no sending, no event, no bounce mailbox) the dispatcher, the feedback sweep and
    the bounce reader log nothing above DEBUG from our code: a few hundred quiet runs a day stay quiet."""
    from flows.apply_feedback import apply_feedback
    from flows.dispatch_mailshots import dispatch_mailshots
    from flows.ingest_bounces import ingest_bounces

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    run_logger = logging.getLogger("prefect.flow_runs")  # get_run_logger()'s logger
    level = run_logger.level
    run_logger.setLevel(logging.DEBUG)  # the suite runs Prefect at WARNING: DEBUG records must exist
    run_logger.addHandler(handler)
    try:
        dispatch_mailshots()
        apply_feedback()
        ingest_bounces()
    finally:
        run_logger.removeHandler(handler)
        run_logger.setLevel(level)
    ours = [r for r in records if any(Path(r.pathname).is_relative_to(REPO / p) for p in ("flows", "mailshot_core"))]
    assert ours, "our DEBUG lines were not captured: the check would prove nothing"
    assert [(r.levelname, r.getMessage()) for r in ours if r.levelno > logging.DEBUG] == []
