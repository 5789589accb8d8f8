"""Sliding-window counts per key (a client address, a login name), in process memory, bounded.

Shared by the login throttle (login.py) and the public subscribe form (subscribe.py).  The counts
live in one ``mailshot web`` process: what a single site needs, and nothing to store or purge.
Memory is bounded: past ``max_keys`` keys the expired ones are dropped, then the oldest keys
(someone rotating through many addresses gets the window of the newest ones, never unbounded growth).
"""

from __future__ import annotations

import threading
import time


class SlidingWindow:
    """The times of the events of each key in the last ``window`` seconds.  Not locked: its owner
    holds one lock over everything it updates together."""

    def __init__(self, window: float, max_keys: int = 10_000) -> None:
        self.window = window
        self.max_keys = max_keys
        self._times: dict[str, list[float]] = {}

    def recent(self, key: str, now: float) -> list[float]:
        """The key's events still inside the window, oldest first (the key is forgotten when none)."""
        times = [t for t in self._times.get(key, []) if t > now - self.window]
        if times:
            self._times[key] = times
        else:
            self._times.pop(key, None)
        return times

    def add(self, key: str, now: float) -> list[float]:
        """Record an event of ``key``; its events in the window, this one included."""
        times = self.recent(key, now)
        if key not in self._times and len(self._times) >= self.max_keys:
            self._bound(now)
        times.append(now)
        self._times[key] = times
        return times

    def forget(self, key: str) -> None:
        self._times.pop(key, None)

    def _bound(self, now: float) -> None:
        for key in list(self._times):
            self.recent(key, now)
        while len(self._times) >= self.max_keys:  # still full of live keys: the oldest inserted go first
            del self._times[next(iter(self._times))]


class Throttle:
    """At most ``limit`` events per key in ``window`` seconds; thread-safe (routes run in a pool)."""

    def __init__(self, limit: int, window: float, max_keys: int = 10_000) -> None:
        self.limit = limit
        self._events = SlidingWindow(window, max_keys)
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """Count one event of ``key`` if it is allowed: 0.  Refused (not counted): the seconds until
        the oldest event of the window expires."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._events.recent(key, now)
            if len(times) >= self.limit:
                return times[-self.limit] + self._events.window - now
            self._events.add(key, now)
        return 0.0
