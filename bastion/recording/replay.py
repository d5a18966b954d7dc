"""Reading a recording back: its metadata, duration and frames, streamed from the file.

A recording is opened with `mmap`, so reading a 1 GB file costs page cache, not heap:
frames are produced one at a time and nothing here keeps a list of them. A recording cut
short (a crash, a full disk) reads up to its last whole frame; a frame that can't be one
(garbage after a crash) ends the reading there, and `RecordingInfo.corrupt_at` says where.

Not here: the terminal emulation (`terminal`, `render`), transcripts (`transcript`) and
file conversion (`export`). This module only knows the frame layout of `format`.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from bastion.recording import format as fmt

DEFAULT_SIZE = (80, 24)
# Sizes come from the agent's pty request: bound them so a hostile size can't make
# rendering allocate without limit.
MAX_COLUMNS = 1000
MAX_ROWS = 500

# The frame header layout is format.py's; the reader walks headers without copying payloads.
_FRAME = fmt._HEADER

RawFrame = tuple[bytes, float, int, int]  # kind, time, payload start, payload end


@dataclass(frozen=True)
class RecordingInfo:
    """What a whole scan of a recording tells: metadata, size, timing, completeness."""

    path: Path
    size: int  # bytes in the file when it was opened
    valid_size: int  # bytes up to the end of the last whole frame
    header: dict[str, Any]
    end: dict[str, Any] | None  # the end frame's JSON, None if the session never closed
    duration: float  # time of the last whole frame
    frames: int
    output_bytes: int  # `o` and `e` payload bytes
    input_bytes: int
    corrupt_at: int | None = None  # offset of bytes that are not a frame, if any

    @property
    def complete(self) -> bool:
        """Closed properly: an end frame, and nothing cut off or corrupt after it."""
        return self.end is not None and self.valid_size == self.size and self.corrupt_at is None

    @property
    def truncated(self) -> bool:
        return self.valid_size < self.size

    @property
    def session_id(self) -> str:
        return str(self.header.get("session") or self.path.stem)

    @property
    def pty(self) -> bool:
        return header_pty(self.header)

    @property
    def term_size(self) -> tuple[int, int]:
        return header_size(self.header)

    @property
    def started_at(self) -> datetime | None:
        return _parse_time(self.header.get("started_at"))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for `--json` output."""
        return {
            "path": str(self.path),
            "session": self.session_id,
            "size": self.size,
            "duration": round(self.duration, 6),
            "frames": self.frames,
            "output_bytes": self.output_bytes,
            "input_bytes": self.input_bytes,
            "complete": self.complete,
            "truncated": self.truncated,
            "corrupt_at": self.corrupt_at,
            "header": self.header,
            "end": self.end,
        }


def header_pty(header: dict[str, Any]) -> bool:
    """Whether output went to a terminal; recordings without the field are treated as PTY."""
    return header.get("pty", True) is not False


def header_size(header: dict[str, Any]) -> tuple[int, int]:
    """(columns, rows) from the header's `term_size`, bounded; 80x24 when absent."""
    size = header.get("term_size")
    if isinstance(size, list | tuple) and len(size) == 2:
        parsed = clamp_size(size[0], size[1])
        if parsed is not None:
            return parsed
    return DEFAULT_SIZE


def clamp_size(columns: object, rows: object) -> tuple[int, int] | None:
    if not isinstance(columns, int) or not isinstance(rows, int) or columns < 1 or rows < 1:
        return None
    return min(columns, MAX_COLUMNS), min(rows, MAX_ROWS)


def parse_resize(payload: bytes) -> tuple[int, int] | None:
    """`COLSxROWS` -> (columns, rows), bounded; None if malformed."""
    cols, sep, rows = payload.partition(b"x")
    if not sep or not cols.isdigit() or not rows.isdigit() or len(cols) + len(rows) > 12:
        return None
    return clamp_size(int(cols), int(rows))


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


@dataclass
class Recording:
    """An open recording. Use as a context manager; `frames()` streams from the file.

    `body_start` is the offset of the first frame after the header frame: the point a
    replay starts from.
    """

    path: Path
    size: int
    header: dict[str, Any]
    body_start: int
    _data: mmap.mmap | bytes = field(repr=False)
    corrupt_at: int | None = None
    mtime_ns: int = 0  # of the file when opened (keys the keyframe index cache)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Recording:
        path = Path(path)
        with open(path, "rb") as file:
            stat = os.fstat(file.fileno())
            size = stat.st_size
            # mmap can't map an empty file.
            data: mmap.mmap | bytes = (
                mmap.mmap(file.fileno(), size, access=mmap.ACCESS_READ) if size else b""
            )
        if size < len(fmt.MAGIC):
            # Created, then killed before the first flush: an empty recording, not garbage.
            if not fmt.MAGIC.startswith(bytes(data[:size])):
                raise fmt.FormatError(f"{path}: not a bastion recording (bad magic)")
            return cls(path, size, {}, size, data, mtime_ns=stat.st_mtime_ns)
        if bytes(data[: len(fmt.MAGIC)]) != fmt.MAGIC:
            if isinstance(data, mmap.mmap):
                data.close()
            raise fmt.FormatError(f"{path}: not a bastion recording (bad magic)")
        recording = cls(path, size, {}, len(fmt.MAGIC), data, mtime_ns=stat.st_mtime_ns)
        for kind, _time, start, end in recording.raw_frames(len(fmt.MAGIC)):
            if kind == fmt.HEADER:
                recording.header = _json_object(bytes(data[start:end])) or {}
                recording.body_start = end
            break
        return recording

    def __enter__(self) -> Recording:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if isinstance(self._data, mmap.mmap):
            # A caller still holding a payload view keeps the map alive until it lets go.
            with contextlib.suppress(BufferError):
                self._data.close()

    @property
    def pty(self) -> bool:
        return header_pty(self.header)

    @property
    def term_size(self) -> tuple[int, int]:
        return header_size(self.header)

    def payload(self, start: int, end: int) -> bytes:
        return self._data[start:end]

    def raw_frames(self, start: int | None = None) -> Iterator[RawFrame]:
        """(kind, time, payload start, payload end) for each whole frame from `start`.

        Stops at a cut-off tail; at bytes that are not a frame it stops and sets
        `corrupt_at`. The cheapest way through a file: no payload is copied.
        """
        data = self._data
        offset = self.body_start if start is None else start
        end = self.size
        unpack = _FRAME.unpack_from
        kinds = fmt.KINDS
        limit = fmt.MAX_PAYLOAD
        header_size_ = fmt.HEADER_SIZE
        while offset + header_size_ <= end:
            kind, time, length = unpack(data, offset)
            if kind not in kinds or length > limit or not time >= 0:  # `not >=` catches NaN
                self.corrupt_at = offset
                return
            body = offset + header_size_
            if body + length > end:
                return
            yield kind, time, body, body + length
            offset = body + length

    def frames(self, start: int | None = None) -> Iterator[fmt.Frame]:
        """Whole frames from `start` (default: the first after the header frame)."""
        data = self._data
        for kind, time, body, stop in self.raw_frames(start):
            yield fmt.Frame(kind, time, data[body:stop], body - fmt.HEADER_SIZE)

    def info(self) -> RecordingInfo:
        """Scan every frame header (payloads are not read) for totals and the end frame."""
        frames = output = typed = 0
        duration = 0.0
        valid = self.body_start
        end_meta: dict[str, Any] | None = None
        for kind, time, body, stop in self.raw_frames():
            frames += 1
            duration = max(duration, time)
            valid = stop
            if kind == fmt.OUTPUT or kind == fmt.STDERR:
                output += stop - body
            elif kind == fmt.INPUT:
                typed += stop - body
            elif kind == fmt.END:
                end_meta = _json_object(self._data[body:stop])
        return RecordingInfo(
            path=self.path,
            size=self.size,
            valid_size=valid,
            header=self.header,
            end=end_meta,
            duration=duration,
            frames=frames,
            output_bytes=output,
            input_bytes=typed,
            corrupt_at=self.corrupt_at,
        )


def open_recording(path: str | os.PathLike[str]) -> Recording:
    """Open for reading; raises `format.FormatError` if the file is not a recording."""
    return Recording.open(path)


def read_info(path: str | os.PathLike[str]) -> RecordingInfo:
    """Metadata, duration and completeness of one recording (one pass over frame headers)."""
    with Recording.open(path) as recording:
        return recording.info()


def iter_frames(path: str | os.PathLike[str]) -> Iterator[fmt.Frame]:
    """Every whole frame after the header, streamed; the file closes when this ends."""
    with Recording.open(path) as recording:
        yield from recording.frames()
