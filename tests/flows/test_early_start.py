"""`mailshot send` sends its first batches while its Prefect run starts, under one record (early_start.py)."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from uuid import UUID

import pytest
from sqlmodel import col, select

from conftest import engine_for, make_settings
from helpers import cli_env, create, free_port, mailshot_cmd, seed
from mailshot_core.devtools.relay import DevRelay
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import Recipient, SendRun, as_utc


def _runs(engine: object, mailshot_id: int) -> list[SendRun]:
    with session_scope(engine) as session:  # type: ignore[arg-type]
        found = session.exec(select(SendRun).where(SendRun.mailshot_id == mailshot_id)).all()
        session.expunge_all()
        return list(found)


def _first_sent_at(engine: object, mailshot_id: int) -> datetime:
    with session_scope(engine) as session:  # type: ignore[arg-type]
        query = select(Recipient.sent_at).where(
            Recipient.mailshot_id == mailshot_id, col(Recipient.sent_at).is_not(None)
        )
        return as_utc(min(t for t in session.exec(query).all() if t is not None))


@pytest.mark.slow
def test_the_first_messages_leave_before_the_prefect_run_starts_and_the_run_records_them(
    prefect_harness: None, sqlite_url: str, tmp_path: Path
) -> None:
    """The relay accepts messages before Prefect's flow run is Running (the command was still importing
    Prefect and creating the run); the run then takes the sending over: everyone once, and one record,
    the Prefect run's, counting every message from the first."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with DevRelay() as relay:
        settings = make_settings(sqlite_url, relay)
        engine = engine_for(settings)
        everyone = seed(engine, tmp_path, 4000)
        mid = create(engine, settings)
        env = cli_env(sqlite_url, relay)
        env["PREFECT_LOGGING_LEVEL"] = "INFO"  # the run's summary line is read back below
        done = subprocess.run(
            mailshot_cmd("send", str(mid), "--no-progress"),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        received = Counter(m.rcpt_tos[0] for m in relay.messages)
    assert sorted(received) == sorted(everyone) and max(received.values()) == 1
    [run] = _runs(engine, mid)
    assert run.sent == 4000 and run.ended_at is not None and run.final_status == "end", run
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(UUID(run.id))  # the record is the Prefect run's
        wanted = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id]))
        deadline = time.monotonic() + 30  # the server stores logs asynchronously
        while (
            not (logs := [log.message for log in client.read_logs(log_filter=wanted)]) and time.monotonic() < deadline
        ):
            time.sleep(0.5)
    assert flow_run.start_time is not None
    assert _first_sent_at(engine, mid) < flow_run.start_time
    assert any("(this run: 4000 sent" in message for message in logs), logs  # the run's own figures too


@pytest.mark.slow
def test_a_command_whose_run_never_starts_closes_the_record_of_what_it_sent(sqlite_url: str, tmp_path: Path) -> None:
    """The Prefect API cannot be reached: the command fails, and what it sent meanwhile has its record,
    closed with why; the sending stays in progress for the next run."""
    with DevRelay() as relay:
        settings = make_settings(sqlite_url, relay)
        engine = engine_for(settings)
        seed(engine, tmp_path, 300)
        mid = create(engine, settings)
        env = cli_env(sqlite_url, relay)
        env.update(PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api", PREFECT_CLIENT_MAX_RETRIES="0")
        done = subprocess.run(
            mailshot_cmd("send", str(mid), "--no-progress"), env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode != 0
        received = Counter(m.rcpt_tos[0] for m in relay.messages)
    assert received and max(received.values()) == 1
    [run] = _runs(engine, mid)
    assert run.id.startswith("early-") and run.ended_at is not None, run
    assert run.sent == len(received) and run.end_reason == "the command ended before its Prefect run started"
