"""Transcripts (what the screen showed, what was typed) and searching across recordings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bastion.recording import format as fmt
from bastion.recording.search import (
    Match,
    format_line,
    iter_text,
    search,
    search_recording,
    transcript,
)
from bastion.recording.transcript import (
    INPUT,
    OUTPUT,
    InputLines,
    PlainLines,
    TextLine,
    clean_line,
)
from tests.unit.recording_synth import Event, header, shell_session, write_recording


def texts(path: Path, kind: str | None = None) -> list[str]:
    return [line.text for line in transcript(path) if kind is None or line.kind == kind]


def test_lines_that_scrolled_off_the_screen_are_in_the_transcript(tmp_path: Path) -> None:
    output = b"".join(b"line %03d\r\n" % n for n in range(100))
    path = write_recording(
        tmp_path / "s.rec", [(1.0, fmt.OUTPUT, output)], head=header(term_size=[80, 5])
    )
    assert texts(path) == [f"line {n:03d}" for n in range(100)]
    # Only the last rows are still on the screen at the end; the rest scrolled off.
    assert len(list(transcript(path))) == 100


def test_each_line_is_stamped_when_it_last_changed(tmp_path: Path) -> None:
    events: list[Event] = [
        (1.0, fmt.OUTPUT, b"$ "),
        (2.0, fmt.OUTPUT, b"l"),
        (3.0, fmt.OUTPUT, b"s"),
        (4.0, fmt.OUTPUT, b"\r\nfile-a\r\n"),
        (9.0, fmt.OUTPUT, b"$ "),
    ]
    path = write_recording(tmp_path / "s.rec", events)
    assert [(round(t, 3), text) for t, _k, text in transcript(path)] == [
        (3.0, "$ ls"),
        (4.0, "file-a"),
        (9.0, "$"),
    ]


def test_typed_input_is_its_own_lines_in_time_order(tmp_path: Path) -> None:
    events: list[Event] = [(0.5, fmt.OUTPUT, b"$ ")]
    for n, char in enumerate(b"rm -rf /tmpx\x7f/data\r"):
        events.append((1.0 + n * 0.1, fmt.INPUT, bytes([char])))
        echo = b"\x08 \x08" if char == 0x7F else b"\r\n" if char == 0x0D else bytes([char])
        events.append((1.0 + n * 0.1 + 0.001, fmt.OUTPUT, echo))
    events.append((5.0, fmt.OUTPUT, b"removed\r\n$ "))
    path = write_recording(tmp_path / "s.rec", events)

    lines = list(transcript(path))

    assert [(line.kind, line.text) for line in lines] == [
        (OUTPUT, "$ rm -rf /tmpx"),  # shown, then erased by the backspace: still recorded
        (OUTPUT, "$ rm -rf /tmp/data"),
        (INPUT, "rm -rf /tmp/data"),
        (OUTPUT, "removed"),
        (OUTPUT, "$"),
    ]
    assert [line.seconds for line in lines] == sorted(line.seconds for line in lines)


def test_cleared_and_overwritten_screens_keep_their_lines(tmp_path: Path) -> None:
    events: list[Event] = [
        (1.0, fmt.OUTPUT, b"top secret\r\nsecond"),
        (2.0, fmt.OUTPUT, b"\x1b[H\x1b[2J"),  # clear
        (3.0, fmt.OUTPUT, b"\x1b[1;1Hprogress 10%"),
        (4.0, fmt.OUTPUT, b"\rprogress 99%"),
        (5.0, fmt.OUTPUT, b"\x1b[2;1Hdone"),
    ]
    path = write_recording(tmp_path / "s.rec", events)
    assert texts(path) == ["top secret", "second", "progress 10%", "progress 99%", "done"]


def test_full_screen_redraws_do_not_duplicate_unchanged_rows(tmp_path: Path) -> None:
    rows = b"".join(b"\x1b[%d;1Hrow %d" % (n, n) for n in range(1, 5))
    events: list[Event] = [
        (1.0, fmt.OUTPUT, b"\x1b[2J" + rows),
        (2.0, fmt.OUTPUT, b"\x1b[1;1H\x1b[Lnew top"),  # insert a line: rows move down
    ]
    path = write_recording(tmp_path / "s.rec", events, head=header(term_size=[20, 4]))
    # Time order; lines of the same time in the order they left the screen.
    assert texts(path) == ["row 4", "row 1", "row 2", "row 3", "new top"]


def test_a_session_without_a_pty_is_plain_lines(tmp_path: Path) -> None:
    events: list[Event] = [
        (0.1, fmt.INPUT, b"SELECT 1;\nDROP TABLE users;\n"),
        (0.2, fmt.OUTPUT, b"\x1b[1mbold\x1b[0m header\npartial "),
        (0.3, fmt.STDERR, b"warn: caf" + "é".encode()[:1]),
        (0.4, fmt.STDERR, "é".encode()[1:] + b"\n"),
        (0.5, fmt.OUTPUT, b"line\n10%\r50%\r100%\n"),
        (0.6, fmt.OUTPUT, b"no newline at the end"),
    ]
    path = write_recording(tmp_path / "s.rec", events, head=header(pty=False, kind="exec"))
    assert [(line.kind, line.text) for line in transcript(path)] == [
        (INPUT, "SELECT 1;"),
        (INPUT, "DROP TABLE users;"),
        (OUTPUT, "bold header"),
        (OUTPUT, "warn: café"),
        (OUTPUT, "partial line"),
        (OUTPUT, "100%"),
        (OUTPUT, "no newline at the end"),
    ]


def test_input_line_editing() -> None:
    lines = InputLines()
    assert lines.feed(1.0, b"ls -l\x1b[D\x1b[Da\r") == [(1.0, "ls -la")]  # arrows dropped
    assert lines.feed(2.0, b"rm fo\x17echo hi\r") == [(2.0, "rm echo hi")]
    assert lines.feed(3.0, b"oops\x15whoami\n") == [(3.0, "whoami")]
    assert lines.feed(4.0, b"sleep 100\x03") == [(4.0, "sleep 100^C")]
    assert lines.feed(5.0, b"caf" + "é".encode()[:1]) == []
    assert lines.feed(6.0, "é".encode()[1:] + b"\r") == [(6.0, "café")]
    assert lines.feed(7.0, b"\x1b[200~pasted\x1b[201~\r") == [(7.0, "pasted")]


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain", "plain"),
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b]0;title\x07prompt$ ", "prompt$"),
        ("abc\rX", "Xbc"),
        ("with\ttab", "with\ttab"),
        ("bell\x07 and nul\x00", "bell and nul"),
        ("crlf\r", "crlf"),
    ],
)
def test_plain_lines_drop_escape_codes(raw: str, shown: str) -> None:
    assert clean_line(raw) == shown


def test_plain_lines_cut_very_long_lines() -> None:
    lines = PlainLines()
    out = lines.feed(fmt.OUTPUT, 1.0, b"x" * 10_000)
    assert [len(line.text) for line in out] == [4096, 4096]
    assert [len(line.text) for line in lines.finish()] == [10_000 - 8192]


def test_binary_output_makes_a_transcript_without_failing(tmp_path: Path) -> None:
    rnd = __import__("random").Random(3)
    events: list[Event] = [
        (i * 0.01, fmt.OUTPUT, bytes(rnd.getrandbits(8) for _ in range(500))) for i in range(100)
    ]
    path = write_recording(tmp_path / "s.rec", events)
    lines = list(transcript(path))
    assert lines and all("\n" not in line.text for line in lines)
    path2 = write_recording(tmp_path / "t.rec", events, head=header(pty=False))
    assert list(transcript(path2))


def test_text_output_marks_typed_lines() -> None:
    assert format_line(TextLine(83.25, OUTPUT, "$ ls")) == "00:01:23.250  $ ls"
    assert format_line(TextLine(3725.0, INPUT, "ls")) == "01:02:05.000  > ls"


def test_text_of_a_session(tmp_path: Path) -> None:
    path = write_recording(tmp_path / "s.rec", list(shell_session(10_000, seed=9)))
    text = "".join(iter_text(path))
    assert "\x1b" not in text
    assert "> ls -la" in text or "> ps aux" in text or "> df -h" in text


@pytest.fixture
def two_sessions(tmp_path: Path) -> list[Path]:
    shell: list[Event] = [(0.5, fmt.OUTPUT, b"$ ")]
    for n, char in enumerate(b"psql -c 'DROP TABLE users'\r"):
        shell.append((1.0 + n * 0.05, fmt.INPUT, bytes([char])))
        shell.append((1.0 + n * 0.05, fmt.OUTPUT, b"\r\n" if char == 13 else bytes([char])))
    shell.append((4.0, fmt.OUTPUT, b"DROP TABLE\r\n$ "))
    first = write_recording(tmp_path / "a.rec", shell, head=header(session="s-a"))
    exec_events: list[Event] = [(0.1, fmt.OUTPUT, b"nothing to see\nrm -rf /var/tmp/x\n")]
    second = write_recording(
        tmp_path / "b.rec", exec_events, head=header(session="s-b", pty=False, kind="exec")
    )
    return [first, second]


def test_search_finds_output_and_typed_input(two_sessions: list[Path]) -> None:
    matches = list(search(two_sessions, "DROP TABLE"))
    assert [(m.session_id, m.kind, m.line) for m in matches] == [
        ("s-a", OUTPUT, "$ psql -c 'DROP TABLE users'"),
        ("s-a", INPUT, "psql -c 'DROP TABLE users'"),
        ("s-a", OUTPUT, "DROP TABLE"),
    ]
    assert matches[1].seconds == pytest.approx(1.0 + 26 * 0.05)
    found = list(search(two_sessions, "rm -rf"))
    assert [(m.session_id, m.line) for m in found] == [("s-b", "rm -rf /var/tmp/x")]


def test_search_with_a_regex_kinds_and_case(two_sessions: list[Path]) -> None:
    matches = list(search(two_sessions, r"^(DROP|rm) ", regex=True))
    assert [(m.session_id, m.line) for m in matches] == [
        ("s-a", "DROP TABLE"),
        ("s-b", "rm -rf /var/tmp/x"),
    ]
    typed = list(search(two_sessions, "drop table", ignore_case=True, kinds={INPUT}))
    assert [m.kind for m in typed] == [INPUT]
    named = list(search([(two_sessions[1], "from-the-store")], "rm"))
    assert named[0].session_id == "from-the-store"
    assert isinstance(named[0], Match) and named[0].as_dict()["kind"] == OUTPUT
    with pytest.raises(re.error):
        list(search(two_sessions, "(unclosed", regex=True))


def test_search_reports_each_line_once(tmp_path: Path) -> None:
    path = write_recording(tmp_path / "s.rec", [(1.0, fmt.OUTPUT, b"aaaa aaaa\r\nb\r\naa\r\n")])
    assert [m.line for m in search_recording(path, "aa")] == ["aaaa aaaa", "aa"]
    assert [m.line for m in search_recording(path, "a+", regex=True)] == ["aaaa aaaa", "aa"]
    assert [m.line for m in search_recording(path, "a\\nb", regex=True)] == []


def test_search_in_worker_processes_keeps_the_order(two_sessions: list[Path]) -> None:
    sequential = list(search(two_sessions * 2, "TABLE"))
    parallel = list(search(two_sessions * 2, "TABLE", workers=2))
    assert parallel == sequential
