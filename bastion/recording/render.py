"""The screen at any moment of a recording, through a keyframe index cached next to it.

pyte renders at about 1-2 MB/s here (with `terminal`'s fast paths), so a screen deep into
a 100 MB recording can't be replayed from the start on demand. One pass over the
recording (`ensure_index`) takes a keyframe (a `terminal` snapshot) every
`interval_bytes` of output or `interval_seconds` of CPU spent replaying, whichever comes
first (the time rule keeps the seek cost bounded for output that renders slowly), but only
at a frame end where the parser is between escape sequences and no UTF-8 sequence is
half-read; `screen_at` then restores the nearest keyframe at or before the asked time and
replays at most about one interval. Output that never returns to the parser's ground
state (an escape sequence left open for megabytes) gets no keyframes until it does.

The same pass produces a PTY session's transcript (`transcript.PtyTranscript`), stored in
the index as one segment per keyframe interval, so `text` and `search` read it back at
file speed instead of re-rendering.

The index (`indexfile`) is cached as `<recording>.idx`, written atomically, keyed by
the recording's size and mtime. When the recording only grew (a live session, or the end
frame written after a crash recovery), the pass resumes from the last keyframe, provided
the bytes just before that keyframe are unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time as timer
import zlib
from bisect import bisect_right
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pyte

from bastion.recording import format as fmt
from bastion.recording.indexfile import (
    INDEX_VERSION,
    IndexWriter,
    Keyframe,
    KeyframeIndex,
    default_index_path,
    read_index,
)
from bastion.recording.replay import Recording
from bastion.recording.terminal import FastScreen, Terminal, display
from bastion.recording.transcript import PtyTranscript, TextLine, TranscriptScreen

DEFAULT_INTERVAL_BYTES = 1 << 20
DEFAULT_INTERVAL_SECONDS = 0.05
_ANCHOR = 4096  # bytes hashed before a keyframe and at the start, to check growth is append

# What reading a damaged or forged index can raise.
_DAMAGED = (ValueError, KeyError, TypeError, IndexError, zlib.error)

At = float | Literal["end"]
Progress = Callable[[int, int], None]  # (bytes read, total bytes)


def _renderer_id() -> str:
    return f"{INDEX_VERSION}/pyte-{getattr(pyte, '__version__', '?')}"


def _digest(recording: Recording, start: int, end: int) -> str:
    return hashlib.sha256(recording.payload(max(0, start), end)).hexdigest()


def ensure_index(
    path: str | os.PathLike[str],
    *,
    index_path: str | os.PathLike[str] | None = None,
    interval_bytes: int = DEFAULT_INTERVAL_BYTES,
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
    progress: Progress | None = None,
    rebuild: bool = False,
) -> KeyframeIndex:
    """The recording's keyframe index: the cached one if current, else (re)built.

    Building takes one rendering pass over the part not yet indexed (about a minute per
    100 MB of output here: pass `progress` to show it). The cache is best effort: if it
    can't be written next to the recording, the index lives in a temporary file until
    closed. The caller closes the returned index (it is a context manager).
    """
    path = Path(path)
    target = Path(index_path) if index_path is not None else default_index_path(path)
    cached = None if rebuild else read_index(target)
    with Recording.open(path) as recording:
        previous = None
        if cached is not None:
            state = _freshness(recording, cached)
            if state == "current":
                return cached
            if state == "grown":
                previous = cached
            else:
                cached.close()
        build = functools.partial(_build, recording, target, interval_bytes, interval_seconds)
        if previous is not None:
            try:
                return build(progress, previous)
            except _DAMAGED:
                pass  # the old index can't be resumed from: start over
            finally:
                previous.close()
        return build(progress, None)


def _freshness(recording: Recording, cached: KeyframeIndex) -> str:
    """Whether `cached` is "current", "grown" (only appended to since) or "stale"."""
    try:
        source = cached.meta["source"]
        if cached.meta.get("renderer") != _renderer_id() or source["pty"] != recording.pty:
            return "stale"
        if (source["size"], source["mtime_ns"]) == (recording.size, recording.mtime_ns):
            return "current"
        last = cached.keyframes[-1]
        grown = (
            recording.size > int(source["size"])
            and source["head"] == _digest(recording, 0, min(_ANCHOR, recording.size))
            and last.anchor == _digest(recording, last.offset - _ANCHOR, last.offset)
        )
    except (*_DAMAGED, AttributeError):
        return "stale"
    return "grown" if grown else "stale"


def _build(
    recording: Recording,
    target: Path,
    interval_bytes: int,
    interval_seconds: float,
    progress: Progress | None,
    previous: KeyframeIndex | None,
) -> KeyframeIndex:
    screen_cls: type[pyte.Screen] = TranscriptScreen if recording.pty else FastScreen
    writer = IndexWriter(target)
    try:
        if previous is not None:
            last = previous.keyframes[-1]
            state = previous.snapshot(len(previous.keyframes) - 1)
            writer.resume(previous)
            terminal = Terminal.restore(state["terminal"], screen_cls)
            start, max_time, output = last.offset, last.time, last.output
        else:
            terminal = Terminal.for_header(recording.header, screen_cls)
            state = {}
            start, max_time, output = recording.body_start, 0.0, 0
        text: PtyTranscript | None = None
        if isinstance(terminal.screen, TranscriptScreen):
            text = PtyTranscript(terminal.screen)
            if state.get("text") is not None:
                text.load_state(state["text"])
        lines: list[TextLine] = []

        def keyframe(offset: int) -> None:
            writer.add_keyframe(
                Keyframe(
                    offset=offset,
                    time=max_time,
                    output=output,
                    anchor=_digest(recording, offset - _ANCHOR, offset),
                ),
                {
                    "terminal": terminal.snapshot(),
                    "text": text.state() if text is not None else None,
                },
            )

        if previous is None:
            keyframe(start)
        since_bytes = 0
        since_time = timer.process_time()
        next_report = 0
        end = start
        for kind, time, body, end in recording.raw_frames(start):
            payload = recording.payload(body, end)
            if text is not None:
                text.begin(time)
            terminal.feed(kind, payload)
            if text is not None:
                lines += text.end(kind, time, payload)
            if time > max_time:
                max_time = time
            if kind == fmt.OUTPUT or kind == fmt.STDERR:
                output += end - body
                since_bytes += end - body
            if (
                since_bytes >= interval_bytes
                or timer.process_time() - since_time >= interval_seconds
            ) and terminal.at_boundary():
                writer.end_segment(lines)
                lines = []
                keyframe(end)
                since_bytes = 0
                since_time = timer.process_time()
            if progress is not None and end >= next_report:
                progress(end, recording.size)
                next_report = end + (1 << 20)
        if text is not None:
            lines += text.finish()
        writer.end_segment(lines)
        if progress is not None:
            progress(recording.size, recording.size)
        source = {
            "size": recording.size,
            "mtime_ns": recording.mtime_ns,
            "head": _digest(recording, 0, min(_ANCHOR, recording.size)),
            "pty": recording.pty,
            "valid_size": max(end, start),
        }
        return writer.finish({"renderer": _renderer_id(), "source": source})
    except BaseException:
        writer.abort()
        raise


def render_at(
    path: str | os.PathLike[str],
    at: At,
    *,
    index: KeyframeIndex | None = None,
) -> tuple[Terminal, int]:
    """The terminal as it was at `at` seconds (frames with time <= at applied) or at the
    end, and the file offset of the first frame not applied."""
    own = index is None
    index = index if index is not None else ensure_index(path)
    try:
        try:
            keyframe, terminal = _nearest(index, at)
        except _DAMAGED:
            # A damaged (or forged) index: build it again rather than trust it.
            if own:
                index.close()
            own = True
            index = ensure_index(path, rebuild=True)
            keyframe, terminal = _nearest(index, at)
    finally:
        if own:
            index.close()
    offset = keyframe.offset
    with Recording.open(path) as recording:
        for kind, time, body, end in recording.raw_frames(keyframe.offset):
            if at != "end" and time > at:
                break
            terminal.feed(kind, recording.payload(body, end))
            offset = end
    return terminal, offset


def _nearest(index: KeyframeIndex, at: At) -> tuple[Keyframe, Terminal]:
    times = [keyframe.time for keyframe in index.keyframes]
    number = len(times) - 1 if at == "end" else max(0, bisect_right(times, at) - 1)
    return index.keyframes[number], Terminal.restore(index.snapshot(number)["terminal"])


def screen_at(path: str | os.PathLike[str], at: At, *, index: KeyframeIndex | None = None) -> str:
    """The screen at `at` seconds into the recording (or `"end"`), one line per row.

    Trailing spaces are stripped from each row; every row is kept, so the text has the
    screen's height.
    """
    terminal, _offset = render_at(path, at, index=index)
    return "\n".join(row.rstrip() for row in display(terminal.screen))
