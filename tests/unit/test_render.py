"""`render`: tables, fields, lines and JSON hold no raw control or invisible character."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from bastion import render
from tests.unit.test_termtext import TRICKY, unescape, unsafe_in

SPOOF = "rm -rf D # \x1b[2K\r\x1b[1A\u202els -la D\x9b\nfake-row  pending"


def test_a_value_cannot_add_rows_to_a_table() -> None:
    out = render.table(["ID", "COMMAND"], [("a-1", SPOOF), ("a-2", "ls")])
    rows = out.split("\n")
    assert len(rows) == 3
    assert rows[1].startswith("a-1") and "rm -rf D" in rows[1] and "\\n" in rows[1]
    assert rows[2].split() == ["a-2", "ls"]
    assert unsafe_in(out, allow="\n") == []


@given(st.lists(st.tuples(TRICKY, TRICKY), max_size=5))
def test_table_layout_lines_are_the_only_line_breaks(rows: list[tuple[str, str]]) -> None:
    out = render.table(["A", "B"], rows)
    assert out.count("\n") == len(rows)
    assert unsafe_in(out, allow="\n") == []


@given(TRICKY, TRICKY)
def test_fields_and_lines(key: str, value: str) -> None:
    out = render.fields([("command", value), ("why", key)])
    assert out.count("\n") == 1
    assert unsafe_in(out, allow="\n") == []
    shown = render.line("{} on {}: {}", key, value, 3)
    assert "\n" not in shown and unsafe_in(shown) == []


def test_line_keeps_rendered_text_and_escapes_the_rest() -> None:
    table = render.table(["A"], [("x",)])
    assert render.line("{}\n{}", table, "a\nb") == "A\nx\na\\nb"


def test_what_the_cli_writes_for_plain_strings_is_escaped_whole() -> None:
    """A plain `str` (a value that skipped rendering) is flattened and made visible."""
    assert render.for_terminal("two\nlines\x1b[2J") == "two\\nlines\\x1b[2J"
    assert render.for_terminal(render.line("two\nlines")) == "two\nlines"
    assert render.for_terminal(render.line("a") + "\n\x1b") == "a\\n\\x1b"  # str ops drop Text


def test_clip_marks_a_cut_and_says_how_long_the_whole_is() -> None:
    padded = "ls -la" + " " * 500 + "; rm -rf /"
    shown = render.clip(padded, 60)
    assert shown.startswith("ls -la ")
    assert shown.endswith("… [cut: 516 chars in all]")
    assert render.clip("ls -la", 60) == "ls -la"


@given(TRICKY, st.integers(min_value=1, max_value=40))
def test_clip_never_cuts_an_escape_in_half(text: str, limit: int) -> None:
    shown = render.clip(text, limit)
    assert unsafe_in(shown) == []
    if shown == render.value(text):
        assert len(shown) <= limit
    else:
        kept, _, tail = shown.rpartition(render.CLIP_MARK)
        assert len(kept) <= limit
        assert tail == f" [cut: {len(text)} chars in all]"
        assert text.startswith(unescape(kept))


@given(TRICKY, st.integers(min_value=20, max_value=60))
def test_block_numbers_every_line_and_keeps_to_the_width(text: str, width: int) -> None:
    out = render.block(text, width)
    assert unsafe_in(out, allow="\n") == []
    numbered = [row for row in out.split("\n") if row.split("|")[0].strip()]
    assert len(numbered) == text.count("\n") + 1
    pieces = [row.split(" | ", 1)[1] for row in out.split("\n")]
    assert all(len(piece) <= width for piece in pieces)
    # the pieces of each line read back as that line
    lines: list[str] = []
    for row, piece in zip(out.split("\n"), pieces, strict=True):
        if row.split("|")[0].strip():
            lines.append(piece)
        else:
            lines[-1] += piece
    assert [unescape(line) for line in lines] == text.split("\n")


def test_block_shows_the_tail_of_a_padded_command() -> None:
    out = render.block("ls -la" + " " * 500 + "; rm -rf /", 72)
    assert out.split("\n")[-1].rstrip().endswith("; rm -rf /")
    assert all(len(row) <= 72 + 6 for row in out.split("\n"))


def test_length_note() -> None:
    assert render.length_note("ls") == "2 chars, 1 line"
    assert render.length_note(SPOOF) == (
        f"{len(SPOOF)} chars, 2 lines, 5 hidden or control characters shown as escapes"
    )


@given(st.dictionaries(TRICKY, st.one_of(TRICKY, st.lists(TRICKY, max_size=3)), max_size=4))
def test_json_is_the_same_value_and_hides_nothing(value: dict[str, object]) -> None:
    out = render.to_json(value)
    assert json.loads(out) == value
    assert unsafe_in(out, allow="\n") == []


def test_json_keeps_readable_text_readable() -> None:
    out = render.to_json({"text": "café \u202e \x9b \x1b"})
    assert '"café \\u202e \\u009b \\u001b"' in out
