"""Synthetic recordings for the replay tests and benchmarks, written by the real Recorder.

`write_recording` turns a script of (seconds, kind, payload) events into a recording file
through `bastion.recording.writer.Recorder` and a `FixedClock`, so tests read exactly the
format the gateway writes. `shell_session` makes a long PTY-like session (prompts, typed
commands echoed, coloured and UTF-8 output, a full-screen redraw now and then, resizes).
"""

from __future__ import annotations

import codecs
import contextlib
import random
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyte

from bastion.clock import FixedClock
from bastion.recording import format as fmt
from bastion.recording.replay import Recording, parse_resize
from bastion.recording.terminal import MAX_SAVEPOINTS, MAX_TITLE
from bastion.recording.writer import Recorder

START = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
Event = tuple[float, bytes, bytes]


def header(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "session": "s-0001",
        "agent": "agent-7",
        "grant": "g-42",
        "task": "TICKET-9",
        "target": "prod-web",
        "client": "127.0.0.1:50000",
        "kind": "shell",
        "command": None,
        "term_type": "xterm-256color",
        "term_size": [80, 24],
        "pty": True,
        "started_at": START.isoformat(),
    }
    return value | overrides


def end(exit_status: int | None = 0, reason: str = "closed") -> dict[str, Any]:
    return {"ended_at": START.isoformat(), "end_reason": reason, "exit_status": exit_status}


def write_recording(
    path: Path,
    events: Iterable[Event],
    head: dict[str, Any] | None = None,
    tail: dict[str, Any] | None = None,
    close: bool = True,
) -> Path:
    """Record `events` at their times; `close=False` leaves it as a crash would."""
    clock = FixedClock(START)
    recorder = Recorder(path, clock, head if head is not None else header())
    now = 0.0
    for at, kind, payload in events:
        if at > now:
            clock.advance(timedelta(seconds=at - now))
            now = at
        if kind in (fmt.OUTPUT, fmt.STDERR):
            recorder.output(payload, stderr=kind == fmt.STDERR)
        elif kind == fmt.INPUT:
            recorder.input(payload)
        elif kind == fmt.RESIZE:
            cols, rows = payload.split(b"x")
            recorder.resize(int(cols), int(rows))
        elif kind == fmt.MARKER:
            recorder.marker(payload.decode())
        else:
            raise ValueError(f"can't script a {kind!r} frame")
    if close:
        recorder.close(tail if tail is not None else end())
    else:
        recorder.abandon()
    return path


_WORDS = [
    "total", "drwxr-xr-x", "root", "config.yaml", "héllo", "naïve", "日本語", "données",
    "\x1b[32mOK\x1b[0m", "\x1b[1;34mbin\x1b[0m", "\x1b[31merror:\x1b[0m", "12345", "Nov", "→",
]  # fmt: skip
_COMMANDS = ["ls -la", "cat /etc/hosts", "journalctl -n 50", "ps aux", "df -h", "git log"]


def shell_session(target_bytes: int, seed: int = 0, cols: int = 80) -> Iterator[Event]:
    """A PTY session of about `target_bytes` of output, in frames of up to ~16 KiB."""
    rnd = random.Random(seed)
    now = 0.0
    produced = 0
    prompt = b"\x1b]0;root@prod-web: ~\x07\x1b[01;32mroot@prod-web\x1b[00m:~# "
    while produced < target_bytes:
        now += 0.5
        yield now, fmt.OUTPUT, prompt
        command = rnd.choice(_COMMANDS).encode()
        for byte in command:
            now += 0.05
            yield now, fmt.INPUT, bytes([byte])
            yield now + 0.001, fmt.OUTPUT, bytes([byte])
        now += 0.1
        yield now, fmt.INPUT, b"\r"
        yield now + 0.001, fmt.OUTPUT, b"\r\n"
        roll = rnd.random()
        if roll < 0.05:
            # A full-screen program: clear, draw with cursor addressing, leave.
            screen = [b"\x1b[?1049h\x1b[H\x1b[2J"]
            for row in range(1, 24):
                screen.append(b"\x1b[%d;1H\x1b[7m%3d\x1b[0m " % (row, row))
                screen.append(" ".join(rnd.choice(_WORDS) for _ in range(6)).encode())
            screen.append(b"\x1b[?1049l")
            data = b"".join(screen)
        elif roll < 0.07:
            cols = rnd.choice([80, 100, 132])
            now += 0.2
            yield now, fmt.RESIZE, b"%dx24" % cols
            data = b""
        else:
            lines = rnd.randint(1, 400)
            data = b"".join(
                " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(1, 10))).encode() + b"\r\n"
                for _ in range(lines)
            )
        for start in range(0, len(data), 16384):
            now += 0.01
            chunk = data[start : start + 16384]
            yield now, fmt.OUTPUT, chunk
            produced += len(chunk)


class BoundedScreen(pyte.Screen):
    """Stock pyte with the renderer's bounds on saved cursors and titles (terminal.py).

    The third bound (16 code points in one cell) needs more combining marks on one
    character than these tests write.
    """

    def save_cursor(self) -> None:
        super().save_cursor()
        del self.savepoints[:-MAX_SAVEPOINTS]

    def set_title(self, param: str) -> None:
        super().set_title(param[:MAX_TITLE])

    def set_icon_name(self, param: str) -> None:
        super().set_icon_name(param[:MAX_TITLE])


class _ReferenceStream(pyte.Stream):
    """Stock pyte's text Stream with pyte.ByteStream's charset switch, for the reference."""

    def __init__(self, screen: pyte.Screen, decoders: list[codecs.IncrementalDecoder]) -> None:
        self.decoders = decoders
        super().__init__(screen)

    def select_other_charset(self, code: str) -> None:
        if code == "@":
            self.use_utf8 = False
            for decoder in self.decoders:
                decoder.reset()
        elif code in "G8":
            self.use_utf8 = True


def reference_screen(path: Path, at: float | str = "end") -> pyte.Screen:
    """The screen at `at` by a full replay from the start into a stock pyte screen.

    Same rules as the renderer: frames with time <= at; stdout and stderr each with their
    own UTF-8 decoder; resizes bounded as the reader bounds them; LNM for a session
    without a PTY; an exception from pyte drops the rest of that frame.
    """
    with Recording.open(path) as recording:
        columns, rows = recording.term_size
        screen = BoundedScreen(columns, rows)
        decoders = [codecs.getincrementaldecoder("utf-8")("replace") for _ in range(2)]
        stream = _ReferenceStream(screen, decoders)
        if not recording.pty:
            screen.set_mode(pyte.modes.LNM)
        for frame in recording.frames():
            if at != "end" and frame.time > float(at):
                break
            if frame.kind in (fmt.OUTPUT, fmt.STDERR):
                decoder = decoders[frame.kind == fmt.STDERR]
                text = (
                    decoder.decode(frame.payload)
                    if stream.use_utf8
                    else frame.payload.decode("latin-1")
                )
                with contextlib.suppress(Exception):
                    stream.feed(text)
            elif frame.kind == fmt.RESIZE:
                size = parse_resize(frame.payload)
                if size is not None:
                    screen.resize(lines=size[1], columns=size[0])
    return screen
