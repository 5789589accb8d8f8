"""The bulk SMTP client (transports/smtp_session.py) against a real aiosmtpd relay and raw servers.

Each behaviour is checked with and without PIPELINING, since the client takes a different path for
relays that do not offer it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator

import pytest

from mailshot_core.devtools.relay import DevRelay, FaultPlan
from mailshot_core.transports.smtp_session import SmtpDisconnected, SmtpReplyError, SmtpSession

TIMEOUT = 5.0


def _message(i: int, body: str = "hello") -> bytes:
    return f"From: news@example.org\r\nTo: r{i}@example.org\r\nSubject: t{i}\r\n\r\n{body}\r\n".encode()


async def _open(relay: DevRelay) -> SmtpSession:
    return await SmtpSession.open(relay.host, relay.port, timeout=TIMEOUT)


@pytest.fixture(params=[True, False], ids=["pipelining", "one-by-one"])
def relay(request: pytest.FixtureRequest) -> Iterator[DevRelay]:
    plan = FaultPlan(
        {
            "refused@example.org": "550 5.1.1 No such user",
            "later@example.org": "451 4.3.0 Try later",
            "busy@example.org": "421 4.7.0 Too busy, closing",
            "data@example.org": "data:554 5.7.1 Rejected as spam",
        }
    )
    with DevRelay(faults=plan, pipelining=request.param) as r:
        yield r


def test_many_messages_on_one_session_arrive_byte_for_byte(relay: DevRelay) -> None:
    """Transparency dots (RFC 5321 §4.5.2): lines starting with '.' (even a lone '.') arrive intact."""
    tricky = ".starts with a dot\r\n.\r\n..two dots\r\nend ."

    async def go() -> None:
        session = await _open(relay)
        assert session.pipelining is relay.pipelining
        for i in range(5):
            reply = await session.send("news@example.org", f"r{i}@example.org", _message(i, tricky))
            assert reply.code == 250
        await session.quit()
        assert not session.is_open

    asyncio.run(go())
    assert [m.rcpt_tos for m in relay.messages] == [[f"r{i}@example.org"] for i in range(5)]
    assert [m.data for m in relay.messages] == [_message(i, tricky) for i in range(5)]


def test_a_dot_safe_message_is_sent_as_built_and_decodes_to_its_dots(relay: DevRelay) -> None:
    """message.py's messages never start a line with '.', so the SMTP transport sends them unstuffed:
    the relay receives the very bytes, and the text, dots included, decodes back."""
    import email
    import email.policy

    from mailshot_core.content.message import build_notice
    from mailshot_core.transports.smtp import SmtpConfig, SmtpTransport

    text = ".starts with a dot\n.\n..two dots\n" + "x" * 74 + " \n" + "." * 100 + "\nend ."
    message = build_notice(
        from_name="News",
        from_email="news@example.org",
        to_email="r@example.org",
        to_name="R",
        subject="dots",
        text=text,
        domain="example.org",
        kind="test",
    )
    assert message.dot_safe

    async def go() -> None:
        conn = await SmtpTransport(SmtpConfig(relay.host, relay.port, timeout=TIMEOUT)).connect()
        try:
            await conn.send(message)
        finally:
            await conn.close()

    asyncio.run(go())
    (received,) = relay.messages
    assert received.data == message.data
    parsed = email.message_from_bytes(received.data, policy=email.policy.default)
    assert parsed.get_content().replace("\r\n", "\n") == text + "\n"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("address", "stage", "code"),
    [("refused@example.org", "RCPT TO", 550), ("later@example.org", "RCPT TO", 451), ("data@example.org", "DATA", 554)],
)
def test_a_refused_message_leaves_the_session_usable(relay: DevRelay, address: str, stage: str, code: int) -> None:
    async def go() -> None:
        session = await _open(relay)
        with pytest.raises(SmtpReplyError) as caught:
            await session.send("news@example.org", address, _message(0))
        assert (caught.value.stage, caught.value.reply.code) == (stage, code)
        assert session.is_open
        await session.send("news@example.org", "ok@example.org", _message(1))
        await session.quit()

    asyncio.run(go())
    assert [m.rcpt_tos for m in relay.messages] == [["ok@example.org"]]


def test_421_is_reported_and_closes_the_session(relay: DevRelay) -> None:
    async def go() -> None:
        session = await _open(relay)
        with pytest.raises(SmtpReplyError) as caught:
            await session.send("news@example.org", "busy@example.org", _message(0))
        assert caught.value.reply.code == 421
        assert not session.is_open
        with pytest.raises(SmtpDisconnected):
            await session.send("news@example.org", "ok@example.org", _message(1))

    asyncio.run(go())
    assert relay.messages == []


def _raw_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> Callable[[Callable[[int], Awaitable[None]]], None]:
    """Run ``client(port)`` against a one-off asyncio server speaking whatever ``handler`` says."""

    def run(client: Callable[[int], Awaitable[None]]) -> None:
        async def go() -> None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            server = await asyncio.start_server(handler, "127.0.0.1", port)
            async with server:
                await client(port)

        asyncio.run(go())

    return run


def test_garbage_instead_of_a_reply_ends_the_session() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def client(port: int) -> None:
        with pytest.raises(SmtpDisconnected, match="not an SMTP reply"):
            await SmtpSession.open("127.0.0.1", port, timeout=TIMEOUT)

    _raw_server(handler)(client)


def test_a_silent_server_times_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def client(port: int) -> None:
        with pytest.raises(SmtpDisconnected, match="no reply"):
            await SmtpSession.open("127.0.0.1", port, timeout=0.3)

    _raw_server(handler)(client)


def test_multiline_replies_split_across_packets_are_joined() -> None:
    """Replies arrive in arbitrary pieces: a multi-line EHLO cut mid-line still parses."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        await reader.readline()
        for piece in (b"250-sink.example Hello\r\n250-PIPEL", b"INING\r\n250-SIZE 1000", b"0\r\n250 8BITMIME\r\n"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        await reader.read()

    async def client(port: int) -> None:
        session = await SmtpSession.open("127.0.0.1", port, timeout=TIMEOUT)
        assert session.extensions == {"pipelining": "", "size": "10000", "8bitmime": ""}
        session.abort()

    _raw_server(handler)(client)


def test_the_next_envelope_rides_with_the_data(relay: DevRelay) -> None:
    """``then``: with PIPELINING the next message's MAIL/RCPT/DATA go out with this message's data, and
    the next send reads their replies; a refusal of the announced envelope surfaces on that send."""
    envelopes = [f"r{i}@example.org" for i in range(3)] + ["refused@example.org", "r4@example.org"]

    async def go() -> None:
        session = await _open(relay)
        for i, rcpt in enumerate(envelopes):
            following = ("news@example.org", envelopes[i + 1]) if i + 1 < len(envelopes) else None
            if rcpt == "refused@example.org":
                with pytest.raises(SmtpReplyError) as caught:
                    await session.send("news@example.org", rcpt, _message(i), then=following)
                assert caught.value.stage == "RCPT TO"
                continue
            await session.send("news@example.org", rcpt, _message(i), then=following)
            assert session.announced == (following if relay.pipelining else None)
        await session.quit()

    asyncio.run(go())
    assert [m.rcpt_tos for m in relay.messages] == [[r] for r in envelopes if r != "refused@example.org"]
    assert [m.data for m in relay.messages] == [_message(i) for i in (0, 1, 2, 4)]


def test_withdrawing_an_announced_message_delivers_nothing_for_it(relay: DevRelay) -> None:
    async def go() -> None:
        session = await _open(relay)
        await session.send("news@example.org", "r0@example.org", _message(0), then=("news@example.org", "x@y.org"))
        session.withdraw()
        assert session.announced is None
        assert session.is_open is not relay.pipelining  # the relay may be waiting for data: hang up
        await session.quit()
        again = await _open(relay)
        await again.send("news@example.org", "r1@example.org", _message(1))
        await again.quit()

    asyncio.run(go())
    assert [m.rcpt_tos for m in relay.messages] == [["r0@example.org"], ["r1@example.org"]]


def test_a_421_to_an_announced_envelope_is_not_lost_by_reconnecting(relay: DevRelay) -> None:
    """The relay answers 421 to the envelope sent ahead and hangs up: the next send reports it as a
    throttle (it drives the backoff) instead of silently reconnecting; the one after reconnects."""
    from mailshot_core.config import SmtpTls
    from mailshot_core.transports.base import OutgoingMessage, Throttled
    from mailshot_core.transports.smtp import SmtpConfig, SmtpTransport

    def msg(i: int, rcpt: str) -> OutgoingMessage:
        return OutgoingMessage(i, "news@example.org", rcpt, _message(i), f"<{i}@x>")

    async def go() -> None:
        conn = await SmtpTransport(SmtpConfig(relay.host, relay.port, SmtpTls.NONE, timeout=TIMEOUT)).connect()
        await conn.send(msg(0, "r0@example.org"), then=msg(1, "busy@example.org"))
        with pytest.raises(Throttled):
            await conn.send(msg(1, "busy@example.org"), then=msg(2, "r2@example.org"))
        await conn.send(msg(2, "r2@example.org"))
        await conn.close()

    asyncio.run(go())
    assert [m.rcpt_tos for m in relay.messages] == [["r0@example.org"], ["r2@example.org"]]
