"""Durations typed by operators: ``12 months``, ``90d``, ``2w``, ``6h``, ``30min``, ``1y``.

Months and years are calendar months (12 months before 31 March is 31 March of the year before,
not 360 days), because operators and the original plugin (``purger_historique_delai``) count in
months.  ``m`` alone is refused: minutes or months?
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

_PART = re.compile(r"\s*(\d+)\s*([a-z]+)\s*,?", re.IGNORECASE)
_UNITS: dict[str, tuple[str, int]] = {
    **dict.fromkeys(("y", "yr", "yrs", "year", "years"), ("months", 12)),
    **dict.fromkeys(("mo", "month", "months"), ("months", 1)),
    **dict.fromkeys(("w", "week", "weeks"), ("seconds", 7 * 86400)),
    **dict.fromkeys(("d", "day", "days"), ("seconds", 86400)),
    **dict.fromkeys(("h", "hour", "hours"), ("seconds", 3600)),
    **dict.fromkeys(("min", "mins", "minute", "minutes"), ("seconds", 60)),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), ("seconds", 1)),
}


class DurationError(ValueError):
    """Not a duration; the message says what is accepted."""


@dataclass(frozen=True)
class Duration:
    months: int = 0
    seconds: int = 0

    def before(self, moment: datetime) -> datetime:
        """The moment this long before ``moment`` (calendar months, then the rest)."""
        total = moment.year * 12 + (moment.month - 1) - self.months
        year, month = divmod(total, 12)
        day = min(moment.day, calendar.monthrange(year, month + 1)[1])
        return moment.replace(year=year, month=month + 1, day=day) - timedelta(seconds=self.seconds)

    def __str__(self) -> str:
        parts = []
        if self.months:
            parts.append(f"{self.months} month{'s' if self.months > 1 else ''}")
        if self.seconds:
            parts.append(str(timedelta(seconds=self.seconds)))
        return ", ".join(parts) or "0 seconds"


def parse_duration(text: str) -> Duration:
    """``"12 months"`` -> Duration(months=12); DurationError on anything else."""
    value = text.strip()
    months = seconds = 0
    pos = 0
    while pos < len(value):
        match = _PART.match(value, pos)
        if match is None or match.end() == pos:
            break
        number, unit = int(match[1]), match[2].lower()
        if unit not in _UNITS:
            hint = " ('m' is ambiguous: write 'min' or 'mo')" if unit == "m" else ""
            raise DurationError(f"unknown unit {unit!r} in duration {text!r}{hint}")
        kind, factor = _UNITS[unit]
        if kind == "months":
            months += number * factor
        else:
            seconds += number * factor
        pos = match.end()
    if not value or pos != len(value):
        raise DurationError(f"not a duration: {text!r} (examples: '12 months', '90d', '2w', '6h', '30min', '1y 6mo')")
    return Duration(months, seconds)
