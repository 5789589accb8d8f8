"""What an operator does from Prefect (create-and-send/form, control-mailshot/by-id) and what
`mailshot create` does with a Prefect API: runs of send-mailshot/now created at once (now or for the
start time), tagged mailshot:<id>, recorded on the sending; the sendings table kept current."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.objects import StateType

from conftest import TEST_KEY, engine_for, runs_tagged
from helpers import create, seed
from mailshot_core.config import Settings, get_settings
from mailshot_core.devtools.relay import DevRelay
from mailshot_core.sending import sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import MailshotStatus, utcnow


@pytest.fixture
def flow_env(monkeypatch: pytest.MonkeyPatch, sqlite_url: str, relay: DevRelay, tmp_path: Path) -> Iterator[Settings]:
    """Flows read their settings from MAILSHOT_* like a deployment does; a list of 3 subscribers."""
    for k, v in {
        "MAILSHOT_DATABASE_URL": sqlite_url,
        "MAILSHOT_SMTP_HOST": relay.host,
        "MAILSHOT_SMTP_PORT": str(relay.port),
        "MAILSHOT_FROM_EMAIL": "news@example.org",
        "MAILSHOT_BASE_URL": "https://news.example.org",
        "MAILSHOT_SECRET_KEY": TEST_KEY,  # a public MAILSHOT_BASE_URL needs a real key
    }.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    settings = get_settings()
    seed(engine_for(settings), tmp_path, 3)
    yield settings
    get_settings.cache_clear()


def _sending(settings: Settings, mid: int) -> Any:
    with session_scope(engine_for(settings)) as session:
        return sendings.get(session, mid)


def _sendings_table() -> list[dict[str, str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    from flows.sendings_artifact import KEY

    with get_client(sync_client=True) as client:
        (latest,) = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[KEY]))
        )
    return list(json.loads(latest.data))  # type: ignore[arg-type]


def test_control_sends_pauses_resumes_and_cancels_by_id(
    send_now_deployment: str, flow_env: Settings, test_start: datetime
) -> None:
    """control-mailshot applies the CLI's rules: send starts a draft and creates its run at once (tagged
    mailshot:<id>), pause deletes a run still waiting, resume creates a new one, cancel ends it; a
    refused action fails with the reason; the sendings table follows each step."""
    from flows.control_mailshot import control_mailshot

    engine = engine_for(flow_env)
    mid = create(engine, flow_env, subject="Monthly", send_now=False)
    sent = control_mailshot(mid, "send")
    assert sent["status"] == MailshotStatus.PROCESSING
    (run,) = runs_tagged(mid, test_start)
    assert sent["send_run"] == str(run.id) == _sending(flow_env, mid).flow_run_id
    assert {"mailshot", f"mailshot:{mid}"} <= set(run.tags)  # the deployment's tag and the sending's
    assert control_mailshot(mid, "send")["send_run"] == str(run.id)  # idempotent: the live run serves it
    row = next(r for r in _sendings_table() if r["id"] == str(mid))
    assert row["status"] == "sending" and row["page"] == f"[open](https://news.example.org/admin/sendings/{mid})"

    paused = control_mailshot(mid, "pause")
    assert paused["status"] == MailshotStatus.PAUSE and paused["dropped_waiting_run"]
    assert runs_tagged(mid, test_start) == []  # it never ran: deleted, not cancelled (that would mean "pause")
    assert next(r for r in _sendings_table() if r["id"] == str(mid))["status"] == "paused"
    with pytest.raises(Exception, match="not paused"):
        control_mailshot(create(engine, flow_env), "resume")  # a sending in progress
    resumed = control_mailshot(mid, "resume")
    (again,) = runs_tagged(mid, test_start)
    assert resumed["send_run"] == str(again.id) != str(run.id)
    assert control_mailshot(mid, "cancel")["status"] == MailshotStatus.CANCEL
    with pytest.raises(Exception, match="cannot be sent now"):
        control_mailshot(mid, "send")
    assert _sending(flow_env, mid).status == MailshotStatus.CANCEL


def test_the_sendings_table_is_published_only_when_it_changed(prefect_harness: None, flow_env: Settings) -> None:
    """An idle tick adds no artifact version; a change (a new sending) adds one."""
    from prefect import flow

    from flows.sendings_artifact import publish_sendings

    engine = engine_for(flow_env)
    publish = flow(name="publish-sendings-test")(lambda: publish_sendings(engine, flow_env))  # as the ticks do
    publish()
    assert publish() is False
    mid = create(engine, flow_env, subject="New", send_now=False)
    assert publish() is True
    assert _sendings_table()[0]["id"] == str(mid)


def test_the_form_tests_then_sends_now_or_at_the_start_time(
    send_now_deployment: str, flow_env: Settings, relay: DevRelay, test_start: datetime
) -> None:
    """create-and-send with a test address: the [TEST] message goes out first, then the sending starts
    with its run; with start_at its run waits for that time; the transport choice, the pace and the
    sender are the form's."""
    from flows.create_and_send import create_and_send
    from flows.sending_runs import START_MARGIN

    now = create_and_send(
        subject="Now {{ nom }}",
        html='<p class="x">Hi "{{ nom }}"</p>\n<p>Second line</p>',
        lists=["news"],
        test_address="Editor@Example.org",
        rate_per_day=5000,
        rate_per_hour=300,
        rate_per_minute=10,
        from_name="The Editors",
    )
    (message,) = relay.messages
    assert (
        message.rcpt_tos == ["editor@example.org"] and b"Subject: [TEST] Now\r\n" in message.data
    )  # not a subscriber: no nom
    assert now["test_message_id"] and now["status"] == MailshotStatus.PROCESSING
    (run,) = runs_tagged(now["id"], test_start)
    assert now["send_run"] == str(run.id) and now["scheduled_for"] is None
    m = _sending(flow_env, now["id"])
    assert (m.rate_per_day, m.rate_per_hour, m.rate_per_minute, m.from_name) == (5000, 300, 10, "The Editors")
    assert m.transport == "smtp" and 'class="x"' in m.html

    start = (utcnow() + timedelta(days=1)).replace(microsecond=0)
    later = create_and_send(
        subject="Later", html="<p>Later</p>", lists=["news"], start_at=start, test_address="editor@example.org"
    )
    assert later["status"] == MailshotStatus.INIT and len(relay.messages) == 2
    (waiting,) = runs_tagged(later["id"], test_start)
    assert waiting.state.type == StateType.SCHEDULED
    assert waiting.state.state_details.scheduled_time == start + START_MARGIN
    assert later["scheduled_for"] == (start + START_MARGIN).isoformat()

    ses = create_and_send(subject="Via SES", html="<p>x</p>", lists=["news"], transport="ses", start_at=start)
    assert _sending(flow_env, ses["id"]).transport == "ses"
    with pytest.raises(Exception, match="unknown list 'nope'"):
        create_and_send(subject="x", html="<p>x</p>", lists=["nope"])


def test_a_failed_test_leaves_a_draft_and_starts_nothing(
    send_now_deployment: str, flow_env: Settings, test_start: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the [TEST] message cannot go out (relay unreachable), the run fails saying so, the sending
    stays a draft (nothing sends it) and no send run exists."""
    from flows.create_and_send import create_and_send

    monkeypatch.setenv("MAILSHOT_SMTP_PORT", "9")  # discard: nothing listens on loopback
    get_settings.cache_clear()
    with pytest.raises(Exception, match=r"created as a draft and not started: test message to editor@example.org"):
        create_and_send(subject="Broken relay", html="<p>x</p>", lists=["news"], test_address="editor@example.org")
    (m,) = sendings.status_rows(engine_for(flow_env))
    assert m.status == MailshotStatus.DRAFT and m.flow_run_id is None
    assert runs_tagged(m.id, test_start) == []


def test_the_form_offers_every_transport() -> None:
    """The transport drop-down lists exactly mailshot_core.transports.AVAILABLE, plus "default"."""
    from typing import get_args

    from flows.create_and_send import TransportChoice
    from mailshot_core.transports import AVAILABLE

    assert get_args(TransportChoice) == ("default", *AVAILABLE)


def test_cli_create_schedules_the_run_when_prefect_is_configured(
    send_now_deployment: str, flow_env: Settings, tmp_path: Path, test_start: datetime
) -> None:
    """`mailshot create --start-at` with a Prefect API creates the run for the start time and says so;
    `--send` creates one now; a draft gets none."""
    from typer.testing import CliRunner

    from flows.sending_runs import START_MARGIN
    from mailshot_core.cli import app

    (tmp_path / "body.html").write_text("<p>Hi {{ nom }}</p>")
    start = (utcnow() + timedelta(hours=5)).replace(microsecond=0)
    base = ["create", "--subject", "CLI", "--html", str(tmp_path / "body.html"), "--list", "news"]
    runner = CliRunner()
    scheduled = runner.invoke(app, [*base, "--start-at", start.isoformat()])
    assert scheduled.exit_code == 0, scheduled.output
    mid = int(scheduled.stdout.strip().splitlines()[-1])
    (run,) = runs_tagged(mid, test_start)
    assert run.state.state_details.scheduled_time == start + START_MARGIN
    assert f"Prefect run {run.id} of send-mailshot/now scheduled for" in scheduled.output
    assert f"(tag mailshot:{mid})" in scheduled.output

    now = runner.invoke(app, [*base, "--send"])
    now_id = int(now.stdout.strip().splitlines()[-1])
    (now_run,) = runs_tagged(now_id, test_start)
    assert f"Prefect run {now_run.id} of send-mailshot/now to start now" in now.output
    draft = runner.invoke(app, base)
    assert runs_tagged(int(draft.stdout.strip().splitlines()[-1]), test_start) == []
