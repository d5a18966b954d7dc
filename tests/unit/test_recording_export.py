"""Exports: asciicast v2 and v3 as asciinema reads them, raw bytes, text."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from bastion.recording import format as fmt
from bastion.recording.export import FORMATS, export, export_to, iter_export
from tests.unit.recording_synth import START, Event, end, header, write_recording

EVENTS: list[Event] = [
    (0.25, fmt.OUTPUT, b"\x1b[1;32m$\x1b[0m "),
    (1.0, fmt.INPUT, b"echo caf\xc3\xa9\r"),
    (1.1, fmt.OUTPUT, b"echo caf\xc3"),  # a UTF-8 sequence split across two frames
    (1.2, fmt.OUTPUT, b"\xa9\r\n"),
    (1.3, fmt.STDERR, b"warn\x00\r\n"),
    (2.0, fmt.RESIZE, b"100x30"),
    (2.5, fmt.MARKER, b"approval.granted"),
    (3.1234567, fmt.OUTPUT, b"\xff bye\r\n"),
]


def cast(data: bytes) -> tuple[dict[str, Any], list[list[Any]]]:
    text = data.decode("utf-8")
    assert text.endswith("\n")
    lines = text[:-1].split("\n")
    assert all(line.strip() for line in lines), "a blank line breaks asciinema 2.2"
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    return write_recording(tmp_path / "s.rec", EVENTS, tail=end(exit_status=2, reason="exit"))


def test_asciicast_v2_header(recording: Path) -> None:
    head, _events = cast(export(recording, "asciicast-v2"))
    assert head["version"] == 2
    assert (head["width"], head["height"]) == (80, 24)
    assert head["timestamp"] == int(START.timestamp())
    assert head["duration"] == pytest.approx(3.123457, abs=1e-6)
    assert head["env"] == {"TERM": "xterm-256color"}
    assert head["title"] == "agent-7 on prod-web (session s-0001)"
    assert head["bastion"]["header"] == header()
    assert head["bastion"]["end"]["exit_status"] == 2
    assert head["bastion"]["complete"] is True
    assert "command" not in head  # the header's command is null for a shell


def test_asciicast_v2_events(recording: Path) -> None:
    _head, events = cast(export(recording, "asciicast-v2"))
    assert events == [
        [0.25, "o", "\x1b[1;32m$\x1b[0m "],
        [1.0, "i", "echo café\r"],
        [1.1, "o", "echo caf"],
        [1.2, "o", "é\r\n"],
        [1.3, "o", "warn\x00\r\n"],
        [2.0, "r", "100x30"],
        [2.5, "m", "approval.granted"],
        [pytest.approx(3.123457, abs=1e-6), "o", "\ufffd bye\r\n"],
    ]
    lines = export(recording, "asciicast-v2").decode().splitlines()
    assert lines[1].startswith("[0.250000, ")  # absolute, 6 decimals
    assert lines[-1].startswith("[3.123457, ")


def test_asciicast_v3_intervals_and_exit_status(recording: Path) -> None:
    head, events = cast(export(recording, "asciicast-v3"))
    assert head["version"] == 3
    assert head["term"] == {"cols": 80, "rows": 24, "type": "xterm-256color"}
    assert "width" not in head
    codes = [e[1] for e in events]
    assert codes == ["o", "i", "o", "o", "o", "r", "m", "o", "x"]
    assert events[-1][2] == "2"
    total = 0.0
    for event, (at, _kind, _payload) in zip(events, [*EVENTS, (3.1234567, b"E", b"")], strict=True):
        total += event[0]
        assert total == pytest.approx(at, abs=0.0011)  # rounding does not add up
    lines = export(recording, "asciicast-v3").decode().splitlines()
    assert lines[1].startswith("[0.250, ")


def test_v3_rounding_error_is_carried_forward(tmp_path: Path) -> None:
    events: list[Event] = [(n * 0.0004, fmt.OUTPUT, b".") for n in range(1, 2001)]
    path = write_recording(tmp_path / "s.rec", events)
    _head, cast_events = cast(export(path, "asciicast-v3"))
    assert sum(e[0] for e in cast_events if e[1] == "o") == pytest.approx(0.8, abs=0.001)


def test_output_without_a_pty_gets_carriage_returns(tmp_path: Path) -> None:
    events: list[Event] = [(0.1, fmt.OUTPUT, b"one\ntwo\r\nthree\n")]
    path = write_recording(tmp_path / "s.rec", events, head=header(pty=False, command="ls"))
    head, cast_events = cast(export(path, "asciicast-v2"))
    assert head["command"] == "ls"
    assert cast_events == [[0.1, "o", "one\r\ntwo\r\nthree\r\n"]]


def test_a_truncated_recording_exports_what_was_written(tmp_path: Path) -> None:
    whole = write_recording(tmp_path / "whole.rec", EVENTS).read_bytes()
    path = tmp_path / "cut.rec"
    path.write_bytes(whole[:-30])
    head, events = cast(export(path, "asciicast-v2"))
    assert head["bastion"]["complete"] is False
    assert head["bastion"]["end"] is None
    assert events[-1] == [pytest.approx(3.123457, abs=1e-6), "o", "\ufffd bye\r\n"]
    _head3, events3 = cast(export(path, "asciicast-v3"))
    assert "x" not in [e[1] for e in events3]


def test_raw_is_the_output_bytes(recording: Path) -> None:
    assert export(recording, "raw") == b"".join(
        p for _t, k, p in EVENTS if k in (fmt.OUTPUT, fmt.STDERR)
    )


def test_text_is_the_transcript(recording: Path) -> None:
    text = export(recording, "text").decode()
    assert "> echo café" in text
    assert "$ echo café" in text
    assert "\x1b" not in text


def test_streaming_export_in_chunks(tmp_path: Path) -> None:
    events: list[Event] = [(n * 0.01, fmt.OUTPUT, b"x" * 1000 + b"\r\n") for n in range(1000)]
    path = write_recording(tmp_path / "s.rec", events)
    for name in FORMATS:
        chunks = list(iter_export(path, name))
        assert len(chunks) > 1, name
        out = io.BytesIO()
        assert export_to(path, name, out) == len(out.getvalue())
        assert out.getvalue() == b"".join(chunks)
    with pytest.raises(ValueError, match="unknown export format"):
        export(path, "mp4")  # type: ignore[arg-type]
