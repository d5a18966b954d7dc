"""A pyte terminal fed with a recording's frames: faster parsing, snapshots and restore.

pyte parses and draws one character at a time in Python (0.4-0.6 MB/s on the build
machine). Two fast paths make common output several times faster and leave the screen
exactly as stock pyte would (held by differential tests against pyte itself):

- `FastScreen.draw` writes runs of one-cell characters a row slice at a time, with one shared
  `Char` per (character, attributes) instead of a namedtuple `_replace` per cell;
- `FastStream.feed` dispatches complete `CSI [?] params final` sequences and C0 controls
  itself while pyte's parser is in its ground state, instead of sending every character
  of `ESC[1;32m` through pyte's parser coroutine.

Anything else (OSC, charsets, malformed or unusual sequences, wide and combining
characters) goes through pyte's own code, so pyte's quirks are kept, not fixed: a replay
must show what pyte shows.

Three bounds pyte lacks keep a hostile stream from growing the state (and so every
keyframe) without limit: at most 16 saved cursors (a real terminal keeps one), titles cut
at 1024 characters, at most 16 code points of combining marks in one cell.

`Terminal.snapshot()` and `Terminal.restore()` (through `snapshot`) save and rebuild the
emulator's state. A snapshot is only exact between escape sequences and at a UTF-8
boundary (`at_boundary()`), because pyte's parser is a coroutine whose state can't be
saved.
"""

from __future__ import annotations

import codecs
import functools
import re
import unicodedata
from collections.abc import Callable
from typing import Any

import pyte
from pyte import modes as mo
from pyte.screens import Char, wcwidth

from bastion.recording import format as fmt
from bastion.recording.replay import header_pty, header_size, parse_resize
from bastion.recording.snapshot import restore_screen, snapshot_screen

_NARROW_LIMIT = 0x3000
# Params are capped at 9 digits: longer ones take pyte's own path (int() limits, 9999 cap).
_CSI = re.compile(r"\x1b\[(\?)?((?:[0-9]{0,9};)*[0-9]{0,9})([\x40-\x7e])")
_SHIFTS = frozenset({"\x0e", "\x0f"})
_IGNORED = frozenset({"\x00", "\x7f"})
_new_tuple = tuple.__new__
_CELL_CACHE_LIMIT = 256
MAX_SAVEPOINTS = 16
MAX_TITLE = 1024
MAX_CELL = 16  # code points in one cell (a character and its combining marks)
_BLANK = Char(data=" ", fg="default", bg="default", reverse=False)
_BLANK_REVERSE = Char(data=" ", fg="default", bg="default", reverse=True)


@functools.cache
def _narrow_run() -> re.Pattern[str]:
    """Runs of characters pyte draws one cell wide (by pyte's own `wcwidth`), below U+3000.

    Those are drawn the same way (cell = attributes with that character); everything else
    (wide, combining, unprintable) takes pyte's path character by character.
    """
    ranges: list[str] = []
    start = None
    for point in range(0x20, _NARROW_LIMIT + 1):
        narrow = point < _NARROW_LIMIT and wcwidth(chr(point)) == 1
        if narrow and start is None:
            start = point
        elif not narrow and start is not None:
            ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(point - 1))}")
            start = None
    return re.compile(f"[{''.join(ranges)}]+")


class _Cells(dict[str, Char]):
    """Char by character for one set of attributes, built on first use."""

    __slots__ = ("rest",)

    def __init__(self, attrs: Char) -> None:
        super().__init__()
        self.rest = tuple(attrs[1:])

    def __missing__(self, char: str) -> Char:
        cell: Char = _new_tuple(Char, (char, *self.rest))
        self[char] = cell
        return cell


class FastScreen(pyte.Screen):
    """A pyte Screen whose `draw` has a fast path for runs of narrow text; same results."""

    _cells: dict[Char, _Cells]

    @property
    def default_char(self) -> Char:
        # The same value as pyte's, without building a new namedtuple on every SGR reset.
        return _BLANK_REVERSE if mo.DECSCNM in self.mode else _BLANK

    # Bounds pyte doesn't have, so a hostile stream can't grow the state (and every
    # keyframe) without limit: a real terminal keeps one saved cursor, not a stack.
    def save_cursor(self) -> None:
        super().save_cursor()
        del self.savepoints[:-MAX_SAVEPOINTS]

    def set_title(self, param: str) -> None:
        super().set_title(param[:MAX_TITLE])

    def set_icon_name(self, param: str) -> None:
        super().set_icon_name(param[:MAX_TITLE])

    def _cells_for(self, attrs: Char) -> _Cells:
        try:
            cache = self._cells
        except AttributeError:
            cache = self._cells = {}
        cells = cache.get(attrs)
        if cells is None:
            if len(cache) >= _CELL_CACHE_LIMIT:
                cache.clear()
            cells = cache[attrs] = _Cells(attrs)
        return cells

    def draw(self, data: str) -> None:
        data = data.translate(self.g1_charset if self.charset else self.g0_charset)
        cursor = self.cursor
        columns = self.columns
        mode = self.mode
        insert = mo.IRM in mode
        match_run = _narrow_run().match
        pos, size = 0, len(data)
        while pos < size:
            run = None if insert else match_run(data, pos)
            if run is not None:
                stop = run.end()
                get = self._cells_for(cursor.attrs).__getitem__
                while pos < stop:
                    if cursor.x == columns:
                        if mo.DECAWM in mode:
                            self.dirty.add(cursor.y)
                            self.carriage_return()
                            self.linefeed()
                            cursor = self.cursor
                        else:
                            # pyte steps back and overwrites the last column for each char.
                            self.buffer[cursor.y][columns - 1] = get(data[stop - 1])
                            pos = stop
                            break
                    x = cursor.x
                    if x > columns:
                        # Left beyond the edge by a resize: pyte writes there once, then
                        # clamps the cursor to the edge.
                        self.buffer[cursor.y][x] = get(data[pos])
                        cursor.x = columns
                        pos += 1
                        continue
                    take = min(stop - pos, columns - x)
                    self.buffer[cursor.y].update(
                        zip(range(x, x + take), map(get, data[pos : pos + take]), strict=True)
                    )
                    cursor.x = x + take
                    pos += take
                continue
            # One character exactly as pyte.Screen.draw handles it (including its `break`
            # on an unprintable character, which drops the rest of `data`).
            char = data[pos]
            pos += 1
            width = wcwidth(char)
            if cursor.x == columns:
                if mo.DECAWM in mode:
                    self.dirty.add(cursor.y)
                    self.carriage_return()
                    self.linefeed()
                    cursor = self.cursor
                elif width > 0:
                    cursor.x -= width
            if mo.IRM in mode and width > 0:
                self.insert_characters(width)
            line = self.buffer[cursor.y]
            if width == 1:
                line[cursor.x] = self._cells_for(cursor.attrs)[char]
            elif width == 2:
                cells = self._cells_for(cursor.attrs)
                line[cursor.x] = cells[char]
                if cursor.x + 1 < columns:
                    line[cursor.x + 1] = cells[""]
            elif width == 0 and unicodedata.combining(char):
                if cursor.x:
                    last = line[cursor.x - 1]
                    if len(last.data) < MAX_CELL:
                        normalized = unicodedata.normalize("NFC", last.data + char)
                        line[cursor.x - 1] = last._replace(data=normalized)
                elif cursor.y:
                    last = self.buffer[cursor.y - 1][columns - 1]
                    if len(last.data) < MAX_CELL:
                        normalized = unicodedata.normalize("NFC", last.data + char)
                        self.buffer[cursor.y - 1][columns - 1] = last._replace(data=normalized)
            else:
                break
            if width > 0:
                cursor.x = min(cursor.x + width, columns)
        self.dirty.add(self.cursor.y)


class FastStream(pyte.Stream):
    """pyte's Stream taking bytes like pyte.ByteStream, one UTF-8 decoder per output stream.

    stdout and stderr get separate incremental decoders, so a multibyte sequence split
    across frames of one stream is not garbled by a frame of the other in between.
    """

    def __init__(self, screen: pyte.Screen) -> None:
        self._decoders = [codecs.getincrementaldecoder("utf-8")("replace") for _ in range(2)]
        super().__init__(screen)

    def attach(self, screen: pyte.Screen) -> None:
        super().attach(screen)
        debug = screen.debug
        self._csi_dispatch: dict[str, Callable[..., None]] = {
            final: getattr(screen, name) for final, name in self.csi.items()
        }
        self._debug: Callable[..., None] = debug
        self._basic_dispatch: dict[str, Callable[[], None]] = {
            char: getattr(screen, name) for char, name in self.basic.items()
        }

    def feed_bytes(self, data: bytes, stderr: bool = False) -> None:
        self.feed(self._decoders[stderr].decode(data) if self.use_utf8 else data.decode("latin-1"))

    def select_other_charset(self, code: str) -> None:
        # As pyte.ByteStream: ESC % @ switches to Latin-1, ESC % G / ESC % 8 back to UTF-8.
        if code == "@":
            self.use_utf8 = False
            for decoder in self._decoders:
                decoder.reset()
        elif code in "G8":
            self.use_utf8 = True

    def at_boundary(self) -> bool:
        """Between escape sequences and with no partial UTF-8 sequence held back."""
        return self._taking_plain_text is True and not any(
            decoder.getstate()[0] for decoder in self._decoders
        )

    def feed(self, data: str) -> None:
        send = self._send_to_parser
        if self.listener is None:
            raise RuntimeError("Listener is not set")
        draw = self.listener.draw
        match_text = self._text_pattern.match
        match_csi = _CSI.match
        basic = self._basic_dispatch
        carriage_return = basic["\r"]
        linefeed = basic["\n"]
        taking_plain_text = self._taking_plain_text
        length = len(data)
        offset = 0
        while offset < length:
            if not taking_plain_text:
                taking_plain_text = send(data[offset : offset + 1])
                offset += 1
                continue
            match = match_text(data, offset)
            if match:
                start, offset = match.span()
                draw(data[start:offset])
                continue
            char = data[offset]
            try:
                if char == "\x1b":
                    csi = match_csi(data, offset)
                    if csi is None:
                        taking_plain_text = False
                        continue
                    private, params, final = csi.groups()
                    args = [min(int(p or 0), 9999) for p in params.split(";")]
                    handler = self._csi_dispatch.get(final, self._debug)
                    if private:
                        handler(*args, private=True)
                    else:
                        handler(*args)
                    offset = csi.end()
                elif char == "\r" and data.startswith("\n", offset + 1):
                    offset += 2
                    carriage_return()
                    linefeed()
                elif char in basic:
                    offset += 1
                    if not (char in _SHIFTS and self.use_utf8):
                        basic[char]()
                elif char in _IGNORED:
                    offset += 1
                else:
                    taking_plain_text = False
            except Exception:
                # pyte resets its parser when a handler raises, then lets the error out.
                self._initialize_parser()
                raise
        self._taking_plain_text = taking_plain_text


class Terminal:
    """A screen and its stream, fed frame by frame as a recording is replayed."""

    def __init__(self, screen: pyte.Screen, *, newline_mode: bool = False) -> None:
        self.screen = screen
        self.stream = FastStream(screen)
        if newline_mode:
            # Output that never went through a pty has bare LF line ends: render them as a
            # terminal in LNM (linefeed implies carriage return) would.
            screen.set_mode(mo.LNM)
        self.errors = 0  # pyte exceptions swallowed (malformed input pyte can't take)

    @classmethod
    def for_header(
        cls, header: dict[str, Any], screen_cls: type[pyte.Screen] = FastScreen
    ) -> Terminal:
        columns, rows = header_size(header)
        return cls(screen_cls(columns, rows), newline_mode=not header_pty(header))

    def feed(self, kind: bytes, payload: bytes) -> None:
        """Apply one frame: `o`/`e` output is rendered, `r` resizes, the rest is ignored."""
        if kind == fmt.OUTPUT or kind == fmt.STDERR:
            try:
                self.stream.feed_bytes(payload, stderr=kind == fmt.STDERR)
            except Exception:
                self.errors += 1
        elif kind == fmt.RESIZE:
            size = parse_resize(payload)
            if size is not None:
                self.resize(*size)

    def resize(self, columns: int, rows: int) -> None:
        try:
            self.screen.resize(lines=rows, columns=columns)
        except Exception:
            self.errors += 1

    def at_boundary(self) -> bool:
        return bool(self.stream.at_boundary())

    def display(self) -> list[str]:
        return display(self.screen)

    def snapshot(self) -> dict[str, Any]:
        return snapshot_screen(self.screen) | {"use_utf8": self.stream.use_utf8}

    @classmethod
    def restore(
        cls, snapshot: dict[str, Any], screen_cls: type[pyte.Screen] = FastScreen
    ) -> Terminal:
        terminal = cls(restore_screen(snapshot, screen_cls))
        terminal.stream.use_utf8 = bool(snapshot["use_utf8"])
        return terminal


def display(screen: pyte.Screen) -> list[str]:
    """The screen's rows as text, like `pyte.Screen.display` but never raising.

    pyte's own `display` fails on the stub cell a wide character leaves behind once the
    wide character itself is overwritten; such a cell shows as nothing here.
    """
    lines = []
    columns = screen.columns
    for y in range(screen.lines):
        line = screen.buffer.get(y)
        if not line:
            lines.append(" " * columns)
            continue
        out = []
        skip = False
        for x in range(columns):
            if skip:
                skip = False
                continue
            data = line[x].data
            out.append(data)
            skip = bool(data) and data[0] >= "\u1100" and wcwidth(data[0]) == 2
        lines.append("".join(out))
    return lines
