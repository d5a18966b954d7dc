"""The recording file format: a magic line, then length-prefixed frames. Pure codec.

Why not asciicast on the hot path: JSON-encoding every output chunk cost 50-80 % of relay
throughput in measurements (NUL bytes become six characters each); appending raw bytes
behind a 13-byte header costs a few percent. asciicast v2/v3 is produced on export.

    file   := MAGIC frame*
    frame  := kind:1 byte | time:float64 LE (seconds since the start, monotonic) |
              length:uint32 LE | payload:length bytes

Kinds: `H` header (JSON metadata, first frame), `o` output (stdout bytes), `e` stderr
bytes, `i` input (the agent's keystrokes or stdin), `r` resize (`COLSxROWS`), `m` marker
(UTF-8 label of a bastion event), `q` one statement of a PostgreSQL session's query log
(JSON: sql, params, start, duration, rows, error, verdict), `E` end (JSON metadata, last
frame). A file cut short
(crash, full disk) parses up to its last whole frame.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

MAGIC = b"BASTREC\x01"
_HEADER = struct.Struct("<cdI")
HEADER_SIZE = _HEADER.size
MAX_PAYLOAD = 1 << 20

HEADER = b"H"
OUTPUT = b"o"
STDERR = b"e"
INPUT = b"i"
RESIZE = b"r"
MARKER = b"m"
END = b"E"
QUERY = b"q"
KINDS = frozenset({HEADER, OUTPUT, STDERR, INPUT, RESIZE, MARKER, END, QUERY})


class FormatError(ValueError):
    """Not a bastion recording, or a frame that can't be one."""


@dataclass(frozen=True)
class Frame:
    kind: bytes
    time: float
    payload: bytes
    offset: int  # of the frame header in the file

    def json(self) -> dict[str, Any]:
        value = json.loads(self.payload)
        if not isinstance(value, dict):
            raise FormatError(f"frame at {self.offset}: metadata is not an object")
        return value


def frame_header(kind: bytes, time: float, length: int) -> bytes:
    """The 13 bytes before a payload of `length` bytes (the writer appends the payload)."""
    return _HEADER.pack(kind, time, length)


def encode(kind: bytes, time: float, payload: bytes) -> bytes:
    """One frame; payloads over MAX_PAYLOAD must be split by the caller."""
    return _HEADER.pack(kind, time, len(payload)) + payload


def encode_json(kind: bytes, time: float, value: Mapping[str, Any]) -> bytes:
    return encode(kind, time, json.dumps(value, sort_keys=True).encode())


@dataclass(frozen=True)
class Parsed:
    frames: list[Frame]
    complete: bool  # the last frame ends exactly at the end of the data
    valid_size: int  # bytes up to the end of the last whole frame


def iter_frames(data: bytes | memoryview, start: int = len(MAGIC)) -> Iterator[Frame]:
    """Whole frames from `start`; stops silently at a cut-off tail (see `parse`)."""
    view = memoryview(data)
    if start == len(MAGIC) and bytes(view[: len(MAGIC)]) != MAGIC:
        raise FormatError("not a bastion recording (bad magic)")
    offset = start
    end = len(view)
    while offset + HEADER_SIZE <= end:
        kind, time, length = _HEADER.unpack_from(view, offset)
        if kind not in KINDS or length > MAX_PAYLOAD or time != time or time < 0:
            raise FormatError(f"corrupt frame at byte {offset}")
        body = offset + HEADER_SIZE
        if body + length > end:
            return
        yield Frame(kind, time, bytes(view[body : body + length]), offset)
        offset = body + length


def parse(data: bytes | memoryview) -> Parsed:
    frames = list(iter_frames(data))
    valid = frames[-1].offset + HEADER_SIZE + len(frames[-1].payload) if frames else len(MAGIC)
    return Parsed(frames=frames, complete=valid == len(data), valid_size=valid)
