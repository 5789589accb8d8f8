"""Tests for the local SMTP relay and its fault injection, against real SMTP clients over TCP."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

from mailshot_core.devtools.relay import DevRelay, FaultPlan, Outcome

SENDER = "news@mailshot.test"
BODY = b"Subject: hello\r\nFrom: news@mailshot.test\r\n\r\nHello there.\r\n"
TIMEOUT = 5.0
REPO_ROOT = Path(__file__).resolve().parents[2]


def smtp_client(relay: DevRelay) -> smtplib.SMTP:
    # local_hostname avoids a socket.getfqdn() DNS lookup per client.
    return smtplib.SMTP(relay.host, relay.port, local_hostname="localhost", timeout=TIMEOUT)


def email(to: str, subject: str = "hello") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Hello there.")
    return msg


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[DevRelay]:
    with DevRelay(tmp_path / "out") as r:
        yield r


def raw_session(relay: DevRelay, rcpt: str) -> socket.socket:
    """Open a raw SMTP session up to and including the data terminator, reading each reply."""
    sock = socket.create_connection((relay.host, relay.port), timeout=TIMEOUT)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220")
    for cmd, code in [
        (b"HELO localhost", b"250"),
        (f"MAIL FROM:<{SENDER}>".encode(), b"250"),
        (f"RCPT TO:<{rcpt}>".encode(), b"250"),
        (b"DATA", b"354"),
    ]:
        sock.sendall(cmd + b"\r\n")
        assert f.readline().startswith(code), cmd
    f.close()  # the socket stays open; only the file wrapper's reference goes
    sock.sendall(BODY + b".\r\n")
    return sock


def read_until_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


# --- recording -------------------------------------------------------------------------------------


def test_accepted_message_is_written_to_out_dir_and_kept_in_memory(relay: DevRelay) -> None:
    """Every accepted message lands in <out_dir>/<n>.eml and in relay.messages, with its envelope."""
    with smtp_client(relay) as c:
        c.sendmail(SENDER, ["A@x.org", "b@x.org"], BODY)
        c.sendmail(SENDER, ["c@x.org"], BODY.replace(b"hello", b"second"))
    assert relay.out_dir is not None
    files = sorted(p.name for p in relay.out_dir.iterdir())
    assert files == ["1.eml", "2.eml"]  # no temp files left behind
    assert (relay.out_dir / "1.eml").read_bytes() == BODY
    first, second = relay.messages
    assert (first.envelope_from, first.rcpt_tos, first.data) == (SENDER, ["A@x.org", "b@x.org"], BODY)
    assert first.path == relay.out_dir / "1.eml"
    assert second.rcpt_tos == ["c@x.org"] and b"second" in second.data
    assert first.received_at <= second.received_at
    assert relay.received_count == 2


def test_numbering_continues_after_existing_files_and_memory_can_be_off(tmp_path: Path) -> None:
    """A rerun never overwrites earlier .eml files; keep_in_memory=False still writes and counts."""
    (tmp_path / "7.eml").write_bytes(b"old")
    with DevRelay(tmp_path, keep_in_memory=False) as relay, smtp_client(relay) as c:
        c.sendmail(SENDER, ["a@x.org"], BODY)
        assert relay.messages == []
        assert relay.received_count == 1
    assert (tmp_path / "7.eml").read_bytes() == b"old"
    assert (tmp_path / "8.eml").read_bytes() == BODY


def test_port_zero_picks_a_free_port_and_stop_closes_it() -> None:
    """port=0 binds a real free port exposed after start(); after stop() nobody listens there."""
    relay = DevRelay()
    with pytest.raises(RuntimeError):
        _ = relay.port
    relay.start()
    try:
        assert relay.host == "127.0.0.1" and relay.port > 0
        with smtp_client(relay) as c:
            assert c.noop()[0] == 250
    finally:
        relay.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((relay.host, relay.port), timeout=TIMEOUT).close()


# --- faults ----------------------------------------------------------------------------------------


def test_451_sequence_is_consumed_per_attempt_then_ok() -> None:
    """Outcomes are consumed one per RCPT attempt: 451, 451, then ok (which then repeats)."""
    plan = FaultPlan({"a@x.org": ["451 4.3.0 Try again later", "451 4.3.0 Try again later", "ok"]})
    with DevRelay(faults=plan) as relay, smtp_client(relay) as c:
        for _ in range(2):
            with pytest.raises(smtplib.SMTPRecipientsRefused) as exc:
                c.sendmail(SENDER, ["A@X.org"], BODY)
            assert exc.value.recipients["A@X.org"] == (451, b"4.3.0 Try again later")
        assert relay.messages == []
        c.sendmail(SENDER, ["a@x.org"], BODY)
        c.sendmail(SENDER, ["a@x.org"], BODY)
    assert plan.attempts("a@x.org") == 4
    assert len(relay.messages) == 2


def test_550_is_permanent_and_only_the_refused_recipient_is_dropped() -> None:
    """A 550 step repeats forever; other recipients of the same message are still delivered."""
    plan = FaultPlan({"b@x.org": ["550 5.1.1 No such user"]})
    with DevRelay(faults=plan) as relay, smtp_client(relay) as c:
        for _ in range(3):
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                c.sendmail(SENDER, ["b@x.org"], BODY)
        refused = c.sendmail(SENDER, ["b@x.org", "ok@x.org"], BODY)
    assert refused == {"b@x.org": (550, b"5.1.1 No such user")}
    assert plan.attempts("b@x.org") == 4
    assert [m.rcpt_tos for m in relay.messages] == [["ok@x.org"]]


def test_data_fault_is_answered_at_end_of_data_and_not_recorded(tmp_path: Path) -> None:
    """'data:554 ...' accepts RCPT with 250 but answers 554 after the data; nothing is stored."""
    plan = FaultPlan({"d@x.org": ["data:554 5.7.1 Rejected", "ok"]})
    with DevRelay(tmp_path, faults=plan) as relay, smtp_client(relay) as c:
        c.ehlo()
        assert c.mail(SENDER)[0] == 250
        assert c.rcpt("d@x.org")[0] == 250
        assert c.data(BODY) == (554, b"5.7.1 Rejected")
        assert relay.messages == [] and list(tmp_path.iterdir()) == []
        c.rset()
        c.sendmail(SENDER, ["d@x.org"], BODY)  # second step: ok
    assert len(relay.messages) == 1


def test_drop_data_closes_the_connection_without_any_reply(relay: DevRelay) -> None:
    """'drop-data' reads the whole message, then hangs up: no 250 is ever sent and nothing is stored."""
    relay.faults = FaultPlan({"c@x.org": ["drop-data", "ok"]})
    with raw_session(relay, "c@x.org") as sock:
        assert read_until_eof(sock) == b""
    assert relay.messages == []
    assert relay.out_dir is not None and list(relay.out_dir.iterdir()) == []
    with smtp_client(relay) as c:  # the plan's next step is ok
        c.sendmail(SENDER, ["c@x.org"], BODY)
    assert relay.faults.attempts("c@x.org") == 2
    assert len(relay.messages) == 1


def test_drop_data_is_seen_by_aiosmtplib_as_a_disconnect() -> None:
    """An async client sending to a drop-data recipient gets SMTPServerDisconnected, not success."""
    plan = FaultPlan({"c@x.org": "drop-data"})
    with DevRelay(faults=plan) as relay:

        async def send() -> None:
            await aiosmtplib.send(
                email("c@x.org"),
                hostname=relay.host,
                port=relay.port,
                local_hostname="localhost",
                timeout=TIMEOUT,
            )

        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            asyncio.run(send())
        assert relay.messages == []


def test_421_reply_closes_the_connection() -> None:
    """A 421 RCPT reply is sent and then the server closes the connection (RFC 5321 3.8)."""
    plan = FaultPlan({"busy@x.org": ["421 4.7.0 Too busy"]})
    with DevRelay(faults=plan) as relay:
        c = smtp_client(relay)
        c.ehlo()
        c.mail(SENDER)
        assert c.rcpt("busy@x.org") == (421, b"4.7.0 Too busy")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            c.noop()
        c.close()
    assert relay.messages == []


def test_random_fault_is_deterministic_per_seed_and_spares_listed_addresses() -> None:
    """random_fault hits only unlisted addresses, at a seeded reproducible rate; keys are case-blind."""

    def run(seed: int) -> list[str]:
        plan = FaultPlan({"Listed@X.org": "ok"}, random_fault=(0.5, "451 4.3.0 Random"), seed=seed)
        assert all(plan.next_outcome("listed@x.org").kind == "ok" for _ in range(50))
        return [plan.next_outcome(f"r{i}@x.org").kind for i in range(200)]

    assert run(1) == run(1)
    assert run(1) != run(2)
    assert 60 < run(1).count("rcpt") < 140
    with pytest.raises(ValueError):
        FaultPlan({"a@x.org": ["250 fine"]})
    with pytest.raises(ValueError):
        FaultPlan({"a@x.org": []})
    assert Outcome.parse("data:554 5.7.1 Rejected") == Outcome("data", "554 5.7.1 Rejected")


# --- auth ------------------------------------------------------------------------------------------


def test_auth_is_required_before_mail_from() -> None:
    """With auth configured, MAIL FROM without AUTH gets 530 and nothing can be sent."""
    with DevRelay(auth=("user", "secret")) as relay, smtp_client(relay) as c:
        c.ehlo()
        assert c.has_extn("auth")
        assert c.mail(SENDER)[0] == 530
        with pytest.raises(smtplib.SMTPSenderRefused):
            c.sendmail(SENDER, ["a@x.org"], BODY)
    assert relay.messages == []


def test_auth_wrong_password_is_535() -> None:
    """A wrong password is refused with 535 for both PLAIN and LOGIN."""
    with DevRelay(auth=("user", "secret")) as relay:
        for mech, fn in [("PLAIN", "auth_plain"), ("LOGIN", "auth_login")]:
            with smtp_client(relay) as c:
                c.ehlo()
                c.user, c.password = "user", "wrong"
                with pytest.raises(smtplib.SMTPAuthenticationError) as exc:
                    c.auth(mech, getattr(c, fn))
                assert exc.value.smtp_code == 535


def test_auth_right_password_is_accepted() -> None:
    """The right credentials (PLAIN or LOGIN, sync or async client) authenticate and mail goes through."""
    with DevRelay(auth=("user", "secret")) as relay:
        for mech, fn in [("PLAIN", "auth_plain"), ("LOGIN", "auth_login")]:
            with smtp_client(relay) as c:
                c.ehlo()
                c.user, c.password = "user", "secret"
                assert c.auth(mech, getattr(c, fn))[0] == 235
                c.sendmail(SENDER, [f"{mech.lower()}@x.org"], BODY)
        asyncio.run(
            aiosmtplib.send(
                email("async@x.org"),
                hostname=relay.host,
                port=relay.port,
                username="user",
                password="secret",
                local_hostname="localhost",
                timeout=TIMEOUT,
            )
        )
    assert [m.rcpt_tos for m in relay.messages] == [["plain@x.org"], ["login@x.org"], ["async@x.org"]]


# --- throughput shapes -----------------------------------------------------------------------------


def test_several_messages_and_rset_on_one_connection(relay: DevRelay) -> None:
    """One connection carries many transactions; an RSET-abandoned transaction is not recorded."""
    with smtp_client(relay) as c:
        c.ehlo()
        c.mail(SENDER)
        c.rcpt("abandoned@x.org")
        assert c.rset()[0] == 250
        for i in range(5):
            c.sendmail(SENDER, [f"r{i}@x.org"], BODY)
            assert c.rset()[0] == 250
    assert [m.rcpt_tos for m in relay.messages] == [[f"r{i}@x.org"] for i in range(5)]


def test_four_concurrent_connections_are_served_in_parallel(tmp_path: Path) -> None:
    """Four clients at once are served concurrently (delays overlap) and every message is stored once."""
    delay = 0.15

    async def client(r: DevRelay, n: int) -> None:
        async with aiosmtplib.SMTP(hostname=r.host, port=r.port, local_hostname="localhost", timeout=TIMEOUT) as smtp:
            for i in range(3):
                await smtp.send_message(email(f"c{n}-{i}@x.org"))

    async def all_clients(r: DevRelay) -> None:
        await asyncio.gather(*(client(r, n) for n in range(4)))

    with DevRelay(tmp_path, delay=delay) as relay:
        started = time.monotonic()
        asyncio.run(all_clients(relay))
        elapsed = time.monotonic() - started
    assert elapsed < 12 * delay * 0.5  # serial would take 12 * delay
    got = sorted(r for m in relay.messages for r in m.rcpt_tos)
    assert got == sorted(f"c{n}-{i}@x.org" for n in range(4) for i in range(3))
    assert len(list(tmp_path.glob("*.eml"))) == 12


def test_client_gone_during_delay_is_not_recorded() -> None:
    """A client that disconnects while the relay delays its DATA answer never counts as delivered."""
    with DevRelay(delay=0.2) as relay:
        raw_session(relay, "a@x.org").close()
        assert relay.wait_for(1, timeout=0.4) == 0
    assert relay.messages == []


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_runs_until_sigterm_writing_messages_and_pidfile(tmp_path: Path) -> None:
    """The CLI prints its listening line, writes a pidfile, stores mail, and exits 0 on SIGTERM."""
    out, pidfile = tmp_path / "demo-out", tmp_path / "relay.pid"
    args = ["--port", "0", "--out-dir", str(out), "--pidfile", str(pidfile)]
    with subprocess.Popen(
        [sys.executable, "-m", "mailshot_core.devtools.relay", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            prefix, _, rest = line.partition("relay listening on 127.0.0.1:")
            port_text, _, where = rest.partition(", writing to ")
            assert prefix == "" and where == str(out), line
            assert int(pidfile.read_text()) == proc.pid
            with smtplib.SMTP("127.0.0.1", int(port_text), local_hostname="localhost", timeout=TIMEOUT) as c:
                c.sendmail(SENDER, ["a@x.org"], BODY)
            assert (out / "1.eml").read_bytes() == BODY
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=TIMEOUT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert not pidfile.exists()
