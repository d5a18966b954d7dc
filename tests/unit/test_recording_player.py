"""The player's timing and keys, in fake time: speed, idle limit, pause, step, quit, seek."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.recording import format as fmt
from bastion.recording.player import play, screen_ansi
from bastion.recording.render import render_at
from tests.unit.recording_synth import Event, write_recording

EVENTS: list[Event] = [
    (1.0, fmt.OUTPUT, b"one "),
    (2.0, fmt.INPUT, b"typed"),  # not played
    (2.0, fmt.STDERR, b"two "),
    (5.0, fmt.OUTPUT, b"three "),
    (5.5, fmt.RESIZE, b"100x30"),
    (6.0, fmt.OUTPUT, b"four"),
]


class FakeTime:
    """A clock that moves only when the player sleeps; may send keys at given times."""

    def __init__(self, keys_fd: int | None = None, script: dict[float, bytes] | None = None):
        self.now = 100.0
        self.slept: list[float] = []
        self._keys_fd = keys_fd
        self._script = dict(script or {})

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.slept.append(seconds)
        self.now += seconds
        for at in sorted(self._script):
            if self.now - 100.0 >= at and self._keys_fd is not None:
                os.write(self._keys_fd, self._script.pop(at))


class TimedOutput(io.BytesIO):
    def __init__(self, time: FakeTime) -> None:
        super().__init__()
        self.time = time
        self.writes: list[tuple[float, bytes]] = []

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes.append((round(self.time.now - 100.0, 6), bytes(data)))
        return super().write(data)


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    return write_recording(tmp_path / "s.rec", EVENTS)


@pytest.fixture
def keys() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    yield read, write
    os.close(read)
    os.close(write)


def test_plays_output_at_recorded_times(recording: Path) -> None:
    time = FakeTime()
    out = TimedOutput(time)
    result = play(recording, out, sleep=time.sleep, clock=time.clock)
    assert out.writes == [(1.0, b"one "), (2.0, b"two "), (5.0, b"three "), (6.0, b"four")]
    assert result.frames == 4 and not result.quit


def test_speed_and_idle_limit(recording: Path) -> None:
    time = FakeTime()
    out = TimedOutput(time)
    play(recording, out, speed=2.0, idle_limit=1.0, sleep=time.sleep, clock=time.clock)
    # gaps 1, 1, 3 -> 1 (idle limit), 1; halved by speed 2
    assert [at for at, _data in out.writes] == [0.5, 1.0, 1.5, 2.0]


def test_q_quits(recording: Path, keys: tuple[int, int]) -> None:
    read, write = keys
    time = FakeTime(write, {3.0: b"q"})
    out = TimedOutput(time)
    result = play(recording, out, keys=read, sleep=time.sleep, clock=time.clock)
    assert result.quit
    assert [data for _at, data in out.writes] == [b"one ", b"two "]
    assert all(step <= 0.05 + 1e-9 for step in time.slept)  # keys are polled while waiting


def test_space_pauses_and_dot_steps(recording: Path, keys: tuple[int, int]) -> None:
    read, write = keys
    os.write(write, b" ")  # paused from the start
    time = FakeTime(write, {10.0: b".", 20.0: b".", 30.0: b"q"})
    out = TimedOutput(time)
    result = play(recording, out, keys=read, sleep=time.sleep, clock=time.clock)
    assert result.quit
    assert [(round(at), data) for at, data in out.writes] == [(10, b"one "), (20, b"two ")]


def test_space_resumes_from_where_it_stopped(recording: Path, keys: tuple[int, int]) -> None:
    read, write = keys
    time = FakeTime(write, {1.5: b" ", 11.5: b" "})  # pause for 10 s after the first frame
    out = TimedOutput(time)
    play(recording, out, keys=read, sleep=time.sleep, clock=time.clock)
    assert [round(at, 1) for at, _data in out.writes] == [1.0, 12.0, 15.0, 16.0]


def test_start_at_draws_the_screen_then_plays_on(recording: Path) -> None:
    time = FakeTime()
    out = TimedOutput(time)
    play(recording, out, start_at=3.0, sleep=time.sleep, clock=time.clock)
    first_at, first = out.writes[0]
    assert first_at == 0.0
    assert first.startswith(b"\x1b[0m\x1b[H\x1b[2J") and b"one two" in first
    assert out.writes[1:] == [(2.0, b"three "), (3.0, b"four")]


def test_screen_ansi_reproduces_colours_and_cursor(tmp_path: Path) -> None:
    path = write_recording(
        tmp_path / "s.rec", [(0.0, fmt.OUTPUT, b"\x1b[1;31mred\x1b[0m plain\r\n\x1b[38;5;21mX")]
    )
    terminal, _offset = render_at(path, "end")
    drawn = screen_ansi(terminal.screen).decode()
    assert "\x1b[0;1;31mred" in drawn
    assert "\x1b[0;38;2;0;0;255mX" in drawn
    assert drawn.endswith("\x1b[2;2H\x1b[?25h")


def test_bad_speed_is_refused(recording: Path) -> None:
    with pytest.raises(ValueError):
        play(recording, io.BytesIO(), speed=0)
