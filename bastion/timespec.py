"""Parsing and printing durations (`90s`, `30m`, `1h30m`) and points in time (`--since`).

Pure functions, no clock of their own: relative times are resolved against the `now`
the caller passes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from bastion.errors import InvalidInput

_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_duration(text: str) -> timedelta:
    """`1h30m` -> 5400 s. Units d, h, m, s, largest first; at least one; no zero total."""
    raw = text.strip().lower()
    match = _DURATION.fullmatch(raw)
    if not raw or match is None or not any(match.groups()):
        raise InvalidInput(
            f"invalid duration {text!r}: use a number with a unit, like 90s, 30m, 2h or 1h30m"
        )
    seconds = sum(
        int(value) * _UNIT_SECONDS[unit]
        for value, unit in zip(match.groups(), "dhms", strict=True)
        if value
    )
    if seconds <= 0:
        raise InvalidInput(f"invalid duration {text!r}: must be longer than zero")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise InvalidInput(f"invalid duration {text!r}: too long") from None


def format_duration(delta: timedelta) -> str:
    """5400 s -> `1h30m`; the inverse of `parse_duration` for whole seconds."""
    total = int(delta.total_seconds())
    if total <= 0:
        return "0s"
    parts = []
    for unit, size in _UNIT_SECONDS.items():
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def parse_when(text: str, now: datetime) -> datetime:
    """`--since` values: a duration meaning "that long ago", or an ISO 8601 time (UTC if naive)."""
    try:
        ago = parse_duration(text)
    except InvalidInput:
        pass
    else:
        try:
            return now - ago
        except OverflowError:
            raise InvalidInput(f"invalid time {text!r}: too far in the past") from None
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"invalid time {text!r}: use a duration ago (2h, 7d) or ISO 8601 (2026-11-28T09:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def format_time(when: datetime) -> str:
    """UTC, second precision, `Z` suffix: 2026-11-28T09:44:00Z."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
