"""The sliding windows behind the login and subscribe throttles (web/throttle.py), with the clock
passed in: the limit per key, the window sliding, refusals not counted, and memory bounded."""

from __future__ import annotations

from mailshot_core.web.server import redact
from mailshot_core.web.throttle import SlidingWindow, Throttle


def test_a_key_gets_its_limit_per_window_then_waits_for_the_oldest_to_expire() -> None:
    throttle = Throttle(limit=3, window=600)
    assert [throttle.take("a", now=t) for t in (0, 10, 20)] == [0, 0, 0]
    assert throttle.take("a", now=30) == 570  # the first expires at 600
    assert throttle.take("b", now=30) == 0  # another key has its own count
    assert throttle.take("a", now=599) == 1
    assert throttle.take("a", now=601) == 0  # refusals were not counted: one slot freed, one taken
    assert throttle.take("a", now=605) == 5


def test_memory_is_bounded_expired_keys_first_then_the_oldest() -> None:
    window = SlidingWindow(window=100, max_keys=3)
    window.add("old", 0)
    window.add("b", 50)
    window.add("c", 60)
    window.add("d", 120)  # full: "old" has expired and goes
    assert [k for k in ("old", "b", "c", "d") if window.recent(k, 120)] == ["b", "c", "d"]
    window.add("e", 130)  # full of live keys: the oldest inserted ("b") goes
    assert [k for k in ("b", "c", "d", "e") if window.recent(k, 130)] == ["c", "d", "e"]


def test_confirmation_and_preferences_tokens_are_redacted_from_log_lines() -> None:
    line = '127.0.0.1:1 - "POST /confirm/12.1733380000.AbC-_x HTTP/1.1" 200'
    assert redact(line) == '127.0.0.1:1 - "POST /confirm/*** HTTP/1.1" 200'
    assert redact("/preferences/7.1.sig?x=1") == "/preferences/***?x=1"
    assert redact("/subscribe?list=news") == "/subscribe?list=news"
