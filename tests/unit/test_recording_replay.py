"""Reading recordings back: metadata, frames, and files cut short or damaged."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.recording import format as fmt
from bastion.recording.replay import (
    Recording,
    iter_frames,
    parse_resize,
    read_info,
)
from tests.unit.recording_synth import end, header, write_recording

EVENTS = [
    (0.5, fmt.OUTPUT, b"$ "),
    (1.0, fmt.INPUT, b"ls\r"),
    (1.01, fmt.OUTPUT, b"ls\r\nfile\r\n"),
    (1.5, fmt.STDERR, b"warning\r\n"),
    (2.0, fmt.RESIZE, b"100x30"),
    (2.5, fmt.MARKER, b"approval.granted"),
    (3.0, fmt.OUTPUT, b"$ "),
]


def test_metadata_duration_and_totals(tmp_path: Path) -> None:
    path = write_recording(tmp_path / "s.rec", EVENTS, tail=end(exit_status=3, reason="exit"))

    info = read_info(path)

    assert info.header == header()
    assert info.end is not None and info.end["exit_status"] == 3
    assert info.end["end_reason"] == "exit"
    assert info.complete and not info.truncated
    assert info.session_id == "s-0001"
    assert info.term_size == (80, 24)
    assert info.pty is True
    assert info.frames == len(EVENTS) + 1  # and the end frame
    assert info.output_bytes == len(b"$ ls\r\nfile\r\nwarning\r\n$ ")
    assert info.input_bytes == 3
    assert info.duration == pytest.approx(3.0)
    assert info.started_at is not None and info.started_at.year == 2026
    assert info.as_dict()["complete"] is True


def test_frames_stream_in_order_after_the_header(tmp_path: Path) -> None:
    path = write_recording(tmp_path / "s.rec", EVENTS)

    frames = list(iter_frames(path))

    assert [(f.kind, f.payload) for f in frames[:-1]] == [(k, p) for _t, k, p in EVENTS]
    assert [f.time for f in frames[:-1]] == pytest.approx([t for t, _k, _p in EVENTS])
    assert frames[-1].kind == fmt.END


def test_a_recording_cut_at_any_byte_reads_its_whole_frames(tmp_path: Path) -> None:
    whole = write_recording(tmp_path / "whole.rec", EVENTS).read_bytes()
    frame_ends = [f.offset + fmt.HEADER_SIZE + len(f.payload) for f in fmt.parse(whole).frames]
    cut = tmp_path / "cut.rec"
    for size in range(len(whole) + 1):
        cut.write_bytes(whole[:size])

        info = read_info(cut)  # below the magic's size: killed before the first flush

        whole_frames = [e for e in frame_ends if e <= size]
        assert info.frames == max(0, len(whole_frames) - 1)  # the header frame isn't counted
        assert info.valid_size == (whole_frames[-1] if whole_frames else min(size, 8))
        assert info.complete == (size == len(whole))
        assert info.truncated == (info.valid_size < size)
        assert info.corrupt_at is None


def test_garbage_after_a_crash_ends_the_reading_and_is_reported(tmp_path: Path) -> None:
    path = write_recording(tmp_path / "s.rec", EVENTS, close=False)
    good = path.stat().st_size
    with path.open("ab") as file:
        file.write(b"\x00" * 100)  # a filesystem's zero fill after power loss

    info = read_info(path)

    assert info.corrupt_at == good
    assert info.valid_size == good
    assert info.end is None and not info.complete
    assert info.frames == len(EVENTS)


def test_not_a_recording_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.rec"
    path.write_bytes(b"#!/bin/sh\necho not a recording\n")
    with pytest.raises(fmt.FormatError):
        Recording.open(path)
    path.write_bytes(b"BAS")  # a prefix of the magic: an empty recording
    assert read_info(path).frames == 0


def test_header_defaults_and_bounds(tmp_path: Path) -> None:
    path = write_recording(
        tmp_path / "s.rec", [], head=header(term_size=None, pty=False, kind="exec")
    )
    with Recording.open(path) as recording:
        assert recording.term_size == (80, 24)
        assert recording.pty is False
    path2 = write_recording(tmp_path / "t.rec", [], head=header(term_size=[100000, 0]))
    assert read_info(path2).term_size == (80, 24)
    path3 = write_recording(tmp_path / "u.rec", [], head=header(term_size=[100000, 100000]))
    assert read_info(path3).term_size == (1000, 500)


@pytest.mark.parametrize(
    ("payload", "size"),
    [
        (b"80x24", (80, 24)),
        (b"132x50", (132, 50)),
        (b"99999x99999", (1000, 500)),
        (b"0x24", None),
        (b"80x", None),
        (b"x24", None),
        (b"80*24", None),
        (b"-1x5", None),
        (b"1" * 40 + b"x1", None),
    ],
)
def test_resize_payloads(payload: bytes, size: tuple[int, int] | None) -> None:
    assert parse_resize(payload) == size


def test_closing_with_a_live_frame_iterator_does_not_fail(tmp_path: Path) -> None:
    path = write_recording(tmp_path / "s.rec", EVENTS)
    recording = Recording.open(path)
    frames = recording.frames()
    next(frames)
    recording.close()
    frames.close()
