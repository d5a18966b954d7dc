"""Screen snapshots: a pyte screen's whole state as plain JSON-able data, and back.

pyte screens don't pickle (their buffer is a defaultdict with a lambda), and the keyframe
index needs a compact form that is safe to read from disk anyway: JSON, with each
distinct `Char` stored once and cells as (column, char number) pairs. `restore_screen`
checks the size before allocating anything, so a damaged or forged index can't make it
allocate without bound. Not here: the parser's state, which can't be saved; that is why
snapshots are only taken between escape sequences (`terminal.Terminal.at_boundary`).
"""

from __future__ import annotations

from typing import Any

import pyte
from pyte import charsets as cs
from pyte.screens import Char, Cursor, Margins, Savepoint, StaticDefaultDict

from bastion.recording.replay import MAX_COLUMNS, MAX_ROWS

SNAPSHOT_VERSION = 1
_new_tuple = tuple.__new__


_MAP_NAMES = {id(table): name for name, table in cs.MAPS.items()}


def _charset_out(table: str) -> str | list[str]:
    name = _MAP_NAMES.get(id(table))
    return name if name is not None else [table]


def _charset_in(value: str | list[str]) -> str:
    if isinstance(value, list):
        return str(value[0])
    return str(cs.MAPS[value])


class _CharTable:
    def __init__(self) -> None:
        self.index: dict[Char, int] = {}
        self.chars: list[list[Any]] = []

    def __call__(self, char: Char) -> int:
        found = self.index.get(char)
        if found is None:
            found = self.index[char] = len(self.chars)
            self.chars.append(list(char))
        return found


def snapshot_screen(screen: pyte.Screen) -> dict[str, Any]:
    """Everything that decides what `screen` does next, as JSON-able data."""
    table = _CharTable()
    rows = []
    for y, line in screen.buffer.items():
        cells: list[int] = []
        for x, char in line.items():
            cells += (x, table(char))
        rows.append([y, table(line.default), cells])

    def cursor_out(cursor: Cursor) -> list[Any]:
        return [cursor.x, cursor.y, table(cursor.attrs), cursor.hidden]

    return {
        "v": SNAPSHOT_VERSION,
        "columns": screen.columns,
        "lines": screen.lines,
        "rows": rows,
        "cursor": cursor_out(screen.cursor),
        "savepoints": [
            [
                cursor_out(point.cursor),
                _charset_out(point.g0_charset),
                _charset_out(point.g1_charset),
                point.charset,
                point.origin,
                point.wrap,
            ]
            for point in screen.savepoints
        ],
        "mode": sorted(screen.mode),
        "margins": list(screen.margins) if screen.margins is not None else None,
        "title": screen.title,
        "icon_name": screen.icon_name,
        "charset": screen.charset,
        "g0": _charset_out(screen.g0_charset),
        "g1": _charset_out(screen.g1_charset),
        "tabstops": sorted(screen.tabstops),
        "saved_columns": screen.saved_columns,
        "chars": table.chars,
    }


def restore_screen(snapshot: dict[str, Any], screen_cls: type[pyte.Screen]) -> pyte.Screen:
    """A fresh `screen_cls` in exactly the state `snapshot_screen` captured."""
    if snapshot.get("v") != SNAPSHOT_VERSION:
        raise ValueError("unknown screen snapshot version")
    columns, lines = snapshot["columns"], snapshot["lines"]
    if not (0 < columns <= MAX_COLUMNS and 0 < lines <= MAX_ROWS):
        raise ValueError("screen snapshot out of bounds")  # a damaged or forged index
    chars = [_new_tuple(Char, tuple(fields)) for fields in snapshot["chars"]]
    screen = screen_cls(columns, lines)

    def cursor_in(value: list[Any]) -> Cursor:
        cursor = Cursor(value[0], value[1], chars[value[2]])
        cursor.hidden = value[3]
        return cursor

    screen.buffer.clear()
    for y, default, cells in snapshot["rows"]:
        line = StaticDefaultDict[int, Char](chars[default])
        line.update(zip(cells[0::2], map(chars.__getitem__, cells[1::2]), strict=True))
        screen.buffer[y] = line
    screen.dirty = set()
    screen.cursor = cursor_in(snapshot["cursor"])
    screen.savepoints = [
        Savepoint(cursor_in(c), _charset_in(g0), _charset_in(g1), charset, origin, wrap)
        for c, g0, g1, charset, origin, wrap in snapshot["savepoints"]
    ]
    screen.mode = set(snapshot["mode"])
    margins = snapshot["margins"]
    screen.margins = Margins(*margins) if margins is not None else None
    screen.title = snapshot["title"]
    screen.icon_name = snapshot["icon_name"]
    screen.charset = snapshot["charset"]
    screen.g0_charset = _charset_in(snapshot["g0"])
    screen.g1_charset = _charset_in(snapshot["g1"])
    screen.tabstops = set(snapshot["tabstops"])
    screen.saved_columns = snapshot["saved_columns"]
    return screen
