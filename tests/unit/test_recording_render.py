"""screen_at from keyframes against a full replay into stock pyte, and the index cache."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pyte
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.recording import format as fmt
from bastion.recording.indexfile import KeyframeIndex, default_index_path, read_index
from bastion.recording.render import ensure_index, render_at, screen_at
from bastion.recording.replay import iter_frames
from bastion.recording.terminal import display
from tests.unit.recording_synth import (
    Event,
    header,
    reference_screen,
    shell_session,
    write_recording,
)
from tests.unit.test_recording_terminal import PIECES, normalized

SMALL = {"interval_bytes": 64, "interval_seconds": float("inf")}


def rendered(screen: pyte.Screen) -> str:
    return "\n".join(row.rstrip() for row in display(screen))


def assert_matches_full_replay(path: Path, probes: list[float | str]) -> None:
    with ensure_index(path, **SMALL) as index:
        for at in probes:
            terminal, _offset = render_at(path, at, index=index)  # type: ignore[arg-type]
            expected = reference_screen(path, at)
            assert normalized(terminal.screen) == normalized(expected), f"at {at}"
            assert screen_at(path, at, index=index) == rendered(expected)  # type: ignore[arg-type]


def probe_times(path: Path) -> list[float | str]:
    """Every keyframe's time, every frame's time, just before and after each, and the end."""
    with ensure_index(path, **SMALL) as index:
        times = {k.time for k in index.keyframes}
    frame_times = sorted({f.time for f in iter_frames(path)})
    probes: list[float | str] = ["end", -1.0, 0.0, *frame_times[::3]]
    for time in sorted(times):
        probes += [time - 1e-9, time, time + 1e-9]
    return probes


def test_a_shell_session_matches_a_full_replay_at_every_keyframe(tmp_path: Path) -> None:
    events = list(shell_session(40_000, seed=5))
    path = write_recording(tmp_path / "s.rec", events)
    with ensure_index(path, **SMALL) as index:
        assert len(index.keyframes) > 5
        keyframe_times: list[float | str] = [k.time for k in index.keyframes]
    assert_matches_full_replay(path, [*keyframe_times, "end", 0.0, 7.77, 1e9])


frame_kinds = st.sampled_from([fmt.OUTPUT, fmt.OUTPUT, fmt.OUTPUT, fmt.STDERR, fmt.RESIZE])
payloads = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=20).map(lambda p: "".join(p).encode()),
    st.binary(max_size=80),
    st.sampled_from(["é", "日本", "→", "€"]).map(lambda s: s.encode()),  # split below
)


@st.composite
def sessions(draw: st.DrawFn) -> list[Event]:
    events: list[Event] = []
    now = 0.0
    for _ in range(draw(st.integers(1, 25))):
        now += draw(st.sampled_from([0.0, 0.001, 0.5, 2.0]))
        kind = draw(frame_kinds)
        if kind == fmt.RESIZE:
            cols, rows = draw(st.integers(1, 120)), draw(st.integers(1, 40))
            events.append((now, kind, b"%dx%d" % (cols, rows)))
            continue
        payload = draw(payloads)
        cut = draw(st.integers(0, len(payload)))
        # The same stream split mid-sequence over two frames, as SSH packets split it.
        events.append((now, kind, payload[:cut]))
        events.append((now + 0.001, kind, payload[cut:]))
    return [e for e in events if e[2]]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(sessions(), st.sampled_from([(80, 24), (12, 4)]), st.booleans())
def test_screen_at_matches_a_full_replay(
    events: list[Event], size: tuple[int, int], pty: bool
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = write_recording(
            Path(directory) / "s.rec", events, head=header(term_size=list(size), pty=pty)
        )
        assert_matches_full_replay(path, probe_times(path))


def test_utf8_split_across_frames_renders_whole(tmp_path: Path) -> None:
    text = "naïve → 日本語 €".encode()
    events: list[Event] = [(0.1 * i, fmt.OUTPUT, text[i : i + 1]) for i in range(len(text))]
    path = write_recording(tmp_path / "s.rec", events)
    assert screen_at(path, "end").splitlines()[0] == "naïve → 日本語 €"


def test_random_binary_output_does_not_break_rendering(tmp_path: Path) -> None:
    rnd = __import__("random").Random(7)
    events: list[Event] = [
        (i * 0.01, fmt.OUTPUT, bytes(rnd.getrandbits(8) for _ in range(700))) for i in range(300)
    ]
    path = write_recording(tmp_path / "s.rec", events)
    assert_matches_full_replay(path, ["end", 1.0, 1.505, 2.2])


def test_resizes_change_the_screen_size(tmp_path: Path) -> None:
    events: list[Event] = [
        (0.0, fmt.OUTPUT, b"first line\r\n"),
        (1.0, fmt.RESIZE, b"20x5"),
        (2.0, fmt.OUTPUT, b"after resize: a long line that wraps"),
        (3.0, fmt.RESIZE, b"100x10"),
    ]
    path = write_recording(tmp_path / "s.rec", events, head=header(term_size=[40, 3]))
    assert len(screen_at(path, 0.5).split("\n")) == 3
    assert len(screen_at(path, 2.5).split("\n")) == 5
    assert screen_at(path, 2.5).split("\n")[1:3] == ["after resize: a long", " line that wraps"]
    assert len(screen_at(path, "end").split("\n")) == 10
    assert_matches_full_replay(path, [0.5, 1.0, 2.5, "end"])


def test_stderr_is_rendered_and_input_is_not(tmp_path: Path) -> None:
    events: list[Event] = [
        (0.0, fmt.OUTPUT, b"out "),
        (0.1, fmt.INPUT, b"secret typed"),
        (0.2, fmt.STDERR, b"err"),
    ]
    path = write_recording(tmp_path / "s.rec", events)
    assert screen_at(path, "end").splitlines()[0] == "out err"


def test_output_without_a_pty_is_not_a_staircase(tmp_path: Path) -> None:
    events: list[Event] = [(0.0, fmt.OUTPUT, b"one\ntwo\nthree\n")]
    path = write_recording(tmp_path / "s.rec", events, head=header(pty=False, kind="exec"))
    assert screen_at(path, "end").splitlines()[:3] == ["one", "two", "three"]


def test_a_truncated_recording_renders_what_was_written(tmp_path: Path) -> None:
    events = list(shell_session(20_000, seed=2))
    whole = write_recording(tmp_path / "whole.rec", events).read_bytes()
    path = tmp_path / "cut.rec"
    path.write_bytes(whole[: len(whole) * 2 // 3 + 5])  # mid-frame
    assert_matches_full_replay(path, ["end", 5.0, 20.0])


def test_the_index_is_cached_and_rebuilt_when_the_recording_changes(tmp_path: Path) -> None:
    path = write_recording(tmp_path / "s.rec", list(shell_session(20_000, seed=1)))
    with ensure_index(path, **SMALL) as first:
        count = len(first.keyframes)
    index_file = default_index_path(path)
    assert index_file.exists()
    stamp = index_file.stat().st_mtime_ns
    with ensure_index(path, **SMALL) as again:
        assert len(again.keyframes) == count
    assert index_file.stat().st_mtime_ns == stamp  # not rebuilt

    # Same size, different content and mtime: rebuilt from scratch.
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    with ensure_index(path, **SMALL):
        pass
    assert index_file.stat().st_mtime_ns != stamp


def test_a_grown_recording_resumes_from_the_last_keyframe(tmp_path: Path) -> None:
    events = list(shell_session(30_000, seed=4))
    whole = write_recording(tmp_path / "whole.rec", events).read_bytes()
    path = tmp_path / "live.rec"
    path.write_bytes(whole[: len(whole) // 2])  # a live session, half written
    with ensure_index(path, **SMALL) as partial:
        partial_keyframes = partial.keyframes
    with path.open("ab") as file:
        file.write(whole[len(whole) // 2 :])
    with ensure_index(path, **SMALL) as grown:
        assert grown.keyframes[: len(partial_keyframes)] == partial_keyframes
        grown_lines = list(grown.lines())
    fresh_path = tmp_path / "fresh.rec"
    fresh_path.write_bytes(whole)
    with ensure_index(fresh_path, **SMALL) as fresh:
        assert [(k.offset, k.time) for k in fresh.keyframes] == [
            (k.offset, k.time) for k in grown.keyframes
        ]
        assert list(fresh.lines()) == grown_lines
    assert_matches_full_replay(path, ["end", 10.0, 30.0])


def test_a_damaged_index_is_ignored_and_rebuilt(tmp_path: Path) -> None:
    path = write_recording(tmp_path / "s.rec", list(shell_session(5_000, seed=1)))
    with ensure_index(path, **SMALL):
        pass
    index_file = default_index_path(path)
    index_file.write_bytes(index_file.read_bytes()[:-7])
    assert read_index(index_file) is None
    assert screen_at(path, "end") == rendered(reference_screen(path))
    assert read_index(index_file) is not None


def test_an_index_with_an_impossible_snapshot_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_recording(tmp_path / "s.rec", list(shell_session(5_000, seed=1)))
    with ensure_index(path, **SMALL):
        pass
    genuine = KeyframeIndex.snapshot
    calls = []

    def forged(self: KeyframeIndex, number: int) -> dict[str, Any]:
        value = genuine(self, number)
        calls.append(number)
        if len(calls) == 1:
            value["terminal"]["columns"] = 10**9  # would allocate without bound if trusted
        return value

    monkeypatch.setattr(KeyframeIndex, "snapshot", forged)
    assert screen_at(path, 0.0) == rendered(reference_screen(path, 0.0))
    assert len(calls) == 2


def test_an_unwritable_directory_still_renders(tmp_path: Path) -> None:
    path = write_recording(tmp_path / "s.rec", list(shell_session(5_000, seed=1)))
    index_path = tmp_path / "missing-dir" / "s.rec.idx"
    with ensure_index(path, index_path=index_path, **SMALL) as index:
        assert screen_at(path, "end", index=index) == rendered(reference_screen(path))
    assert not index_path.exists()


@pytest.mark.parametrize("at", [-5.0, 0.0])
def test_before_the_first_frame_the_screen_is_blank(tmp_path: Path, at: float) -> None:
    path = write_recording(tmp_path / "s.rec", [(1.0, fmt.OUTPUT, b"hello")])
    assert screen_at(path, at).strip() == ""
