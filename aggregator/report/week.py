"""ISO weeks and UTC months as half-open windows [start, end) in epoch seconds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

DAY = 86400
WEEK = 7 * DAY
_WEEK_RE = re.compile(r"^(\d{4})-W(\d{2})$")


class WeekError(ValueError):
    """A week string that is not an ISO week, or a week that has not ended yet."""


def _epoch(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())


def iso_utc(t: float) -> str:
    """Epoch seconds as an ISO 8601 UTC string with a Z, to the second."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, order=True)
class Week:
    """An ISO week (Monday 00:00 UTC to the next Monday 00:00 UTC)."""

    year: int
    week: int

    @classmethod
    def parse(cls, text: str) -> Week:
        m = _WEEK_RE.match(text.strip())
        if not m:
            raise WeekError(f"bad week {text!r}: give an ISO week like 2026-W47")
        year, week = int(m.group(1)), int(m.group(2))
        try:
            date.fromisocalendar(year, week, 1)
        except ValueError:
            raise WeekError(f"bad week {text!r}: {year} has no ISO week {week}") from None
        return cls(year, week)

    @classmethod
    def containing(cls, t: float) -> Week:
        iso = datetime.fromtimestamp(t, UTC).isocalendar()
        return cls(iso.year, iso.week)

    @classmethod
    def last_complete(cls, now: float) -> Week:
        """The latest week that has ended at `now`."""
        return cls.containing(now).shifted(-1)

    @property
    def monday(self) -> date:
        return date.fromisocalendar(self.year, self.week, 1)

    @property
    def start(self) -> int:
        return _epoch(self.monday)

    @property
    def end(self) -> int:
        return self.start + WEEK

    def shifted(self, weeks: int) -> Week:
        return Week.containing(self.start + weeks * WEEK)

    def check_ended(self, now: float) -> None:
        if self.end > now:
            raise WeekError(
                f"week {self} has not ended yet (it ends {iso_utc(self.end)}); "
                "a report covers complete weeks only"
            )

    def months(self) -> list[Month]:
        """The UTC months this week touches, in order (one or two)."""
        first = Month.containing(self.start)
        last = Month.containing(self.end - 1)
        return [first] if first == last else [first, last]

    def __str__(self) -> str:
        return f"{self.year}-W{self.week:02d}"


@dataclass(frozen=True, order=True)
class Month:
    year: int
    month: int

    @classmethod
    def containing(cls, t: float) -> Month:
        d = datetime.fromtimestamp(t, UTC)
        return cls(d.year, d.month)

    @property
    def start(self) -> int:
        return _epoch(date(self.year, self.month, 1))

    @property
    def end(self) -> int:
        nxt = date(self.year, self.month, 28) + timedelta(days=4)
        return _epoch(nxt.replace(day=1))

    def __str__(self) -> str:
        return f"{self.year}-{self.month:02d}"
