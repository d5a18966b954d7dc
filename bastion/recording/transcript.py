"""Transcripts: the text a session showed and typed, as timestamped lines. No file I/O.

A PTY session's output is rendered (pyte, through `terminal`), and a screen row's text
becomes a transcript line when it stops being shown: scrolled off the top, pushed out or
erased by a line or display operation, overwritten by text that is not its continuation,
or still on the screen at the end. The line's time is when the row last changed, so
`$ rm -rf /tmp/x` is stamped when its last character appeared. Rows are compared at frame
ends: text drawn and overwritten within one frame (never on screen between two writes of
the relay) is not seen, and a progress bar redrawn in place gives one line per frame.

Typed input (`i` frames of a PTY session) is replayed through a small line editor
(backspace, ^U, ^W; escape sequences such as arrow keys dropped) and gives one line per
Enter. Lines are released in time order (`LineOrder`), so typed lines interleave with
the output they produced.

A session without a PTY (exec, sftp) has no screen: its stdout, stderr and stdin are
decoded as plain text lines with escape sequences stripped (`PlainLines`).
"""

from __future__ import annotations

import codecs
import heapq
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, NamedTuple

from pyte.screens import Margins

from bastion.recording import format as fmt
from bastion.recording.terminal import FastScreen

OUTPUT = "output"
INPUT = "input"
MAX_LINE = 4096  # longer lines (binary, no newline) are cut into pieces of this size
# Ordering holds lines back until no older one can come, but not longer than this many
# seconds of recording or lines: a row that never changes doesn't hold everything up.
_ORDER_HORIZON = 30.0
_ORDER_WINDOW = 10_000

# Escape sequences and control characters, for plain (non-PTY) text.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC, terminated by BEL or ST
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"  # DCS, SOS, PM, APC
    r"|\x1b[ -/]*[0-~]"  # other ESC sequences (charset selection, keypad, ...)
    r"|\x1b"
    r"|[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f\x80-\x9f]"
)


class TextLine(NamedTuple):
    seconds: float
    kind: str  # OUTPUT or INPUT
    text: str


def _utf8() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")("replace")


def _decoder_state(decoder: codecs.IncrementalDecoder) -> str:
    return decoder.getstate()[0].decode("latin-1")


def _set_decoder_state(decoder: codecs.IncrementalDecoder, pending: str) -> None:
    decoder.setstate((pending.encode("latin-1"), 0))


class TranscriptScreen(FastScreen):
    """A screen that also follows each row's text over time (see the module docstring).

    The replay sets `now` to the frame's time before feeding it, and calls `end_frame()`
    after; retired rows collect in `emitted` as (time, text).
    """

    def __init__(self, columns: int, lines: int) -> None:
        self.now = 0.0
        self.emitted: list[tuple[float, str]] = []
        self._busy = True  # pyte's own __init__ and nested operations are not followed
        self._rows: list[tuple[str, float] | None] = []
        super().__init__(columns, lines)
        self._rows = [None] * self.lines
        self._busy = False

    def row_text(self, y: int) -> str:
        line = self.buffer.get(y)
        if not line:
            return ""
        width = min(max(line) + 1, self.columns)
        return "".join([line[x].data for x in range(width)]).rstrip()

    def _settle(self, y: int, text: str) -> float:
        """Compare row y's text with the last frame end's; emit the old text if it was
        replaced rather than continued. Returns when the current text dates from."""
        state = self._rows[y] if y < len(self._rows) else None
        if state is None:
            return self.now
        old, since = state
        if text == old:
            return since
        if not text.startswith(old):
            self.emitted.append((since, old))
        return self.now

    def end_frame(self) -> None:
        rows = self._rows
        count = len(rows)
        for y in self.dirty:
            if y < count:
                text = self.row_text(y)
                since = self._settle(y, text)
                rows[y] = (text, since) if text else None
        self.dirty.clear()

    def finish(self) -> None:
        """The end of the recording: everything still on the screen is emitted."""
        for y in range(min(self.lines, len(self._rows))):
            text = self.row_text(y)
            since = self._settle(y, text)
            if text:
                self.emitted.append((since, text))
        self._rows = [None] * self.lines

    def watermark(self) -> float:
        """No line emitted from now on can be older than this."""
        return min([self.now] + [state[1] for state in self._rows if state is not None])

    def take_emitted(self) -> list[tuple[float, str]]:
        emitted, self.emitted = self.emitted, []
        return emitted

    def row_states(self) -> list[Any]:
        return [list(state) if state is not None else None for state in self._rows]

    def load_row_states(self, states: list[Any]) -> None:
        rows: list[tuple[str, float] | None] = [
            (str(state[0]), float(state[1])) if state is not None else None for state in states
        ]
        self._rows = (rows + [None] * self.lines)[: self.lines]

    # Scrolling: the common case, kept cheap.
    def index(self) -> None:
        if not self._busy:
            top, bottom = self.margins or Margins(0, self.lines - 1)
            rows = self._rows
            if self.cursor.y == bottom and bottom < len(rows):
                text = self.row_text(top)
                since = self._settle(top, text)
                if text:
                    self.emitted.append((since, text))
                rows[top:bottom] = rows[top + 1 : bottom + 1]
                rows[bottom] = None
        super().index()

    # Everything else that moves or erases whole rows: compare the screen before and after.
    def _restructure(self, operation: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        if self._busy:
            operation(*args, **kwargs)
            return
        before = [self.row_text(y) for y in range(self.lines)]
        since = [self._settle(y, text) for y, text in enumerate(before)]
        self._busy = True
        try:
            operation(*args, **kwargs)
        finally:
            self._busy = False
        after = [self.row_text(y) for y in range(self.lines)]
        remaining = Counter(text for text in after if text)
        kept: dict[str, list[float]] = {}
        for text, when in zip(before, since, strict=True):
            if not text:
                continue
            if remaining[text] > 0:
                remaining[text] -= 1
                kept.setdefault(text, []).append(when)
            else:
                self.emitted.append((when, text))
        rows: list[tuple[str, float] | None] = []
        for text in after:
            times = kept.get(text)
            rows.append((text, times.pop(0) if times else self.now) if text else None)
        self._rows = rows

    def reverse_index(self) -> None:
        top, _bottom = self.margins or Margins(0, self.lines - 1)
        if self.cursor.y == top:
            self._restructure(super().reverse_index)
        else:
            super().reverse_index()

    def insert_lines(self, count: int | None = None) -> None:
        self._restructure(super().insert_lines, count)

    def delete_lines(self, count: int | None = None) -> None:
        self._restructure(super().delete_lines, count)

    def erase_in_display(self, how: int = 0, *args: Any, **kwargs: Any) -> None:
        self._restructure(super().erase_in_display, how, *args, **kwargs)

    def resize(self, lines: int | None = None, columns: int | None = None) -> None:
        self._restructure(super().resize, lines, columns)

    def reset(self) -> None:
        self._restructure(super().reset)

    def alignment_display(self) -> None:
        self._restructure(super().alignment_display)


class InputLines:
    """Keystrokes -> the lines typed, one per Enter, through a minimal line editor."""

    def __init__(self) -> None:
        self._decoder = _utf8()
        self._line: list[str] = []
        self._escape = ""  # an escape sequence in progress (dropped when complete)

    def feed(self, time: float, data: bytes) -> list[tuple[float, str]]:
        done: list[tuple[float, str]] = []
        line = self._line
        for char in self._decoder.decode(data):
            if self._escape:
                self._escape += char
                if _escape_complete(self._escape):
                    self._escape = ""
                continue
            if char == "\x1b":
                self._escape = char
            elif char in "\r\n":
                if line:
                    done.append((time, "".join(line)))
                    line.clear()
            elif char in "\x7f\x08":
                if line:
                    line.pop()
            elif char == "\x15":  # ^U: kill the line
                line.clear()
            elif char == "\x17":  # ^W: kill the word before the cursor
                while line and line[-1] == " ":
                    line.pop()
                while line and line[-1] != " ":
                    line.pop()
            elif char == "\x03" or char == "\x04":  # ^C, ^D: what was typed, then the key
                done.append((time, "".join(line) + ("^C" if char == "\x03" else "^D")))
                line.clear()
            elif char == "\t" or char >= " ":
                line.append(char)
                if len(line) >= MAX_LINE:
                    done.append((time, "".join(line)))
                    line.clear()
        return done

    def state(self) -> list[Any]:
        return ["".join(self._line), self._escape, _decoder_state(self._decoder)]

    def load_state(self, state: list[Any]) -> None:
        self._line = list(state[0])
        self._escape = state[1]
        _set_decoder_state(self._decoder, state[2])


def _escape_complete(sequence: str) -> bool:
    if len(sequence) < 2:
        return False
    if sequence[1] in "[O":  # CSI and SS3 (arrow and function keys)
        return (
            len(sequence) > 2
            and "@" <= sequence[-1] <= "~"
            and not (sequence[1] == "[" and sequence[-1] == "[" and len(sequence) == 3)
        )
    return True  # ESC + one character (Alt-key)


class LineOrder:
    """Releases lines in time order, once no older line can still come.

    Rows are emitted late (when they leave the screen) but stamped with when they last
    changed; the screen's `watermark()` bounds what can still come. Lines are held at
    most `_ORDER_HORIZON` seconds and `_ORDER_WINDOW` lines: past that the oldest goes out
    regardless (and a row left unchanged longer than that comes out of order).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, str]] = []
        self._seq = 0

    def push(self, lines: Iterable[tuple[float, str]], kind: str) -> None:
        for time, text in lines:
            heapq.heappush(self._heap, (time, self._seq, kind, text))
            self._seq += 1

    def release(self, watermark: float) -> list[TextLine]:
        heap = self._heap
        out = []
        while heap and (heap[0][0] < watermark or len(heap) > _ORDER_WINDOW):
            time, _seq, kind, text = heapq.heappop(heap)
            out.append(TextLine(time, kind, text))
        return out

    def drain(self) -> list[TextLine]:
        return self.release(float("inf"))

    def state(self) -> list[Any]:
        return [self._seq, [list(item) for item in sorted(self._heap)]]

    def load_state(self, state: list[Any]) -> None:
        self._seq = int(state[0])
        self._heap = [(float(t), int(s), str(k), str(x)) for t, s, k, x in state[1]]
        heapq.heapify(self._heap)


class PtyTranscript:
    """A PTY session's transcript, built alongside the replay of its screen."""

    def __init__(self, screen: TranscriptScreen) -> None:
        self.screen = screen
        self.input = InputLines()
        self.order = LineOrder()

    def begin(self, time: float) -> None:
        self.screen.now = time

    def end(self, kind: bytes, time: float, payload: bytes) -> list[TextLine]:
        """After the frame was fed to the screen: the lines that are now final."""
        if kind == fmt.INPUT:
            self.order.push(self.input.feed(time, payload), INPUT)
        elif kind in (fmt.OUTPUT, fmt.STDERR, fmt.RESIZE):
            self.screen.end_frame()
        self.order.push(self.screen.take_emitted(), OUTPUT)
        return self.order.release(max(self.screen.watermark(), time - _ORDER_HORIZON))

    def finish(self) -> list[TextLine]:
        self.screen.finish()
        self.order.push(self.screen.take_emitted(), OUTPUT)
        return self.order.drain()

    def state(self) -> dict[str, Any]:
        return {
            "rows": self.screen.row_states(),
            "input": self.input.state(),
            "order": self.order.state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.screen.load_row_states(state["rows"])
        self.input.load_state(state["input"])
        self.order.load_state(state["order"])


class PlainLines:
    """A session without a PTY: stdout, stderr and stdin as plain text lines.

    Each stream has its own decoder and line buffer. Escape sequences and control
    characters are dropped; a carriage return overwrites from the start of the line, as
    a terminal would show it. A line is stamped with the time it was completed.
    """

    _KINDS: ClassVar[dict[bytes, tuple[int, str]]] = {
        fmt.OUTPUT: (0, OUTPUT),
        fmt.STDERR: (1, OUTPUT),
        fmt.INPUT: (2, INPUT),
    }

    def __init__(self) -> None:
        self._decoders = [_utf8() for _ in range(3)]
        self._pending = ["", "", ""]
        self._last = 0.0

    def feed(self, kind: bytes, time: float, payload: bytes) -> list[TextLine]:
        if kind == fmt.QUERY:
            self._last = time
            return query_lines(time, payload)
        found = self._KINDS.get(kind)
        if found is None:
            return []
        index, line_kind = found
        self._last = time
        text = self._pending[index] + self._decoders[index].decode(payload)
        pieces = text.split("\n")
        rest = pieces.pop()
        out = [TextLine(time, line_kind, line) for line in map(clean_line, pieces) if line]
        while len(rest) > MAX_LINE:
            piece, rest = rest[:MAX_LINE], rest[MAX_LINE:]
            if line := clean_line(piece):
                out.append(TextLine(time, line_kind, line))
        self._pending[index] = rest
        return out

    def finish(self) -> list[TextLine]:
        out = []
        for index, kind in ((0, OUTPUT), (1, OUTPUT), (2, INPUT)):
            rest = self._pending[index] + self._decoders[index].decode(b"", final=True)
            self._pending[index] = ""
            if line := clean_line(rest):
                out.append(TextLine(self._last, kind, line))
        return out


def clean_line(text: str) -> str:
    """One line of plain output as a terminal would leave it, without escape codes."""
    if "\x1b" in text or not text.isprintable():
        text = _ESCAPES.sub("", text.replace("\r\n", "\n").rstrip("\r"))
        if "\r" in text:
            shown = ""
            for piece in text.split("\r"):
                shown = piece + shown[len(piece) :]
            text = shown
    return text.rstrip()


def query_lines(time: float, payload: bytes) -> list[TextLine]:
    """One entry of a PostgreSQL session's query log, psql-like: the statement as input,
    then its outcome (command tags, rows, time, verdict, error) as output."""
    try:
        entry = json.loads(payload)
    except ValueError:
        return [TextLine(time, OUTPUT, "-- unreadable query log entry")]
    if not isinstance(entry, dict):
        return []
    if "event" in entry:
        details = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("event", "sql"))
        return [
            TextLine(time, OUTPUT, f"-- {entry['event']}" + (f" ({details})" if details else ""))
        ]
    out = [
        TextLine(time, INPUT, line)
        for line in map(clean_line, str(entry.get("sql", "")).splitlines())
        if line
    ]
    params = entry.get("params")
    if params:
        shown = ", ".join(
            f"${n}=NULL" if v is None else f"${n}='{v}'" for n, v in enumerate(params, 1)
        )
        out.append(TextLine(time, INPUT, f"-- params: {shown}"))
    outcome = ", ".join(entry.get("tags") or []) or "no result"
    summary = f"-- {outcome}; {entry.get('duration_ms', 0)} ms; {entry.get('verdict', 'allowed')}"
    if entry.get("error"):
        summary += f"; ERROR {entry['error']}"
    out.append(TextLine(time, OUTPUT, clean_line(summary)))
    return out
