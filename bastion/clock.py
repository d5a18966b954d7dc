"""Time as an input.

Anything that decides by time takes a `Clock`. Records use aware UTC datetimes
(`now()`); durations use the monotonic clock (`monotonic()`). Tests pass a
`FixedClock` and move it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current wall-clock time, timezone-aware, in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for durations only)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    # time.monotonic itself, not a method calling it: the PostgreSQL relay reads it a few
    # times per statement.
    monotonic = staticmethod(time.monotonic)


class FixedClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FixedClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._mono = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, delta: timedelta) -> None:
        self._now += delta
        self._mono += delta.total_seconds()
