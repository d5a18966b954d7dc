"""Text shown on a terminal, with what could drive the terminal or hide text made visible.

A value the CLI prints may come from an agent: a command waiting for approval, a SQL
statement, a task name, a line of a recording. Printed raw, its escape sequences move
the cursor and erase lines (an `rm -rf D` can show as `ls -la D`), a bidi override
reorders what follows it (Trojan Source, CVE-2021-42574), and an invisible character
makes two different commands look the same. `visible()` replaces every such character
with an escape a human can read:

- C0 controls and DEL: `\\n`, `\\t`, `\\r`, else `\\x1b`, `\\x7f` (newlines too: a value
  can't start a line of its own, such as a fake table row);
- C1 controls (0x80-0x9F, the 8-bit CSI 0x9B among them): `\\x9b`;
- format characters (bidi embeddings, overrides and isolates, zero-width spaces and
  joiners, the word joiner, the BOM, tag characters ...), other default-ignorable code
  points (variation selectors, Hangul fillers), line and paragraph separators, spaces
  other than U+0020 (a no-break space splits no shell word but looks like one) and lone
  surrogates: `\\u202e`, `\\U000e0041`.

The result is unambiguous: a backslash that would otherwise read as the start of an
escape (one before `\\`, `n`, `t`, `r`, `x`, `u`, `U`, an escaped character, or the end
of the value) is doubled, so literal text `\\x1b` reads `\\\\x1b` while the ESC character
reads `\\x1b`. Other backslashes (`grep 'a\\|b'`, `C:\\temp`) are left as they are.
Two different values never look the same.

Pure: strings in, strings out. What is printed, and how it is laid out, is `render`'s.
"""

from __future__ import annotations

import re

# Format characters (general category Cf, as of Unicode 15.1), then the other default-
# ignorable code points, separators and spaces that render as nothing or as a plain space.
# A unit test checks this list against `unicodedata` for the running Python.
_HIDDEN_RANGES = (
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),  # tag characters, variation selectors supplement (all ignorable)
    # default-ignorable, not Cf
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    # line and paragraph separators; spaces but U+0020
    (0x2028, 0x2029),
    (0x00A0, 0x00A0),
    (0x1680, 0x1680),
    (0x2000, 0x200A),
    (0x202F, 0x202F),
    (0x205F, 0x205F),
    (0x3000, 0x3000),
    # lone surrogates (no terminal encoding can carry them)
    (0xD800, 0xDFFF),
)


def _class(ranges: tuple[tuple[int, int], ...]) -> str:
    return "".join(
        re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
        for lo, hi in ranges
    )


_CONTROLS = ((0x00, 0x1F), (0x7F, 0x9F))
_UNSAFE = _class((*_CONTROLS, *_HIDDEN_RANGES))
_UNSAFE_BUT_NEWLINE = _class(((0x00, 0x09), (0x0B, 0x1F), (0x7F, 0x9F), *_HIDDEN_RANGES))
# A backslash is doubled where it could be read as the start of an escape.
_ONE_LINE = re.compile(rf"\\(?=[\\ntrxuU{_UNSAFE}]|\Z)|[{_UNSAFE}]")
_MANY_LINES = re.compile(rf"\\(?=[\\ntrxuU{_UNSAFE}]|\Z)|[{_UNSAFE_BUT_NEWLINE}]")
UNSAFE_CHAR = re.compile(f"[{_UNSAFE}]")
# The same, but for C0 controls: what `json.dumps(ensure_ascii=False)` leaves unescaped.
UNSAFE_IN_JSON = re.compile(f"[{_class(((0x7F, 0x9F), *_HIDDEN_RANGES))}]")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escape_char(char: str) -> str:
    """The escape shown for one character `visible()` doesn't let through."""
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _escape(match: re.Match[str]) -> str:
    return escape_char(match.group())


def visible(text: str) -> str:
    """`text` on one line, with every control, format and invisible character escaped."""
    return _ONE_LINE.sub(_escape, text)


def visible_lines(text: str) -> str:
    """`visible(text)` but for newlines, which stay line breaks (transcripts, screens).

    A backslash at the end of a line is doubled as at the end of a value, so each line
    reads back on its own.
    """
    return _MANY_LINES.sub(_escape, text)


def is_hidden(char: str) -> bool:
    """Whether `visible()` escapes this character (not counting the backslash)."""
    return UNSAFE_CHAR.fullmatch(char) is not None


def count_hidden(text: str) -> int:
    """How many characters of `text` `visible()` shows as escapes (backslashes aside)."""
    return len(UNSAFE_CHAR.findall(text))
