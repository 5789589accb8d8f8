"""The send-mailshot and send-test flows under Prefect's test harness."""

from __future__ import annotations

import email
import email.policy
import email.utils
from pathlib import Path

import pytest

from conftest import TEST_KEY, RelayProcess, engine_for, make_settings
from helpers import create, seed
from mailshot_core.config import get_settings
from mailshot_core.devtools.relay import DevRelay
from mailshot_core.sending import sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import MailshotStatus


@pytest.fixture
def env_settings(monkeypatch: pytest.MonkeyPatch, sqlite_url: str, relay: DevRelay) -> object:
    """Flows read their settings from MAILSHOT_* like a deployment does."""
    values = {
        "MAILSHOT_DATABASE_URL": sqlite_url,
        "MAILSHOT_SMTP_HOST": relay.host,
        "MAILSHOT_SMTP_PORT": str(relay.port),
        "MAILSHOT_FROM_EMAIL": "news@example.org",
        "MAILSHOT_BASE_URL": "https://news.example.org",
        "MAILSHOT_SECRET_KEY": TEST_KEY,
        "MAILSHOT_BATCH_SIZE": "1000",
        "MAILSHOT_SMTP_CONNECTIONS": "8",
        "MAILSHOT_RETRY_DELAY": "0",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.mark.slow
def test_ten_thousand_recipients_get_exactly_one_personalised_message(
    prefect_harness: None,
    env_settings: object,
    relay_process: RelayProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """10,000 recipients -> exactly 10,000 distinct messages, each personalised, with the bulk headers."""
    from flows.send_mailshot import send_mailshot

    monkeypatch.setenv("MAILSHOT_SMTP_PORT", str(relay_process.port))
    get_settings.cache_clear()
    settings = make_settings(env_settings.database_url)  # type: ignore[attr-defined]
    engine = engine_for(settings)
    seed(engine, tmp_path, 10_000)
    mid = create(engine, settings)
    result = send_mailshot(mid)
    assert result["status"] == MailshotStatus.END
    assert (result["total"], result["sent"], result["failed"]) == (10_000, 10_000, 0)
    messages = relay_process.messages()
    assert len(messages) == 10_000
    ids = set()
    recipients = set()
    for k, data in enumerate(messages):
        # compat32 parsing is ~30x faster than policy.default; every 100th message gets the full parse.
        msg = email.message_from_bytes(data)
        to = email.utils.parseaddr(msg["To"])[1]
        recipients.add(to)
        n = int(to.split("@")[0][1:])
        assert msg["Subject"] == f"Hello User {n}"
        html = msg.get_payload()[1].get_payload(decode=True).decode()
        assert f"Hello User {n} ({to}, fr, lists: news)" in html
        for header in (
            "List-Unsubscribe",
            "List-Unsubscribe-Post",
            "List-Id",
            "Message-ID",
            "Date",
            "X-Mailshot-Id",
            "X-Mailshot-Recipient",
        ):
            assert msg[header], header
        assert msg["List-Unsubscribe"].strip("<>") in html
        ids.add(msg["Message-ID"])
        if k % 100 == 0:
            full = email.message_from_bytes(data, policy=email.policy.default)
            assert full["To"].addresses[0].addr_spec == to
            assert full.get_body(("plain",)) is not None
    assert len(ids) == 10_000
    assert recipients == {f"u{i}@example.com" for i in range(10_000)}
    with session_scope(engine) as session:
        m = sendings.get(session, mid)
        assert sendings.stored_counters(m) == sendings.recount(session, mid)
        assert m.flow_run_id


def test_flow_publishes_progress_and_counters_artifacts(
    prefect_harness: None, env_settings: object, relay: DevRelay, tmp_path: Path
) -> None:
    """Operators see a progress artifact and a final counters table, and the run is named after the sending."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from flows.send_mailshot import send_mailshot

    settings = make_settings(env_settings.database_url)  # type: ignore[attr-defined]
    engine = engine_for(settings)
    seed(engine, tmp_path, 30)
    mid = create(engine, settings, subject="Weekly news")
    state = send_mailshot(mid, return_state=True)
    assert state.is_completed()

    import asyncio

    async def fetch() -> tuple[list[object], str]:
        async with get_client() as client:
            # Ids restart at 1 in each test database: select this run's artifacts, not another test's.
            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[f"mailshot-{mid}-counters", f"mailshot-{mid}-progress"]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
                )
            )
            run = await client.read_flow_run(state.state_details.flow_run_id)
            return arts, run.name

    arts, name = asyncio.run(fetch())
    kinds = {a.type for a in arts}  # type: ignore[attr-defined]
    assert {"table", "progress"} <= kinds
    progress = next(a for a in arts if a.type == "progress")  # type: ignore[attr-defined]
    assert progress.data == 100.0  # type: ignore[attr-defined]
    assert name == f"mailshot-{mid}: Weekly news"


def test_send_test_flow(prefect_harness: None, env_settings: object, relay: DevRelay, tmp_path: Path) -> None:
    """The send-test flow sends one [TEST] message."""
    from flows.send_test import send_test

    settings = make_settings(env_settings.database_url)  # type: ignore[attr-defined]
    engine = engine_for(settings)
    seed(engine, tmp_path, 2)
    mid = create(engine, settings)
    message_id = send_test(mid, "someone@else.org")
    assert message_id == f"<mailshot.{mid}.t0@example.org>"
    assert len(relay.messages) == 1


@pytest.mark.slow
def test_fast_mode_sends_batches_in_parallel_processes(
    prefect_harness: None,
    env_settings: object,
    relay_process: RelayProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fast mode: batches run in a process pool at once; still exactly one message per recipient."""
    from flows.send_mailshot import send_mailshot_fast

    monkeypatch.setenv("MAILSHOT_SMTP_PORT", str(relay_process.port))
    monkeypatch.setenv("MAILSHOT_BATCH_SIZE", "200")
    get_settings.cache_clear()
    settings = make_settings(env_settings.database_url)  # type: ignore[attr-defined]
    engine = engine_for(settings)
    seed(engine, tmp_path, 1200)
    mid = create(engine, settings)
    result = send_mailshot_fast(mid, parallel=2)
    assert result["status"] == MailshotStatus.END and result["sent"] == 1200
    assert result["this_run"]["claimed"] == 1200
    recipients = [email.message_from_bytes(d)["To"] for d in relay_process.messages()]
    assert len(recipients) == len(set(recipients)) == 1200


def test_max_connections_caps_sessions_across_parallel_batches(
    prefect_harness: None, env_settings: object, relay: DevRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAILSHOT_MAX_CONNECTIONS is a Prefect global concurrency limit held by each batch: three batches
    of 2 connections each may not have more than 4 sessions open together (6 without the cap)."""
    from prefect import get_client

    from flows.send_mailshot import connection_limit_name, send_mailshot

    monkeypatch.setenv("MAILSHOT_MAX_CONNECTIONS", "4")
    monkeypatch.setenv("MAILSHOT_SMTP_CONNECTIONS", "2")
    monkeypatch.setenv("MAILSHOT_BATCH_SIZE", "200")
    get_settings.cache_clear()
    relay.delay = 0.005  # batches last long enough to overlap
    settings = make_settings(env_settings.database_url)  # type: ignore[attr-defined]
    engine = engine_for(settings)
    seed(engine, tmp_path, 600)
    mid = create(engine, settings)
    result = send_mailshot(mid, parallel=3)
    assert result["status"] == MailshotStatus.END and result["sent"] == 600
    assert 2 <= relay.peak_sessions <= 4
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(connection_limit_name("smtp"))
    assert limit.limit == 4 and limit.active_slots == 0


@pytest.mark.slow
def test_fast_mode_on_a_local_dask_cluster(
    prefect_harness: None,
    env_settings: object,
    relay_process: RelayProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MAILSHOT_DASK_ADDRESS=local: the batch workers run on Dask worker processes; one message each."""
    monkeypatch.setenv("MAILSHOT_SMTP_PORT", str(relay_process.port))
    monkeypatch.setenv("MAILSHOT_BATCH_SIZE", "200")
    monkeypatch.setenv("MAILSHOT_DASK_ADDRESS", "local")
    get_settings.cache_clear()
    from flows.send_mailshot_dask import send_mailshot_dask

    settings = make_settings(env_settings.database_url)  # type: ignore[attr-defined]
    engine = engine_for(settings)
    seed(engine, tmp_path, 800)
    mid = create(engine, settings)
    result = send_mailshot_dask(mid, parallel=2)
    assert result["status"] == MailshotStatus.END and result["sent"] == 800
    recipients = [email.message_from_bytes(d)["To"] for d in relay_process.messages()]
    assert len(recipients) == len(set(recipients)) == 800
