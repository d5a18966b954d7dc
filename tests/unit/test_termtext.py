"""`termtext`: what could drive a terminal or hide text is shown as an escape, unambiguously."""

from __future__ import annotations

import re
import sys
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion import approvalnotice
from bastion.termtext import count_hidden, is_hidden, visible, visible_lines

# Characters that must never reach the terminal as themselves: C0, DEL, C1, bidi
# embeddings/overrides/isolates, other format characters, separators, odd spaces.
DANGEROUS = (
    [chr(c) for c in range(0x20)]
    + [chr(c) for c in range(0x7F, 0xA0)]
    + [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
    + ["\u200b", "\u200d", "\u200e", "\u200f", "\u2060", "\ufeff", "\u061c", "\u00ad"]
    + ["\u2028", "\u2029", "\u00a0", "\u3000", "\U000e0041", "\U000e0001", "\ufe0f", "\u3164"]
)

# Text that is mostly the interesting characters: plain ASCII, backslashes and the escape
# letters (to attack unambiguity), and every dangerous character.
TRICKY = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("\\ntrxuU0123456789abcdef ;-/")),
        st.sampled_from(DANGEROUS),
        st.characters(),
    ),
    max_size=60,
)


def unescape(shown: str) -> str:
    """The reading `visible()` promises: each escape back to its character."""
    out = []
    i = 0
    named = {"\\": "\\", "n": "\n", "t": "\t", "r": "\r"}
    sizes = {"x": 2, "u": 4, "U": 8}
    while i < len(shown):
        ch = shown[i]
        nxt = shown[i + 1] if i + 1 < len(shown) else ""
        if ch == "\\" and nxt in named:
            out.append(named[nxt])
            i += 2
        elif ch == "\\" and nxt in sizes:
            digits = shown[i + 2 : i + 2 + sizes[nxt]]
            assert re.fullmatch("[0-9a-f]+", digits) and len(digits) == sizes[nxt], shown
            out.append(chr(int(digits, 16)))
            i += 2 + sizes[nxt]
        else:
            assert ch != "\\" or nxt not in "\\ntrxuU" or not nxt, shown
            out.append(ch)
            i += 1
    return "".join(out)


def unsafe_in(shown: str, allow: str = "") -> list[str]:
    return [
        ch
        for ch in shown
        if ch not in allow
        and (
            ord(ch) < 0x20
            or 0x7F <= ord(ch) < 0xA0
            or unicodedata.category(ch) in ("Cf", "Cc", "Cs", "Zl", "Zp")
            or (unicodedata.category(ch) == "Zs" and ch != " ")
        )
    ]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("rm -rf D # \x1b[2K\r\x1b[1Als -la D", "rm -rf D # \\x1b[2K\\r\\x1b[1Als -la D"),
        ("a\nb\tc", "a\\nb\\tc"),
        ("csi\x9b2J del\x7f nul\x00", "csi\\x9b2J del\\x7f nul\\x00"),
        ("ls \u202eD fr- mr", "ls \\u202eD fr- mr"),
        ("isolate \u2066x\u2069", "isolate \\u2066x\\u2069"),
        ("zero\u200bwidth \ufeff", "zero\\u200bwidth \\ufeff"),
        ("tag \U000e0041", "tag \\U000e0041"),
        ("rm /tmp/a\u00a0/", "rm /tmp/a\\xa0/"),
        ("café ünïcödé 日本", "café ünïcödé 日本"),
        # backslashes: doubled only where they could start an escape
        ("grep 'a\\|b' C:\\Temp", "grep 'a\\|b' C:\\Temp"),
        ("printf 'a\\nb'", "printf 'a\\\\nb'"),
        ("literal \\x1b", "literal \\\\x1b"),
        ("\\\x1b", "\\\\\\x1b"),
        ("ends in \\", "ends in \\\\"),
    ],
)
def test_visible_examples(text: str, shown: str) -> None:
    assert visible(text) == shown
    assert unescape(shown) == text


@pytest.mark.parametrize("char", DANGEROUS)
def test_every_dangerous_character_is_escaped(char: str) -> None:
    assert is_hidden(char)
    assert char not in visible(f"a{char}b")
    assert visible(f"a{char}b").startswith("a\\")


@given(TRICKY)
def test_visible_output_is_safe_and_reads_back(text: str) -> None:
    shown = visible(text)
    assert unsafe_in(shown) == []
    # as a UTF-8 terminal reads it: no C0 byte, no DEL, no C1 code point (checked above)
    assert all(0x20 <= b != 0x7F for b in shown.encode("utf-8"))
    assert unescape(shown) == text  # so two different texts never look the same


@given(TRICKY, TRICKY)
def test_different_texts_never_look_the_same(a: str, b: str) -> None:
    if a != b:
        assert visible(a) != visible(b)


@given(TRICKY)
def test_visible_lines_keeps_only_newlines(text: str) -> None:
    shown = visible_lines(text)
    assert unsafe_in(shown, allow="\n") == []
    assert shown.count("\n") == text.count("\n")
    assert [unescape(line) for line in shown.split("\n")] == text.split("\n")


def test_the_hidden_set_covers_the_unicode_categories() -> None:
    """Every control, format, separator, surrogate and non-ASCII space of this Python's
    Unicode database is escaped (the ranges in termtext are written out by hand)."""
    missed = [
        f"U+{code:04X}"
        for code in range(sys.maxunicode + 1)
        if (
            (cat := unicodedata.category(chr(code))) in ("Cc", "Cf", "Cs", "Zl", "Zp")
            or (cat == "Zs" and code != 0x20)
        )
        and not is_hidden(chr(code))
    ]
    assert missed == []


def test_printable_characters_stay_as_they_are() -> None:
    text = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "\\") + "é€𝄞"
    assert visible(text) == text
    assert count_hidden(text) == 0
    assert count_hidden("a\x1b\u202eb\n") == 3


def test_approval_notices_escape_the_same_characters() -> None:
    """The line the waiting agent sees and the hooks' payload hide nothing either."""
    shown = approvalnotice.printable("ls \u202eD fr- mr \u2066x \x9b", 100)
    assert shown == "ls \\u202eD fr- mr \\u2066x \\x9b"
    assert approvalnotice.printable("tag \U000e0041", 100) == "tag \\U000e0041"
