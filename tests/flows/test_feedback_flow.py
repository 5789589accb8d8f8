"""The apply-feedback flow (an hourly sweep: webhook events are applied on arrival) and `mailshot apply-feedback`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import engine_for
from fakes.webhooks import mailjet_event
from helpers import create, seed
from mailshot_core.config import Settings, get_settings
from mailshot_core.feedback import esp_events, inbox
from mailshot_core.sending import lifecycle


@pytest.fixture
def env_settings(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("MAILSHOT_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MAILSHOT_FROM_EMAIL", "news@example.org")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def _one_open(settings: Settings, tmp_path: Path) -> None:
    engine = engine_for(settings)
    seed(engine, tmp_path, 1)
    mid = create(engine, settings)
    lifecycle.start_sending(engine, settings, mid)  # materialises recipient 1
    body = json.dumps([mailjet_event("open", "u0@example.com", mid, 1)]).encode()
    assert inbox.store(engine, esp_events.mailjet(body)).stored == 1


def test_the_flow_applies_the_inbox(prefect_harness: None, env_settings: Settings, tmp_path: Path) -> None:
    """apply-feedback applies what the webhooks stored, and a second run finds nothing to do."""
    from flows.apply_feedback import apply_feedback

    _one_open(env_settings, tmp_path)
    first = apply_feedback()
    assert (first["applied"], first["changed"]) == (1, 1)
    assert apply_feedback()["applied"] == 0


def test_the_command_applies_the_inbox(env_settings: Settings, tmp_path: Path) -> None:
    """`mailshot apply-feedback` applies now and says what it did."""
    from typer.testing import CliRunner

    from mailshot_core.cli import app

    _one_open(env_settings, tmp_path)
    result = CliRunner().invoke(app, ["apply-feedback"])
    assert result.exit_code == 0 and "1 event(s) applied: 1 recipient(s) changed" in result.output


def test_mailshot_web_serves_the_webhooks(sqlite_url: str, tmp_path: Path) -> None:
    """`mailshot web --host --port` starts uvicorn on the app: probes answer 200, events need credentials."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    from fakes.webhooks import free_socket

    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "MAILSHOT_DATABASE_URL": sqlite_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailshot_core.cli", "web", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/webhooks/mailjet")
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "mailshot web did not start"
                time.sleep(0.1)
        assert r.status_code == 200
        assert httpx.post(f"http://127.0.0.1:{port}/webhooks/mailjet", json=[{"event": "open"}]).status_code == 403
    finally:
        proc.terminate()
        proc.wait(10)
