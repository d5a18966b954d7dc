"""The recording writer: queued chunks reach the file whole and in order.

The writer queues each frame's header and the payload object itself, and writes them
with `writev`. These tests make the kernel write short (a few bytes per call, as a full
pipe or a signal would), with and without the writer thread, and check that the file
parses back to exactly the frames recorded and that the digest is the file's.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.clock import FixedClock
from bastion.recording import format as fmt
from bastion.recording import writer
from bastion.recording.writer import Recorder, RecordingFailed

START = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
HEADER = {"version": 1, "session": "s-test"}

payloads = st.lists(
    st.tuples(
        st.sampled_from([fmt.OUTPUT, fmt.STDERR, fmt.INPUT]),
        st.binary(min_size=1, max_size=70_000),
    ),
    max_size=12,
)


def _record(path: Path, frames: list[tuple[bytes, bytes]], executor: Any) -> tuple[str, int]:
    clock = FixedClock(START)
    recorder = Recorder(path, clock, HEADER, executor)
    for kind, payload in frames:
        clock.advance(timedelta(milliseconds=5))
        if kind == fmt.INPUT:
            recorder.input(payload)
        else:
            recorder.output(payload, stderr=kind == fmt.STDERR)
    return recorder.close({"reason": "exit"})


def _check(path: Path, frames: list[tuple[bytes, bytes]], digest: str, size: int) -> None:
    data = path.read_bytes()
    parsed = fmt.parse(data)
    assert parsed.complete
    kinds = [(f.kind, f.payload) for f in parsed.frames]
    assert kinds[0][0] == fmt.HEADER and kinds[-1][0] == fmt.END
    assert kinds[1:-1] == frames
    assert size == len(data)
    assert digest == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "writer-thread"])
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frames=payloads, step=st.integers(min_value=1, max_value=5000))
def test_short_writes_keep_every_frame_whole_and_in_order(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    threaded: bool,
    frames: list[tuple[bytes, bytes]],
    step: int,
) -> None:
    real_writev = os.writev
    calls = 0

    def short_writev(fd: int, buffers: list[Any]) -> int:
        nonlocal calls
        calls += 1
        assert len(buffers) <= 1024  # IOV_MAX
        first = bytes(memoryview(buffers[0]))[:step]
        return real_writev(fd, [first])

    monkeypatch.setattr(writer.os, "writev", short_writev)
    path = tmp_path / f"rec-{os.urandom(4).hex()}.bastrec"
    if threaded:
        with ThreadPoolExecutor(1) as pool:
            digest, size = _record(path, frames, pool)
    else:
        digest, size = _record(path, frames, None)
    _check(path, frames, digest, size)
    assert calls >= 2


def test_a_payload_changed_after_it_was_recorded_is_kept_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "rec.bastrec"
    clock = FixedClock(START)
    recorder = Recorder(path, clock, HEADER)
    data = bytearray(b"before")
    recorder.output(data)  # type: ignore[arg-type]  # the relay passes bytes; be safe anyway
    data[:] = b"AFTER!"
    digest, size = recorder.close({"reason": "exit"})
    _check(path, [(fmt.OUTPUT, b"before")], digest, size)


def test_many_small_frames_are_written_in_batches_of_at_most_iov_max(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_writev = os.writev
    sizes: list[int] = []

    def counting_writev(fd: int, buffers: list[Any]) -> int:
        sizes.append(len(buffers))
        return real_writev(fd, buffers)

    monkeypatch.setattr(writer.os, "writev", counting_writev)
    frames = [(fmt.OUTPUT, bytes([65 + i % 26]) * 200) for i in range(3000)]
    path = tmp_path / "rec.bastrec"
    digest, size = _record(path, frames, None)
    _check(path, frames, digest, size)
    assert max(sizes) <= 1024
    assert len(sizes) < 100  # batched, not one call per frame


def test_a_full_disk_fails_the_recording_and_keeps_what_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rec.bastrec"
    clock = FixedClock(START)
    recorder = Recorder(path, clock, HEADER)
    recorder.output(b"x" * 1000)
    recorder.flush()

    def full(fd: int, buffers: list[Any]) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer.os, "writev", full)
    recorder.output(b"y" * 1000)
    with pytest.raises(RecordingFailed, match="No space left on device"):
        recorder.flush()
    with pytest.raises(RecordingFailed):
        recorder.close({"reason": "exit"})
    parsed = fmt.parse(path.read_bytes())
    assert [f.payload for f in parsed.frames[1:]] == [b"x" * 1000]


# -- the query log's entries ------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8"), max_size=40)


@given(
    sql=_text,
    params=st.none() | st.lists(st.none() | _text, max_size=4),
    duration=st.floats(min_value=0, max_value=1e9, allow_nan=False),
    rows=st.integers(min_value=0, max_value=2**63),
    tags=st.lists(_text, max_size=3),
    error=st.none() | _text,
    verdict=_text,
)
def test_a_query_entry_is_the_json_object_json_dumps_makes(
    sql: str,
    params: list[str | None] | None,
    duration: float,
    rows: int,
    tags: list[str],
    error: str | None,
    verdict: str,
) -> None:
    fields = {
        "sql": sql,
        "params": params,
        "duration_ms": duration,
        "rows": rows,
        "tags": tags,
        "error": error,
        "verdict": verdict,
    }
    line = fmt.query_entry(sql, params, duration, rows, tags, error, verdict)
    assert line == json.dumps(fields, separators=(",", ":")).encode()
    assert json.loads(line) == fields


def test_a_query_entry_escapes_what_would_break_the_json() -> None:
    line = fmt.query_entry("SELECT '\"\\\n\x00é\U0001f600", ["\x1b[31m"], 1.5, 1, ["X"], None, "ok")
    assert line.isascii()
    assert json.loads(line)["sql"] == "SELECT '\"\\\n\x00é\U0001f600"
    assert json.loads(line)["params"] == ["\x1b[31m"]
