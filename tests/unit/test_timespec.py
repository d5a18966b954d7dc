"""Durations (`90s`, `30m`, `1h30m`) and `--since` times: parsing, printing, bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import InvalidInput
from bastion.timespec import format_duration, format_time, parse_duration, parse_when

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d", timedelta(days=1)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("  30m ", timedelta(minutes=30)),
        ("30M", timedelta(minutes=30)),
        ("0h5m", timedelta(minutes=5)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "use a number with a unit"),
        ("   ", "use a number with a unit"),
        ("30", "use a number with a unit"),
        ("5x", "use a number with a unit"),
        ("m", "use a number with a unit"),
        ("1m30h", "use a number with a unit"),  # units must go largest first
        ("30m30m", "use a number with a unit"),
        ("-5m", "use a number with a unit"),
        ("1.5h", "use a number with a unit"),
        ("1h 30m", "use a number with a unit"),
        ("0m", "must be longer than zero"),
        ("0h0s", "must be longer than zero"),
        ("99999999999d", "too long"),
    ],
)
def test_parse_duration_rejects(text: str, why: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_duration(text)
    message = str(caught.value)
    assert message.startswith(f"invalid duration {text!r}: ")
    assert why in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=90), "1m30s"),
        (timedelta(minutes=30), "30m"),
        (timedelta(hours=8), "8h"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(days=2, seconds=1), "2d1s"),
        (timedelta(seconds=59.9), "59s"),  # whole seconds
        (timedelta(0), "0s"),
        (timedelta(seconds=-5), "0s"),
    ],
)
def test_format_duration(delta: timedelta, text: str) -> None:
    assert format_duration(delta) == text


@given(st.integers(min_value=1, max_value=10**9))
def test_format_then_parse_round_trips(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


@given(
    st.tuples(
        st.integers(0, 400), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59)
    ).filter(any)
)
def test_canonical_text_round_trips(parts: tuple[int, int, int, int]) -> None:
    # Text with each unit in range and zero units left out is what format_duration prints.
    text = "".join(f"{n}{unit}" for n, unit in zip(parts, "dhms", strict=True) if n)
    days, hours, minutes, seconds = parts
    assert parse_duration(text) == timedelta(
        days=days, hours=hours, minutes=minutes, seconds=seconds
    )
    assert format_duration(parse_duration(text)) == text


def test_parse_when_duration_means_ago() -> None:
    assert parse_when("2h", NOW) == NOW - timedelta(hours=2)
    assert parse_when("7d", NOW) == NOW - timedelta(days=7)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T09:00Z", datetime(2026, 11, 28, 9, 0, tzinfo=UTC)),
        ("2026-11-28T09:00:00+00:00", datetime(2026, 11, 28, 9, 0, tzinfo=UTC)),
        ("2026-11-28T10:00:00+01:00", datetime(2026, 11, 28, 9, 0, tzinfo=UTC)),
        ("2026-11-28T09:00:00", datetime(2026, 11, 28, 9, 0, tzinfo=UTC)),  # naive is UTC
        ("2026-11-28", datetime(2026, 11, 28, tzinfo=UTC)),
    ],
)
def test_parse_when_iso(text: str, expected: datetime) -> None:
    parsed = parse_when(text, NOW)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["yesterday", "", "5x", "2026-13-01", "999999999d"])
def test_parse_when_rejects(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"^invalid time "):
        parse_when(text, NOW)


def test_format_time_is_utc_with_z() -> None:
    cet = timezone(timedelta(hours=1))
    assert format_time(datetime(2026, 11, 28, 10, 44, 0, 999, tzinfo=cet)) == (
        "2026-11-28T09:44:00Z"
    )
