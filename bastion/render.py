"""Plain-text rendering for the CLI: aligned tables, key/value blocks, lines, JSON.

Everything the CLI prints is built here, as a `Text`: text whose every value went
through `termtext.visible` (control, format and invisible characters shown as escapes)
and whose only line breaks are the layout's own. The CLI's one writer (`cli.base.echo`)
takes a `Text`, and escapes anything else whole, newlines included: a value the code
forgot to pass through here comes out flattened and visible, never raw. A template
(`line`'s first argument) is the program's own text; only the values are escaped.

Pure string building; the CLI decides where the text goes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, LiteralString

from bastion.termtext import UNSAFE_IN_JSON, count_hidden, visible, visible_lines

# Ends a value `clip` cut short (then: how long the whole is).
CLIP_MARK = "…"


class Text(str):
    """Text safe to write to a terminal. Made by this module's functions only.

    Operations inherited from `str` (`+`, `%`, slicing) return a plain `str`, which the
    CLI's writer escapes whole: forgetting this module fails visibly, not dangerously.
    """

    __slots__ = ()


def value(item: object) -> Text:
    """One value on one line (None as empty); a `Text` is already safe and kept."""
    if isinstance(item, Text):
        return item
    return Text(visible("" if item is None else str(item)))


def line(template: LiteralString, *values: object) -> Text:
    """`template.format(*values)` with each value escaped by `value()`."""
    return Text(template.format(*(value(v) for v in values)))


def many_lines(text: str) -> Text:
    """Text whose line breaks are its own (a transcript, a screen): newlines stay, the
    rest is escaped as `value()` does."""
    return Text(visible_lines(text))


def for_terminal(item: object) -> str:
    """What the CLI writes for `item`: a `Text` as it is, anything else escaped whole."""
    return item if isinstance(item, Text) else value(item)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> Text:
    cells = [[value(h) for h in headers]] + [[value(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    out = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
    return Text("\n".join(out))


def fields(pairs: Sequence[tuple[str, object]]) -> Text:
    width = max(len(k) for k, _ in pairs)
    return Text("\n".join(f"{value(k + ':'):<{width + 1}} {value(v)}" for k, v in pairs))


def clip(text: str, limit: int) -> Text:
    """`value(text)` of at most `limit` characters; cut short, it ends in `…` and says
    how long the whole text is, so a padded command can't hide its tail off-screen.

    Never cuts an escape in half.
    """
    shown = visible(text)
    if len(shown) <= limit:
        return Text(shown)
    cut = 0
    for match in _PIECES.finditer(shown):
        if match.end() > limit:
            break
        cut = match.end()
    return Text(f"{shown[:cut]}{CLIP_MARK} [cut: {len(text)} chars in all]")


# An escape (`\\`, `\n`, `\x1b`, `\u202e`, `\U000e0041`), or one other character.
_PIECES = re.compile(r"\\(?:[\\ntr]|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})|.", re.DOTALL)


def length_note(text: str) -> Text:
    """`520 chars, 3 lines, 2 hidden or control characters shown as escapes`."""
    lines_count = text.count("\n") + 1
    hidden = count_hidden(text) - text.count("\n")
    parts = [f"{len(text)} chars", f"{lines_count} line{'s' if lines_count != 1 else ''}"]
    if hidden:
        parts.append(f"{hidden} hidden or control character{'s' if hidden != 1 else ''}")
        parts[-1] += " shown as escapes"
    return Text(", ".join(parts))


def block(text: str, width: int) -> Text:
    """A multi-line value in full, each of its lines numbered and escaped, and cut into
    pieces of at most `width` characters: nothing runs off the right edge, and no line
    of the value can pass for a line of the layout around it."""
    width = max(width, 20)
    out = []
    numbers = len(str(text.count("\n") + 1))
    for number, raw in enumerate(text.split("\n"), start=1):
        shown = visible(raw)
        pieces = _wrap(shown, width) or [""]
        out.append(f"  {number:>{numbers}} | {pieces[0]}")
        out += [f"  {'':>{numbers}} | {piece}" for piece in pieces[1:]]
    return Text("\n".join(out))


def _wrap(shown: str, width: int) -> list[str]:
    pieces: list[str] = []
    start = end = 0
    for match in _PIECES.finditer(shown):
        if match.end() - start > width:
            pieces.append(shown[start:end])
            start = end
        end = match.end()
    if end > start:
        pieces.append(shown[start:end])
    return pieces


def to_json(item: Any) -> Text:
    """JSON for `--json`. json escapes C0 controls; this escapes the rest of what
    `visible()` would (DEL, C1 controls, bidi and other format characters) as `\\uXXXX`,
    the same JSON value, while other non-ASCII text stays readable."""
    text = json.dumps(item, indent=2, sort_keys=False, ensure_ascii=False)
    return Text(UNSAFE_IN_JSON.sub(_json_escape, text))


def _json_escape(match: re.Match[str]) -> str:
    encoded = match.group().encode("utf-16-be", "surrogatepass")
    return "".join(
        f"\\u{int.from_bytes(encoded[i : i + 2], 'big'):04x}" for i in range(0, len(encoded), 2)
    )
