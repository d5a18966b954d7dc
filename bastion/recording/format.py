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
import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

_json_str = encode_basestring_ascii  # the escaping json.dumps uses (C)

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


def query_entry(
    sql: str,
    params: Sequence[str | None] | None,
    duration_ms: float,
    rows: int,
    tags: Sequence[str],
    error: str | None,
    verdict: str,
) -> bytes:
    """A `q` frame's payload: the JSON object `json.dumps` would make of these fields.

    Written once per statement on the relay's hot path, where building a dict and calling
    `json.dumps` cost about three times as much (`pgbench -S` logs 10,000 statements a
    second). Strings go through the json module's own escaping.
    """
    p = "null" if params is None else "[" + ",".join(map(_json_or_null, params)) + "]"
    e = "null" if error is None else _json_str(error)
    d = repr(float(duration_ms)) if math.isfinite(duration_ms) else json.dumps(duration_ms)
    return (
        f'{{"sql":{_json_str(sql)},"params":{p},"duration_ms":{d},'
        f'"rows":{int(rows)},"tags":[{",".join(map(_json_str, tags))}],"error":{e},'
        f'"verdict":{_json_str(verdict)}}}'
    ).encode()


def _json_or_null(value: str | None) -> str:
    return "null" if value is None else _json_str(value)


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
