"""The dev relay's fault plan: which reply each recipient gets (temporary and permanent RCPT
replies, 421 with hang-up, a reply at end of DATA, a connection dropped mid-DATA).

Parsed once, when the plan is built, so a typo in a test fails at once instead of turning into a
confusing SMTP conversation later.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

_REPLY_RE: Final = re.compile(r"^[2-5]\d\d(?:[ -].*)?$")

OutcomeKind = Literal["ok", "rcpt", "data", "drop-data"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One parsed fault-plan step, so the SMTP hooks never have to re-parse strings.

    ``kind`` is ``"ok"`` (accept), ``"rcpt"`` (answer ``reply`` to RCPT), ``"data"`` (accept the
    RCPT, answer ``reply`` at end of DATA) or ``"drop-data"`` (accept the RCPT, read the data, then
    close the connection without answering).
    """

    kind: OutcomeKind
    reply: str | None = None

    @property
    def code(self) -> int | None:
        """The numeric reply code, used to decide whether the reply must also hang up (421)."""
        return int(self.reply[:3]) if self.reply else None

    @classmethod
    def parse(cls, spec: str) -> Outcome:
        """Parse ``"ok"``, ``"drop-data"``, ``"data:554 ..."`` or ``"451 ..."``.

        Validation happens here, at plan construction, so a typo in a test fails loudly at once
        instead of turning into a confusing SMTP conversation later.
        """
        text = spec.strip()
        if text.lower() == "ok":
            return cls("ok")
        if text.lower() == "drop-data":
            return cls("drop-data")
        kind: OutcomeKind = "rcpt"
        if text.lower().startswith("data:"):
            kind = "data"
            text = text[len("data:") :].strip()
        if not _REPLY_RE.match(text) or text[0] not in "45":
            raise ValueError(
                f"bad fault outcome {spec!r}: expected 'ok', 'drop-data', 'data:<4xx/5xx reply>' or '<4xx/5xx reply>'"
            )
        return cls(kind, text)


ACCEPT: Final = Outcome("ok")


class FaultPlan:
    """Declarative, thread-safe fault injection keyed by recipient address.

    Each listed address has a sequence of outcomes; one is consumed per RCPT attempt and the last one
    repeats forever, so ``["451 4.3.0 later", "ok"]`` means "fail once, then always accept".
    Addresses that are not listed are accepted, unless ``random_fault=(probability, outcome)`` is
    given, in which case each of their attempts fails with that probability.  The random generator
    is seeded so a failing test run can be replayed exactly.

    The plan is read by the relay's event-loop thread and by the test thread (``attempts``), hence
    the lock.
    """

    def __init__(
        self,
        faults: Mapping[str, str | Sequence[str]] | None = None,
        *,
        random_fault: tuple[float, str] | None = None,
        seed: int = 0,
    ) -> None:
        self._lock = threading.Lock()
        self._plans: dict[str, list[Outcome]] = {}
        self._cursor: dict[str, int] = {}
        self._attempts: dict[str, int] = {}
        for addr, steps in (faults or {}).items():
            # A bare string is a Sequence[str] of characters: treat it as a one-step plan instead.
            seq = [steps] if isinstance(steps, str) else list(steps)
            if not seq:
                raise ValueError(f"empty fault sequence for {addr!r}")
            self._plans[norm_address(addr)] = [Outcome.parse(s) for s in seq]
        self._random: tuple[float, Outcome] | None = None
        if random_fault is not None:
            probability, spec = random_fault
            if not 0.0 <= probability <= 1.0:
                raise ValueError(f"random_fault probability must be within [0, 1], got {probability}")
            self._random = (probability, Outcome.parse(spec))
        self._rng = random.Random(seed)

    def next_outcome(self, addr: str) -> Outcome:
        """Consume and return the outcome for one RCPT attempt to ``addr`` (counted in ``attempts``)."""
        key = norm_address(addr)
        with self._lock:
            self._attempts[key] = self._attempts.get(key, 0) + 1
            steps = self._plans.get(key)
            if steps is not None:
                i = self._cursor.get(key, 0)
                self._cursor[key] = i + 1
                return steps[min(i, len(steps) - 1)]
            if self._random is not None:
                probability, outcome = self._random
                if self._rng.random() < probability:
                    return outcome
            return ACCEPT

    def attempts(self, addr: str) -> int:
        """How many times ``addr`` was attempted at RCPT (lets tests assert retry counts)."""
        with self._lock:
            return self._attempts.get(norm_address(addr), 0)

    def total_attempts(self) -> int:
        """RCPT attempts over all addresses, to assert that a run did (or did not) touch SMTP."""
        with self._lock:
            return sum(self._attempts.values())


def norm_address(addr: str) -> str:
    """Lower-case and trim an address; SMTP clients vary in the case they send."""
    return addr.strip().strip("<>").lower()
