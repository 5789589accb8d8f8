"""The MAX_FAIL rule across four real sendings, bounce mail ingested from a Maildir, the address history.

Rule (issue 5, original §3.2): an address leaves every list when its last MAILSHOT_MAX_FAIL (3)
sendings all ended in failure or bounce, each of them having succeeded for someone else; a sending
that failed for everyone, or a sender-side block (5.7.x), never counts against it.
"""

from __future__ import annotations

import mailbox
import re
import sys
from pathlib import Path

import pytest
from sqlmodel import select

from bouncemail import dsn
from conftest import TEST_KEY, engine_for, make_settings
from helpers import create, drive, recipients
from mailshot_core.audience import subscribers, subscriptions
from mailshot_core.audience.lists import create_list
from mailshot_core.cli import main
from mailshot_core.config import get_settings
from mailshot_core.devtools.relay import DevRelay, FaultPlan
from mailshot_core.feedback import fail_rule, inbox
from mailshot_core.feedback.mailboxes import MaildirBox, ingest
from mailshot_core.store.db import session_scope
from mailshot_core.store.models import Subscriber

D = "example.com"
UNKNOWN = "550 5.1.1 no such user"
POLICY = "550 5.7.1 blocked by local policy"
# Who is on which list, and what the relay answers them in each of the four sendings (None: accept).
MEMBERS = {"e": ("news", "extra"), "a": ("news", "extra"), "g": ("extra",), "h": ("extra",), "c": ("extra",)}
MEMBERS["b"] = ("extra",)
PLANS: list[tuple[tuple[str, ...], dict[str, str]]] = [
    (("extra",), {"a": UNKNOWN, "g": UNKNOWN, "h": UNKNOWN, "c": POLICY, "b": UNKNOWN}),
    (("news",), {"e": UNKNOWN, "a": UNKNOWN}),  # failed for everyone: proves nothing about `a`
    (("extra",), {"a": UNKNOWN, "g": UNKNOWN, "h": UNKNOWN, "c": POLICY}),
    (("extra",), {"a": UNKNOWN, "g": UNKNOWN, "c": POLICY, "b": UNKNOWN}),  # h: accepted, bounces later
]


def _status(engine: object, name: str) -> str:
    with session_scope(engine) as session:  # type: ignore[arg-type]
        return str(session.exec(select(Subscriber.status).where(Subscriber.email == f"{name}@{D}")).one())


def test_four_sendings_unsubscribe_exactly_the_addresses_the_rule_names(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(db_url, bounce_address="bounces@news.example.org")
    engine = engine_for(settings)
    with session_scope(engine) as session:
        create_list(session, "news")
        create_list(session, "extra")
        for name, lists in MEMBERS.items():
            for lst in lists:
                subscriptions.add_subscriber(session, f"{name}@{D}", lst)
    ids = []
    for number, (lists, faults) in enumerate(PLANS, 1):
        with DevRelay(faults=FaultPlan({f"{n}@{D}": r for n, r in faults.items()})) as relay:
            run = make_settings(db_url, relay, bounce_address="bounces@news.example.org")
            mailshot_id = create(engine, run, lists)
            drive(engine, run, mailshot_id)
            ids.append(mailshot_id)
            received = relay.messages
        with session_scope(engine) as session:  # what the send flow does when a sending ends
            unsubscribed = fail_rule.check_sending(session, mailshot_id, settings.max_fail)
        # Only after the fourth sending does anyone have three countable failures (g; h after its bounce).
        assert unsubscribed == (1 if number == 4 else 0), number
    assert recipients(engine, ids[1]) == {f"e@{D}": ("fail", 1), f"a@{D}": ("fail", 1)}

    # h's fourth message was accepted, then bounced: the DSN comes back to its VERP address.
    to_h = next(m for m in received if m.rcpt_tos == [f"h@{D}"])
    assert to_h.envelope_from.startswith("bounces+m")
    box_path = tmp_path / "bounces"
    box = mailbox.Maildir(box_path, create=True)
    box.add(dsn(to_h.envelope_from, f"h@{D}", "5.1.1", "550 5.1.1 mailbox unknown", original=to_h.data))
    forged = to_h.envelope_from.replace(f".r{to_h.envelope_from.split('.r')[1].split('.')[0]}.", ".r1.")
    box.add(dsn(forged, f"e@{D}", "5.1.1", "550 5.1.1 forged"))  # names e: must change nothing
    box.add(b"From: friend@example.net\nSubject: hello\n\njust a reply\n")  # not a bounce
    report = ingest(engine, TEST_KEY.encode(), MaildirBox(box_path, "mailshot-processed"))
    assert (report.seen, report.processed, report.events) == (3, 1, 1)
    assert sorted(why.split(" ")[0] for _, why in report.left) == ["VERP", "no"]
    assert len(box) == 2 and len(box.get_folder("mailshot-processed")) == 1  # nothing deleted
    assert inbox.apply_all(engine, max_fail=settings.max_fail).unsubscribed == 1

    assert {n: _status(engine, n) for n in MEMBERS} == {
        "e": "valid",  # every sending delivered but the one that failed for everyone
        "a": "valid",  # failed in all four, but the second failed for everyone
        "g": "unsubscribed",  # sendings 1, 3, 4 failed: hard bounces at SMTP time
        "h": "unsubscribed",  # sendings 1, 3 at SMTP time, 4 by bounce mail
        "c": "valid",  # 5.7.1: our policy problem, not the address
        "b": "valid",  # delivered in sending 3
    }
    assert recipients(engine, ids[3])[f"h@{D}"][0] == "bounce"
    assert recipients(engine, ids[3])[f"e@{D}"][0] == "sent"  # the forged bounce changed nothing
    with session_scope(engine) as session:
        reason = subscribers.get_subscriber(session, f"h@{D}").unsubscribe_reason or ""
    assert f"sending {ids[3]} bounce (bounce-mail hard_bounce" in reason
    assert f"sending {ids[2]} fail" in reason and f"sending {ids[0]} fail" in reason

    # The address history shows the sendings, their outcome, the events and why it was unsubscribed.
    monkeypatch.setenv("MAILSHOT_DATABASE_URL", db_url)
    monkeypatch.setattr(sys, "argv", ["mailshot", "subscribers", "show", f"g@{D}"])
    get_settings.cache_clear()
    try:
        main()
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr().out
    assert "unsubscribed" in out and "MAILSHOT_MAX_FAIL=3" in out
    for mailshot_id in (ids[0], ids[2], ids[3]):
        assert f"sending {mailshot_id} fail" in " ".join(out.split())
    assert "hard_bounce" in out and "max-fail" in out
    with session_scope(engine) as session:  # the events the reason cites are g's failures, shown above
        history = subscribers.history(session, f"g@{D}")
        cited = {int(i) for i in re.findall(r"event (\d+)", history.subscriber.unsubscribe_reason or "")}
        failures = {e.id for e in history.events if e.kind == "hard_bounce"}
    assert cited == failures and len(cited) == 3


@pytest.mark.parametrize(("failing", "paused"), [(0.7, True), (0.3, False)])
def test_circuit_breaker_pauses_a_sending_that_fails_for_most(
    db_url: str, tmp_path: Path, failing: float, paused: bool
) -> None:
    """Over MAILSHOT_MAX_FAIL_RATIO (50 %) of >= 100 attempts by this run failed: paused, with the reason."""
    from datetime import timedelta

    from helpers import seed
    from mailshot_core.sending import lifecycle, pipeline, sendings
    from mailshot_core.store.models import utcnow

    since = utcnow() - timedelta(seconds=1)
    with DevRelay(faults=FaultPlan(random_fault=(failing, UNKNOWN), seed=1)) as relay:
        settings = make_settings(db_url, relay, batch_size=50)
        engine = engine_for(settings)
        seed(engine, tmp_path, 200)
        mailshot_id = create(engine, settings)
        lifecycle.start_sending(engine, settings, mailshot_id)
        reason = None
        for batch in range(3):
            if lifecycle.next_step(engine, settings, mailshot_id).action != "send":
                break  # what the flow does: a paused sending gets no more batches
            pipeline.send_batch(engine, settings, mailshot_id)
            with session_scope(engine) as session:
                reason = reason or fail_rule.breaker(session, mailshot_id, since, settings.max_fail_ratio)
            if batch < 1:  # 50 attempts: too few to judge
                assert reason is None
        assert (reason is not None) == paused
        with session_scope(engine) as session:
            m = sendings.get(session, mailshot_id)
            assert (m.status == "pause") == paused
            # Judged on this run's attempts only: after a resume, the old failures do not trip it again.
            assert fail_rule.breaker(session, mailshot_id, utcnow(), settings.max_fail_ratio) is None
        if paused:
            assert reason is not None and "MAILSHOT_MAX_FAIL_RATIO=50%" in reason and "relay" in reason
            assert lifecycle.next_step(engine, settings, mailshot_id).action == "stopped"
            assert sum(1 for s, _ in recipients(engine, mailshot_id).values() if s == "todo") == 100  # not burnt


def test_the_rule_still_sees_sendings_archived_by_the_purge(db_url: str, tmp_path: Path) -> None:
    """After archive.py deleted the recipient rows of old sendings, their kept outcomes (delivery_outcome)
    and counters still count: three failures in three sendings delivered to others, two of them archived."""
    from datetime import timedelta

    from mailshot_core.duration import parse_duration
    from mailshot_core.sending import archive
    from mailshot_core.store.models import utcnow

    settings = make_settings(db_url)
    engine = engine_for(settings)
    with session_scope(engine) as session:
        create_list(session, "news")
        for name in ("ok", "dead"):
            subscriptions.add_subscriber(session, f"{name}@{D}", "news")
    ids = []
    for _ in range(3):
        with DevRelay(faults=FaultPlan({f"dead@{D}": UNKNOWN})) as relay:
            run = make_settings(db_url, relay)
            ids.append(create(engine, run, ("news",)))
            drive(engine, run, ids[-1])
    report = archive.purge(engine, parse_duration("1d"), now=utcnow() + timedelta(days=30))
    assert sorted(a.id for a in report.archived) == ids[:2]  # the most recent one is kept
    with session_scope(engine) as session:
        assert fail_rule.check_addresses(session, [f"dead@{D}", f"ok@{D}"], 3) == 1
    assert (_status(engine, "dead"), _status(engine, "ok")) == ("unsubscribed", "valid")
    with session_scope(engine) as session:
        reason = subscribers.get_subscriber(session, f"dead@{D}").unsubscribe_reason or ""
    assert all(f"sending {i} fail" in reason for i in ids)
