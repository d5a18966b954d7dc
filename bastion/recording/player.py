"""Playing a recording in a terminal at its recorded timing: `recordings play`.

Output frames (stdout and stderr) are written as they were received, at their recorded
times divided by `speed`, with idle gaps capped at `idle_limit`. With a key input (the
CLI passes stdin when it is a tty, switched to cbreak mode for the duration): space
pauses and resumes, `.` writes the next frame while paused, `q` quits. Without one,
nothing is read. Seeking (`start_at`) restores the screen at that moment from the keyframe
index, draws it with escape sequences, and plays on from the next frame.

The loop takes its clock and sleep as arguments, so tests run it in fake time.
"""

from __future__ import annotations

import contextlib
import os
import select
import termios
import time as timer
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

import pyte
from pyte import graphics
from pyte.screens import Char

from bastion.recording import format as fmt
from bastion.recording.render import render_at
from bastion.recording.replay import Recording

POLL = 0.05  # seconds between looks at the keyboard while waiting

_FG = {name: code for code, name in (graphics.FG_ANSI | graphics.FG_AIXTERM).items()}
_BG = {name: code for code, name in (graphics.BG_ANSI | graphics.BG_AIXTERM).items()}
_FLAGS = (("bold", 1), ("italics", 3), ("underscore", 4), ("blink", 5), ("reverse", 7))


@dataclass(frozen=True)
class PlayResult:
    frames: int  # output frames written
    quit: bool  # stopped by `q`
    position: float  # recording time of the last frame written


def play(
    path: str | os.PathLike[str],
    out: IO[bytes],
    speed: float = 1.0,
    idle_limit: float | None = None,
    start_at: float = 0.0,
    keys: int | None = None,
    *,
    sleep: Callable[[float], None] = timer.sleep,
    clock: Callable[[], float] = timer.monotonic,
) -> PlayResult:
    """Play `path` to `out`; `keys` is a file descriptor to read keys from, or None."""
    if speed <= 0:
        raise ValueError("speed must be positive")
    offset: int | None = None
    if start_at > 0:
        terminal, offset = render_at(path, start_at)
        out.write(screen_ansi(terminal.screen))
        out.flush()
    with _key_mode(keys), Recording.open(path) as recording:
        frames = (
            (time, recording.payload(body, end))
            for kind, time, body, end in recording.raw_frames(offset)
            if kind == fmt.OUTPUT or kind == fmt.STDERR
        )
        return _loop(frames, out, speed, idle_limit, start_at, keys, sleep, clock)


def _loop(
    frames: Iterator[tuple[float, bytes]],
    out: IO[bytes],
    speed: float,
    idle_limit: float | None,
    start_at: float,
    keys: int | None,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> PlayResult:
    written = 0
    previous = start_at  # recording time of the previous frame
    position = 0.0  # playback time (idle gaps capped) of the previous frame
    anchor = clock()  # wall time at playback time 0
    held: float | None = None  # playback time where it stands while paused
    for time, payload in frames:
        gap = max(0.0, time - previous)
        if idle_limit is not None:
            gap = min(gap, idle_limit)
        due_position = position + gap
        step = False
        while True:
            for key in _read_keys(keys):
                if key == "q":
                    return PlayResult(written, True, previous)
                if key == " " and held is None:
                    held = min(max(position, (clock() - anchor) * speed), due_position)
                elif key == " " and held is not None:
                    anchor = clock() - held / speed  # resume from where it stood
                    held = None
                elif key == "." and held is not None:
                    step = True
            if step:
                break
            if held is not None:
                sleep(POLL)
                continue
            remaining = anchor + due_position / speed - clock()
            if remaining <= 0:
                break
            sleep(min(remaining, POLL) if keys is not None else remaining)
        out.write(payload)
        out.flush()
        written += 1
        previous = time
        position = due_position
        if step:
            held = position
    return PlayResult(written, False, previous)


def _read_keys(fd: int | None) -> list[str]:
    if fd is None:
        return []
    ready, _, _ = select.select([fd], [], [], 0)
    if not ready:
        return []
    data = os.read(fd, 64)
    return list(data.decode("latin-1"))


@contextlib.contextmanager
def _key_mode(fd: int | None) -> Iterator[None]:
    """cbreak mode on a tty for the duration (keys arrive unbuffered, ^C still works)."""
    if fd is None or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _sgr(char: Char) -> str:
    codes: list[str] = ["0"]
    for name, code in _FLAGS:
        if getattr(char, name):
            codes.append(str(code))
    if char.strikethrough:
        codes.append("9")
    for value, table, extended in ((char.fg, _FG, "38"), (char.bg, _BG, "48")):
        if value == "default":
            continue
        if value in table:
            codes.append(str(table[value]))
        elif len(value) == 6:
            with contextlib.suppress(ValueError):
                red, green, blue = (int(value[i : i + 2], 16) for i in (0, 2, 4))
                codes.append(f"{extended};2;{red};{green};{blue}")
    return f"\x1b[{';'.join(codes)}m"


def screen_ansi(screen: pyte.Screen) -> bytes:
    """Escape sequences that draw `screen` (text, colours, cursor) on a real terminal."""
    parts = ["\x1b[0m\x1b[H\x1b[2J"]
    for y in range(screen.lines):
        line = screen.buffer.get(y)
        if not line:
            continue
        parts.append(f"\x1b[{y + 1};1H")
        current = None
        skip = False
        for x in range(screen.columns):
            if skip:
                skip = False
                continue
            char = line[x]
            style = char._replace(data="")
            if style != current:
                parts.append(_sgr(char))
                current = style
            parts.append(char.data or " ")
            skip = char.data != "" and pyte.screens.wcwidth(char.data[0]) == 2
    if screen.margins is not None:
        parts.append(f"\x1b[{screen.margins.top + 1};{screen.margins.bottom + 1}r")
    cursor = screen.cursor
    parts.append(_sgr(cursor.attrs))
    parts.append(f"\x1b[{cursor.y + 1};{min(cursor.x, screen.columns - 1) + 1}H")
    parts.append("\x1b[?25l" if cursor.hidden else "\x1b[?25h")
    return "".join(parts).encode("utf-8", "replace")
