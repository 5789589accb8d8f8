"""The send pipeline against a real SMTP relay with injected faults, on SQLite and PostgreSQL."""

from __future__ import annotations

import email
import email.policy
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from conftest import TEST_KEY, engine_for, make_settings
from helpers import create, drive, recipients, seed
from mailshot_core.audience import subscribers
from mailshot_core.devtools.relay import DevRelay, FaultPlan
from mailshot_core.errors import InvalidInput
from mailshot_core.sending import claims, lifecycle, one_message, pipeline, sendings
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import FeedbackEvent, MailshotStatus, Recipient, Subscriber
from mailshot_core.transports.base import TransportUnavailable


def _counters_match(engine: object, mailshot_id: int) -> None:
    with session_scope(engine) as session:  # type: ignore[arg-type]
        m = sendings.get(session, mailshot_id)
        assert sendings.stored_counters(m) == sendings.recount(session, mailshot_id)


def test_relay_faults_end_in_the_stated_status_and_tries(db_url: str, tmp_path: Path) -> None:
    """4xx and dropped connections are retried (tries grow, fail at MAX_TRY); 5xx fails at once as a bounce."""
    plan = FaultPlan(
        {
            "u1@example.com": ["451 4.3.0 Try later", "451 4.3.0 Try later", "ok"],
            "u2@example.com": ["452 4.2.2 Mailbox full"],  # forever temporary
            "u3@example.com": ["550 5.1.1 No such user"],
            "u4@example.com": ["drop-data", "ok"],
            "u5@example.com": ["421 4.7.0 Too busy", "ok"],
            "u6@example.com": ["data:554 5.7.1 Rejected by policy"],
            "u7@example.com": ["data:451 4.3.0 Queue full", "ok"],
        }
    )
    with DevRelay(faults=plan) as relay:
        settings = make_settings(db_url, relay, batch_size=7, smtp_connections=3)
        engine = engine_for(settings)
        seed(engine, tmp_path, 30)
        mid = create(engine, settings)
        m = drive(engine, settings, mid)
        received = [msg.rcpt_tos[0] for msg in relay.messages]

    rows = recipients(engine, mid)
    assert rows["u1@example.com"] == ("sent", 3)
    assert rows["u2@example.com"] == ("fail", 5)
    assert rows["u3@example.com"] == ("fail", 1)
    assert rows["u4@example.com"] == ("sent", 2)
    assert rows["u5@example.com"] == ("sent", 2)
    assert rows["u6@example.com"] == ("fail", 1)
    assert rows["u7@example.com"] == ("sent", 2)
    assert plan.attempts("u2@example.com") == 5
    others = {e: st for e, st in rows.items() if e not in {f"u{i}@example.com" for i in range(1, 8)}}
    assert set(others.values()) == {("sent", 1)}
    assert sorted(received) == sorted(e for e, (s, _) in rows.items() if s == "sent")
    assert len(received) == len(set(received)) == 27
    assert m.status == MailshotStatus.END
    assert (m.total, m.current, m.sent, m.failed) == (30, 30, 27, 3)
    _counters_match(engine, mid)
    with session_scope(engine) as session:
        events = {e.email: e for e in session.exec(select(FeedbackEvent).where(FeedbackEvent.mailshot_id == mid))}
    assert events["u3@example.com"].kind == "hard_bounce" and "5.1.1" in (events["u3@example.com"].detail or "")
    assert events["u6@example.com"].kind == "reject"  # 5.7.x: a policy block, not the subscriber's fault
    assert "u2@example.com" not in events  # temporary failures are not bounces


def test_messages_are_personalised_with_bulk_headers(sqlite_url: str, tmp_path: Path, relay: DevRelay) -> None:
    """Each recipient gets its own variables, List-Unsubscribe (+Post), List-Id, ids and a VERP envelope."""
    settings = make_settings(sqlite_url, relay, bounce_address="bounces@bounce.example.org")
    engine = engine_for(settings)
    seed(engine, tmp_path, 5)
    seed(engine, tmp_path, 3, list_name="offers")  # u0..u2 are on both lists
    mid = create(engine, settings, lists=("news", "offers"))
    drive(engine, settings, mid)
    assert len(relay.messages) == 5  # deduplicated across lists
    from mailshot_core.content.tokens import UNSUBSCRIBE, parse_verp, read_token

    for received in relay.messages:
        msg = email.message_from_bytes(received.data, policy=email.policy.default)
        to = received.rcpt_tos[0]
        i = int(to.split("@")[0][1:])
        assert msg["Subject"] == f"Hello User {i}"
        assert msg["To"] == f"User {i} <{to}>"
        html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
        expected_lists = "news, offers" if i < 3 else "news"
        assert f"Hello User {i} ({to}, fr, lists: {expected_lists})" in html
        unsub = msg["List-Unsubscribe"].strip("<>")
        assert unsub.startswith("https://news.example.org/u/") and unsub in html
        signed = read_token(TEST_KEY.encode(), unsub.rsplit("/", 1)[1], UNSUBSCRIBE)
        with session_scope(engine) as session:
            subscriber_id = session.exec(select(Subscriber.id).where(Subscriber.email == to)).one()
        assert signed == (mid, subscriber_id)  # the link names the subscriber: it outlives the purge
        ref = parse_verp(TEST_KEY.encode(), received.envelope_from)
        assert ref is not None and ref.mailshot_id == mid
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["List-Id"] == '"News" <news.example.org>'
        assert msg["X-Mailshot-Id"] == str(mid) and msg["X-Mailshot-Recipient"] == str(ref.recipient_id)
        assert msg["Message-ID"] == f"<mailshot.{mid}.r{ref.recipient_id}@example.org>"
        assert "Unsubscribe" in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_authentication_error_pauses_without_consuming_tries(sqlite_url: str, tmp_path: Path) -> None:
    """A wrong SMTP password pauses the sending with a clear reason and burns no recipient's try."""
    with DevRelay(auth=("user", "right")) as relay:
        settings = make_settings(sqlite_url, relay, smtp_user="user", smtp_password="wrong")
        engine = engine_for(settings)
        seed(engine, tmp_path, 20)
        mid = create(engine, settings)
        m = drive(engine, settings, mid)
        assert m.status == MailshotStatus.PAUSE
        assert "authentication failed" in (m.status_reason or "")
        assert set(recipients(engine, mid).values()) == {("todo", 0)}
        assert relay.messages == []
        # Fixed credentials: resume and everything goes out.
        settings = make_settings(sqlite_url, relay, smtp_user="user", smtp_password="right")
        with session_scope(engine) as session:
            sendings.resume(session, mid)
        m = drive(engine, settings, mid)
        assert m.status == MailshotStatus.END and m.sent == 20
        assert len(relay.messages) == 20


def test_relay_down_releases_the_batch_without_consuming_tries(sqlite_url: str, tmp_path: Path) -> None:
    """No relay listening: the batch raises TransportUnavailable (retried by Prefect); rows back to todo, tries 0."""
    with DevRelay() as relay:
        port = relay.port
    settings = make_settings(sqlite_url, None, smtp_host="127.0.0.1", smtp_port=port, smtp_timeout=2)
    engine = engine_for(settings)
    seed(engine, tmp_path, 10)
    mid = create(engine, settings)
    lifecycle.start_sending(engine, settings, mid)
    with pytest.raises(TransportUnavailable):
        pipeline.send_batch(engine, settings, mid)
    assert set(recipients(engine, mid).values()) == {("todo", 0)}
    _counters_match(engine, mid)


def test_pause_and_cancel_take_effect_before_the_next_batch(sqlite_url: str, tmp_path: Path, relay: DevRelay) -> None:
    """Pause stops after the current batch; cancel turns pending recipients into kill."""
    settings = make_settings(sqlite_url, relay, batch_size=10)
    engine = engine_for(settings)
    seed(engine, tmp_path, 35)
    mid = create(engine, settings)
    lifecycle.start_sending(engine, settings, mid)
    assert pipeline.send_batch(engine, settings, mid).sent == 10
    with session_scope(engine) as session:
        sendings.pause(session, mid)
    report = pipeline.send_batch(engine, settings, mid)
    assert report.sent == 0 and report.stopped == "sending is pause"
    assert lifecycle.next_step(engine, settings, mid).action == "stopped"
    with session_scope(engine) as session:
        m = sendings.cancel(session, mid)
    lifecycle.end_sending(engine, mid, finished=False)
    assert m.status == MailshotStatus.CANCEL
    statuses = [s for s, _ in recipients(engine, mid).values()]
    assert statuses.count("sent") == 10 and statuses.count("kill") == 25
    assert len(relay.messages) == 10
    _counters_match(engine, mid)


def test_unsubscribed_after_materialisation_is_not_sent(db_url: str, tmp_path: Path, relay: DevRelay) -> None:
    """Addresses unsubscribed (from all lists or from the sending's list) after the start are re-checked and skipped."""
    settings = make_settings(db_url, relay, batch_size=5)
    engine = engine_for(settings)
    seed(engine, tmp_path, 12)
    seed(engine, tmp_path, 12, list_name="other")
    mid = create(engine, settings)
    lifecycle.start_sending(engine, settings, mid)  # materialises 12 recipients
    with session_scope(engine) as session:
        subscribers.unsubscribe(session, "u7@example.com", reason="test")
        subscribers.unsubscribe(session, "u9@example.com", "news", reason="test")  # still on "other"
    lifecycle.end_sending(engine, mid, finished=False)
    m = drive(engine, settings, mid)
    received = {msg.rcpt_tos[0] for msg in relay.messages}
    assert "u7@example.com" not in received and "u9@example.com" not in received
    assert len(received) == 10 and m.sent == 10
    rows = recipients(engine, mid)
    assert rows["u7@example.com"][0] == rows["u9@example.com"][0] == "kill"
    _counters_match(engine, mid)


def test_scheduled_sending_does_not_start_early(sqlite_url: str, tmp_path: Path) -> None:
    """A sending with a future start date is `init` and refuses to send before its time."""
    from datetime import UTC, datetime, timedelta

    from mailshot_core.errors import InvalidState

    settings = make_settings(sqlite_url)
    engine = engine_for(settings)
    seed(engine, tmp_path, 3)
    mid = create(engine, settings, start_at=datetime.now(UTC) + timedelta(hours=2))
    with session_scope(engine) as session:
        assert sendings.get(session, mid).status == MailshotStatus.INIT
    with pytest.raises(InvalidState, match="scheduled"):
        lifecycle.start_sending(engine, settings, mid)


def test_send_test_prefixes_subject_and_changes_no_row(sqlite_url: str, tmp_path: Path, relay: DevRelay) -> None:
    """A test goes to any address with [TEST] in the subject; subscriber variables are used when known."""
    settings = make_settings(sqlite_url, relay)
    engine = engine_for(settings)
    seed(engine, tmp_path, 3)
    mid = create(engine, settings)
    one_message.send_test(engine, settings, mid, "u1@example.com")
    one_message.send_test(engine, settings, mid, "stranger@elsewhere.org")
    first, second = (email.message_from_bytes(m.data, policy=email.policy.default) for m in relay.messages)
    assert first["Subject"] == "[TEST] Hello User 1"
    assert second["Subject"] == "[TEST] Hello"
    assert recipients(engine, mid) == {}
    with session_scope(engine) as session:
        assert sendings.get(session, mid).status == MailshotStatus.PROCESSING


def test_temporary_failures_are_retried_after_everyone_else(sqlite_url: str, tmp_path: Path) -> None:
    """Retry at the end of the queue: a recipient that got a 4xx is sent after every never-tried recipient."""
    plan = FaultPlan({"u0@example.com": ["451 4.3.0 later", "ok"], "u5@example.com": ["421 4.7.0 busy", "ok"]})
    with DevRelay(faults=plan) as relay:
        settings = make_settings(sqlite_url, relay, batch_size=4, smtp_connections=1)
        engine = engine_for(settings)
        seed(engine, tmp_path, 12)
        mid = create(engine, settings)
        drive(engine, settings, mid)
        order = [m.rcpt_tos[0] for m in relay.messages]
    assert len(order) == 12
    assert set(order[-2:]) == {"u0@example.com", "u5@example.com"}, order


def test_prefect_cancellation_pauses_the_sending(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The on_cancellation hook of send-mailshot turns a cancelled run into a paused (resumable) sending,
    called the way Prefect's runner calls it: with the keywords flow, flow_run, state (a hook whose
    parameters had other names raised TypeError there, logged and skipped, and the sending kept going)."""
    import asyncio
    from uuid import uuid4

    from prefect.client.schemas.objects import FlowRun
    from prefect.runner._hook_runner import _run_hooks
    from prefect.states import Cancelled

    from flows.send_mailshot import send_mailshot
    from mailshot_core.config import get_settings

    monkeypatch.setenv("MAILSHOT_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    settings = make_settings(sqlite_url)
    engine = engine_for(settings)
    seed(engine, tmp_path, 3)
    mid = create(engine, settings)
    run = FlowRun(flow_id=uuid4(), parameters={"mailshot_id": mid})
    asyncio.run(_run_hooks(send_mailshot.on_cancellation_hooks, run, send_mailshot, Cancelled()))
    get_settings.cache_clear()
    with session_scope(engine) as session:
        m = sendings.get(session, mid)
        assert m.status == MailshotStatus.PAUSE and "cancelled in Prefect" in (m.status_reason or "")


@pytest.mark.parametrize(
    "reply",
    [
        "421 4.7.0 Too many connections, slow down",
        "451 4.7.1 Rate limited, try again later",
        "454 4.7.0 Temporary service failure",
    ],
)
def test_throttling_relay_loses_nobody_and_burns_no_try(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reply: str
) -> None:
    """A relay deferring a third of the commands to slow us down: every recipient ends sent, none failed."""
    from mailshot_core.sending import connections

    monkeypatch.setattr(connections, "CONNECTION_BACKOFF", (0.001, 0.01))  # time, not behaviour
    plan = FaultPlan(random_fault=(0.33, reply), seed=4)
    with DevRelay(faults=plan) as relay:
        settings = make_settings(sqlite_url, relay, batch_size=50, smtp_connections=4, max_try=2)
        engine = engine_for(settings)
        seed(engine, tmp_path, 200)
        mid = create(engine, settings)
        m = drive(engine, settings, mid)
        received = [msg.rcpt_tos[0] for msg in relay.messages]
    assert plan.total_attempts() > 250  # the relay really deferred many attempts
    assert m.status == MailshotStatus.END and (m.sent, m.failed) == (200, 0)
    assert sorted(received) == sorted(set(received)) and len(received) == 200
    rows = recipients(engine, mid)
    assert max(t for _, t in rows.values()) > 2  # some needed more attempts than MAX_TRY, yet none failed
    _counters_match(engine, mid)


def test_late_results_of_a_worker_taken_over_do_not_overwrite(sqlite_url: str, tmp_path: Path) -> None:
    """A worker believed dead (stale heartbeat) whose rows became `unknown`: its late results are dropped."""
    import asyncio
    from datetime import UTC, datetime, timedelta

    from mailshot_core.sending.ledger import Ledger, Outcome, Result
    from mailshot_core.store.models import SendWorker

    settings = make_settings(sqlite_url)
    engine = engine_for(settings)
    seed(engine, tmp_path, 3)
    mid = create(engine, settings)
    lifecycle.start_sending(engine, settings, mid)
    token = claims.new_worker_token()
    now = datetime.now(UTC)
    with session_scope(engine) as session:
        claims.register_worker(session, mid, token, now)
        claimed, _ = claims.claim(session, sendings.get(session, mid), token, 3, now)
    ledger = Ledger(engine, mid, token, max_try=5, retry_delay=0, clock=lambda: datetime.now(UTC))

    async def start_all() -> list[bool]:
        return [await ledger.start(r.id) for r in claimed]

    assert asyncio.run(start_all()) == [True, True, True]
    with session_scope(engine) as session:  # another run decides this worker is dead
        session.get(SendWorker, token).heartbeat_at = now - timedelta(hours=1)  # type: ignore[union-attr]
    with session_scope(engine) as session:
        assert claims.recover_dead_workers(session, mid, datetime.now(UTC), timedelta(minutes=5)) == (0, 3)

    async def finish() -> None:
        for r in claimed:
            ledger.record(Outcome.of(r, Result.SENT, code=250, text="ok"))
        await ledger.close()

    asyncio.run(finish())
    assert {s for s, _ in recipients(engine, mid).values()} == {"unknown"}
    _counters_match(engine, mid)


def test_a_cancelled_sending_counts_its_never_sent_recipients_as_cancelled_not_failed(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Cancel turns the waiting recipients into `kill`: counted in nb_kill ("cancelled" in mailshot
    status), not in `failed`, and still equal to a recount."""
    from mailshot_core.cli.sendings import status_dict

    settings = make_settings(sqlite_url)
    engine = engine_for(settings)
    seed(engine, tmp_path, 7)
    mid = create(engine, settings)
    lifecycle.start_sending(engine, settings, mid)  # materialises the 7 recipients
    with session_scope(engine) as session:
        m = sendings.cancel(session, mid)
        assert (m.nb_kill, m.failed, m.current) == (7, 0, 7)
        assert sendings.stored_counters(m) == sendings.recount(session, mid)
        shown = status_dict(m)
    assert (shown["cancelled"], shown["failed"], shown["status"]) == (7, 0, "cancel")


def test_a_pause_stops_a_paced_batch_waiting_for_its_next_slot(db_url: str, tmp_path: Path) -> None:
    """At one message an hour, the batch waits an hour for its second slot: a pause (from another
    process: only the database says so) ends the wait and the batch; what was not attempted goes
    back to the queue, nothing more reaches the relay."""
    import threading

    with DevRelay() as relay:
        settings = make_settings(db_url, relay, batch_size=10, smtp_connections=1)
        engine = engine_for(settings)
        seed(engine, tmp_path, 5)
        mid = create(engine, settings, rate_per_hour=1)
        lifecycle.start_sending(engine, settings, mid)
        result: list[pipeline.BatchReport] = []
        batch = threading.Thread(target=lambda: result.append(pipeline.send_batch(engine, settings, mid)))
        batch.start()
        while not relay.messages:  # the first slot is now
            batch.join(0.05)
        with session_scope(engine) as session:
            sendings.pause(session, mid)
        batch.join(60)  # a hang guard only: without the pause, the batch would wait an hour
        assert not batch.is_alive()
        assert len(relay.messages) == 1
    assert result[0].sent == 1 and "pause" in (result[0].stopped or "")
    statuses = [status for status, _ in recipients(engine, mid).values()]
    assert sorted(statuses) == ["sent", "todo", "todo", "todo", "todo"]
    _counters_match(engine, mid)


def test_an_outside_stop_pauses_the_sending_with_its_reason(db_url: str, tmp_path: Path) -> None:
    """The orchestrator's view (a cancelled or suspended run) reaches the batch through outside_stop: the
    sending is paused with that reason (so the dispatcher leaves it), the batch stops before its next
    message, and the run's record counts what it sent."""
    from mailshot_core.sending import runs
    from mailshot_core.store.models import SendRun

    with DevRelay() as relay:
        settings = make_settings(db_url, relay, batch_size=50, smtp_connections=1)
        engine = engine_for(settings)
        seed(engine, tmp_path, 50)
        mid = create(engine, settings, rate_per_minute=600)  # 10/s: the batch takes 5 s unstopped
        lifecycle.start_sending(engine, settings, mid)
        run_id = runs.local_run_id()
        with session_scope(engine) as session:
            runs.open_run(session, run_id, sendings.get(session, mid))

        def cancelled_once_three_went() -> str | None:
            return "paused: flow run cancelled in Prefect" if len(relay.messages) >= 3 else None

        report = pipeline.send_batch(engine, settings, mid, run_id=run_id, outside_stop=cancelled_once_three_went)
        received = len(relay.messages)
    assert report.stopped == "paused: flow run cancelled in Prefect"
    assert 3 <= received < 50
    with session_scope(engine) as session:
        m = sendings.get(session, mid)
        assert (m.status, m.status_reason) == (MailshotStatus.PAUSE, "paused: flow run cancelled in Prefect")
        assert m.sent == received and m.nb_unknown == 0
        run = session.get(SendRun, run_id)
        assert run is not None and run.sent == received and run.failed == 0
    _counters_match(engine, mid)


def test_a_template_that_breaks_every_message_pauses_the_sending_and_fails_nobody(db_url: str, tmp_path: Path) -> None:
    """A problem of the whole sending (here a template that passes the creation check on its sample
    values but fails for every real recipient) pauses the sending with the reason; nobody fails, no
    try is used, and once fixed a resume sends everyone."""
    broken = "<p>{% if 'sample' not in listes %}{{ 1 // 0 }}{% endif %}Hello {{ nom }}</p>"
    with DevRelay() as relay:
        settings = make_settings(db_url, relay, batch_size=20)
        engine = engine_for(settings)
        seed(engine, tmp_path, 12)
        mid = create(engine, settings, html=broken)
        m = drive(engine, settings, mid)
        assert not relay.messages
    assert m.status == MailshotStatus.PAUSE and "no message of the sending can be built" in (m.status_reason or "")
    assert (m.failed, m.sent) == (0, 0)
    assert set(recipients(engine, mid).values()) == {("todo", 0)}
    _counters_match(engine, mid)


def test_one_recipient_s_unbuildable_message_still_fails_only_that_recipient(db_url: str, tmp_path: Path) -> None:
    """When messages of the sending do build, one that does not is that recipient's failure (not a pause)."""
    picky = "<p>{% if nom == 'User 3' %}{{ 1 // 0 }}{% endif %}Hello {{ nom }}</p>"
    with DevRelay() as relay:
        settings = make_settings(db_url, relay, batch_size=20)
        engine = engine_for(settings)
        seed(engine, tmp_path, 12)
        mid = create(engine, settings, html=picky)
        m = drive(engine, settings, mid)
        received = len(relay.messages)
    rows = recipients(engine, mid)
    assert m.status == MailshotStatus.END and received == 11
    assert rows["u3@example.com"][0] == "fail" and m.failed == 1
    _counters_match(engine, mid)


def test_requeue_failed_recipients_after_an_operator_mistake(db_url: str, tmp_path: Path) -> None:
    """`mailshot requeue ID --failed --reason ...`: failed rows (not bounces) go back to the queue with
    their tries reset and the reason kept; an ended sending is processing again and sends them once."""
    plan = FaultPlan({f"u{i}@example.com": ["452 4.2.2 Mailbox full"] * 5 + ["ok"] for i in range(3)})
    with DevRelay(faults=plan) as relay:
        settings = make_settings(db_url, relay, batch_size=20)
        engine = engine_for(settings)
        seed(engine, tmp_path, 6)
        mid = create(engine, settings)
        m = drive(engine, settings, mid)
        assert (m.status, m.failed, m.sent) == (MailshotStatus.END, 3, 3)
        with session_scope(engine) as session:
            with pytest.raises(InvalidInput):
                claims.requeue_failed(session, mid, "  ")
            assert claims.requeue_failed(session, mid, "relay quota raised") == 3
            m = sendings.get(session, mid)
            assert (m.status, m.failed, m.current) == (MailshotStatus.PROCESSING, 0, 3)
            again = session.exec(select(Recipient).where(Recipient.mailshot_id == mid, Recipient.tries == 0)).all()
            assert {r.last_error for r in again} == {"requeued by the operator: relay quota raised"}
        _counters_match(engine, mid)
        m = drive(engine, settings, mid)
        received = Counter(msg.rcpt_tos[0] for msg in relay.messages)
    assert (m.status, m.sent, m.failed) == (MailshotStatus.END, 6, 0)
    assert set(received.values()) == {1} and len(received) == 6


def test_in_doubt_recipients_of_a_dead_worker_are_resent_only_when_the_operator_asks(
    db_url: str, tmp_path: Path
) -> None:
    """A dead worker's `sending` rows become `unknown` (not resent); `resend_unknown` queues them again
    and an ended sending is processing again, counters equal to a recount at each step."""
    import socket

    from sqlalchemy import update

    from mailshot_core.store.models import Recipient, RecipientStatus, utcnow

    settings = make_settings(db_url)
    engine = engine_for(settings)
    seed(engine, tmp_path, 4)
    mid = create(engine, settings)
    lifecycle.start_sending(engine, settings, mid)
    token = f"{socket.gethostname()[:40]}:999999999:deadbeef"  # no such process on this host: dead
    with session_scope(engine) as session:
        claims.register_worker(session, mid, token, utcnow())
        m = sendings.get(session, mid)
        claimed, _ = claims.claim(session, m, token, 2, utcnow())
        session.execute(
            update(Recipient)
            .where(Recipient.id.in_([r.id for r in claimed]))  # type: ignore[attr-defined]
            .values(status=RecipientStatus.SENDING)
        )
    with session_scope(engine) as session:
        assert claims.recover_dead_workers(session, mid, utcnow(), timedelta(seconds=60)) == (0, 2)
        session.execute(update(Recipient).where(Recipient.status == RecipientStatus.TODO).values(status="sent"))
        sendings.apply_counter_deltas(session, mid, sendings.counter_deltas([("todo", "sent")] * 2))
        sendings.finish(session, mid)
    _counters_match(engine, mid)
    with session_scope(engine) as session:
        assert claims.resend_unknown(session, mid) == 2
        m = sendings.get(session, mid)
        assert (m.status, m.nb_unknown, m.current) == (MailshotStatus.PROCESSING, 0, 2)
    _counters_match(engine, mid)


def test_fast_mode_sends_from_one_process_only_where_one_sqlite_writer_is_faster(db_url: str, tmp_path: Path) -> None:
    """pipeline.sends_in_one_process: SQLite and pre-encoded templates -> one process (the single
    write lock limits, bench/RESULTS.md); a Jinja2-rendered template (CPU-bound), PostgreSQL, or a
    cross-run connection cap -> the process pool."""
    settings = make_settings(db_url)
    engine = engine_for(settings)
    seed(engine, tmp_path, 3)
    simple = create(engine, settings, html="<p>Hello {{ nom }}</p>")
    rendered = create(engine, settings, html="<p>{% if nom %}Hello {{ nom|title }}{% endif %}</p>")
    sqlite = db_url.startswith("sqlite")
    assert pipeline.sends_in_one_process(engine, settings, simple) is sqlite
    assert pipeline.sends_in_one_process(engine, settings, rendered) is False
    capped = settings.model_copy(update={"max_connections": 4})
    assert pipeline.sends_in_one_process(engine, capped, simple) is False


def test_a_fast_mode_worker_keeps_its_connections_from_one_claim_to_the_next(db_url: str, tmp_path: Path) -> None:
    """send_batches tops its batch up claim after claim (50 at a time) over the same connections: the
    relay sees one session per connection, not a new set per claim (connection churn is what relays
    rate-limit, and each set cost a pause in the sending); everyone once, nothing left claimed."""
    with DevRelay() as relay:
        settings = make_settings(db_url, relay).model_copy(update={"batch_size": 50, "smtp_connections": 4})
        engine = engine_for(settings)
        everyone = seed(engine, tmp_path, 1000)
        mid = create(engine, settings)
        lifecycle.start_sending(engine, settings, mid)
        before = relay.sessions_opened  # the relay's own start-up check
        report = pipeline.send_batches(engine, settings, mid)
        received = Counter(m.rcpt_tos[0] for m in relay.messages)
        opened = relay.sessions_opened - before
    assert report.sent == 1000 and report.claimed == 1000, report
    assert sorted(received) == sorted(everyone) and max(received.values()) == 1
    assert opened <= 4, f"{opened} SMTP sessions for 20 claims over 4 connections"
    assert {s for s, _ in recipients(engine, mid).values()} == {"sent"}
    _counters_match(engine, mid)
