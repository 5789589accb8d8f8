"""Guarantee 1–2 (DESIGN §4): SIGKILL of the sending process, then `mailshot send` again.

No recipient gets the message twice; every recipient is accepted exactly once except
those reported in doubt (in flight at the kill), which are at most the number of
parallel connections, are listed by `mailshot status`, and are not resent.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conftest import engine_for, make_settings, runs_tagged
from helpers import cli_env, create, mailshot_cmd, recipients, seed
from mailshot_core.devtools.relay import DevRelay

CONNECTIONS = 4


def _sending_until(
    relay: DevRelay, received: int, env: dict[str, str], *args: str, wait: float = 120
) -> subprocess.Popen[bytes]:
    """A `mailshot` process sending, once the relay has accepted ``received`` of its messages."""
    victim = subprocess.Popen(mailshot_cmd(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + wait
    while relay.received_count < received:
        assert victim.poll() is None, victim.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the sending never got going"
        time.sleep(0.01)
    return victim


@pytest.mark.slow
def test_sigkill_mid_sending_then_resume_sends_nobody_twice(prefect_harness: None, db_url: str, tmp_path: Path) -> None:
    """SIGKILL mid-sending + `mailshot send` again: 0 duplicates, in-doubt <= connections, listed, not resent."""
    with DevRelay(delay=0.002) as relay:
        settings = make_settings(db_url, relay)
        engine = engine_for(settings)
        everyone = seed(engine, tmp_path, 3000)
        mid = create(engine, settings)
        env = cli_env(db_url, relay, CONNECTIONS)

        victim = _sending_until(relay, 600, env, "send", str(mid), "--no-progress")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed_at = relay.received_count
        assert killed_at < 3000, "the kill came too late to test anything"

        second = subprocess.run(
            mailshot_cmd("send", str(mid), "--no-progress"), env=env, capture_output=True, text=True, timeout=300
        )
        assert second.returncode == 0, second.stderr[-3000:]
        status = subprocess.run(
            mailshot_cmd("status", str(mid), "--json"), env=env, capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stderr
        received = Counter(m.rcpt_tos[0] for m in relay.messages)

    report = json.loads(status.stdout)
    unknown = set(report["unknown_recipients"])
    rows = recipients(engine, mid)
    assert [e for e, n in received.items() if n > 1] == []  # nobody got it twice
    assert len(unknown) <= CONNECTIONS
    assert report["nb_unknown"] == len(unknown)
    assert {e for e, (s, _) in rows.items() if s == "unknown"} == unknown
    sent = {e for e, (s, _) in rows.items() if s == "sent"}
    assert sent | unknown == set(everyone)  # nothing lost
    assert sent <= set(received)  # every `sent` row was really accepted by the relay
    assert set(received) - sent <= unknown  # accepted but not recorded: only the in-doubt ones
    assert report["status"] == "end" and report["sent"] == len(sent)


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc's parent links)."""
    children: dict[int, set[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), set()).add(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), set()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_sigkill_of_a_fast_send_takes_its_worker_processes_with_it(
    prefect_harness: None, sqlite_url: str, tmp_path: Path
) -> None:
    """kill -9 of `mailshot send --fast`: its worker processes stop sending and exit (they were seen
    sending on alone and never exiting); a second `mailshot send` then serves everyone, nobody twice."""
    with DevRelay(delay=0.002) as relay:
        settings = make_settings(sqlite_url, relay)
        engine = engine_for(settings)
        everyone = seed(engine, tmp_path, 2500)
        mid = create(engine, settings)
        env = cli_env(sqlite_url, relay, CONNECTIONS)
        victim = _sending_until(relay, 300, env, "send", str(mid), "--fast", "--no-progress", wait=180)
        workers = _descendants(victim.pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        deadline = time.monotonic() + 60  # a hang guard: the watch notices within about a second
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, f"worker processes still running: {[p for p in workers if _alive(p)]}"
            time.sleep(0.2)
        stopped_at = relay.received_count
        assert stopped_at < 2500, "the kill came too late to test anything"
        second = subprocess.run(
            mailshot_cmd("send", str(mid), "--no-progress"), env=env, capture_output=True, text=True, timeout=300
        )
        assert second.returncode == 0, second.stderr[-3000:]
        received = Counter(m.rcpt_tos[0] for m in relay.messages)
    rows = recipients(engine, mid)
    unknown = {e for e, (s, _) in rows.items() if s == "unknown"}
    assert [e for e, n in received.items() if n > 1] == []
    assert {e for e, (s, _) in rows.items() if s == "sent"} | unknown == set(everyone)


@pytest.mark.slow
def test_sigterm_stops_a_paced_batch_before_its_next_message(
    prefect_harness: None, sqlite_url: str, tmp_path: Path
) -> None:
    """SIGTERM of a paced `mailshot send` (what a Prefect worker sends to cancel a run, or when it stops):
    the batch in flight stops within about a second instead of pacing on to its end (Python waits for
    its thread before exiting), what it had not sent is released, nobody in doubt; not a cancellation,
    so the sending stays ``processing`` and the next `mailshot send` serves the rest, nobody twice."""
    with DevRelay() as relay:
        settings = make_settings(sqlite_url, relay)
        engine = engine_for(settings)
        everyone = seed(engine, tmp_path, 60)
        mid = create(engine, settings, rate_per_minute=600)  # one batch of 60, paced over 6 s
        env = cli_env(sqlite_url, relay, CONNECTIONS)
        victim = _sending_until(relay, 3, env, "send", str(mid), "--no-progress")
        victim.send_signal(signal.SIGTERM)
        victim.wait(60)  # a hang guard: the batch stops at its next stop check
        stopped_at = relay.received_count
        assert stopped_at < 40, f"{stopped_at} of 60 sent: the batch paced on after SIGTERM"
        rows = recipients(engine, mid)
        assert {s for s, _ in rows.values()} <= {"sent", "todo"}, Counter(s for s, _ in rows.values())
        with engine.connect() as conn:
            assert conn.exec_driver_sql(f"SELECT status FROM mailshot WHERE id = {mid}").scalar_one() == "processing"
        second = subprocess.run(
            mailshot_cmd("send", str(mid), "--no-progress"), env=env, capture_output=True, text=True, timeout=300
        )
        assert second.returncode == 0, second.stderr[-3000:]
        received = Counter(m.rcpt_tos[0] for m in relay.messages)
    assert sorted(received) == sorted(everyone) and max(received.values()) == 1


@pytest.mark.slow
def test_sigterm_stops_fast_mode_s_worker_thread_in_the_run_s_process(
    prefect_harness: None, sqlite_url: str, tmp_path: Path
) -> None:
    """`mailshot send --fast` on SQLite sends from a worker thread of the run's process, whose task
    runner waits for it on exit: a SIGTERM while the run sends (a worker stopping) must stop that
    thread's batch too, within about a second, nobody in doubt, the rest left for the next run."""
    with DevRelay(delay=0.005) as relay:  # ~800 msg/s over 4 connections: 6,000 take several seconds
        settings = make_settings(sqlite_url, relay)
        engine = engine_for(settings)
        everyone = seed(engine, tmp_path, 6000)
        mid = create(engine, settings)
        env = cli_env(sqlite_url, relay, CONNECTIONS)
        since = datetime.now(UTC)
        victim = _sending_until(relay, 1, env, "send", str(mid), "--fast", "--no-progress")
        deadline = time.monotonic() + 120
        # Prefect's SIGTERM handler exists once the flow runs: before that the command is not a run yet.
        while not any(run.state is not None and run.state.is_running() for run in runs_tagged(mid, since)):
            assert time.monotonic() < deadline and victim.poll() is None, "the run never started"
            time.sleep(0.05)
        running_at = relay.received_count
        while relay.received_count < running_at + 200:  # the run's own worker thread is sending
            assert time.monotonic() < deadline and victim.poll() is None, "the run never sent"
            time.sleep(0.01)
        victim.send_signal(signal.SIGTERM)
        victim.wait(60)  # a hang guard
        stopped_at = relay.received_count
        assert stopped_at < 6000, "the worker thread sent everyone after SIGTERM"
        rows = recipients(engine, mid)
        assert {s for s, _ in rows.values()} <= {"sent", "todo"}, Counter(s for s, _ in rows.values())
        second = subprocess.run(
            mailshot_cmd("send", str(mid), "--no-progress"), env=env, capture_output=True, text=True, timeout=300
        )
        assert second.returncode == 0, second.stderr[-3000:]
        received = Counter(m.rcpt_tos[0] for m in relay.messages)
    assert sorted(received) == sorted(everyone) and max(received.values()) == 1
