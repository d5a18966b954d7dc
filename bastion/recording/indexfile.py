"""The keyframe index file: a cache of screen snapshots and transcript segments.

    file    := MAGIC blob* meta trailer
    blob    := zlib-compressed bytes: a keyframe's state as JSON, or a transcript segment
    meta    := JSON: renderer id, the source recording's size/mtime/digests, keyframes,
               segments (positions of their blobs)
    trailer := meta offset: u64 LE | meta length: u32 LE | MAGIC

Blobs are written in order (snapshot 0, segment 0, snapshot 1, segment 1, ..., the tail
segment after the last keyframe), so resuming from the last keyframe keeps the file up
to the end of that keyframe's snapshot. Snapshots are JSON, not pickle: the index sits in
a directory others may write to, and reading it must never run code.

A transcript segment stores its lines' times and kinds as arrays and their texts as one
`\\n`-joined string, so a search runs one regex over a whole segment.

The file is a cache: anything wrong with it (missing, cut, another version) reads as
"no index", and it is rebuilt. Writing goes to a temporary file renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
import tempfile
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from bastion.recording.transcript import INPUT, OUTPUT, TextLine

INDEX_MAGIC = b"BASTIDX1"
INDEX_VERSION = 1
_TRAILER = struct.Struct("<QI8s")
_COUNT = struct.Struct("<I")
_KIND_CODES = {OUTPUT: b"o", INPUT: b"i"}
_KIND_NAMES = {ord("o"): OUTPUT, ord("i"): INPUT}


def default_index_path(recording: Path) -> Path:
    return recording.with_name(recording.name + ".idx")


@dataclass(frozen=True)
class Keyframe:
    offset: int  # file offset of the first frame not yet applied
    time: float  # the latest frame time applied
    output: int  # output bytes applied
    anchor: str  # SHA-256 of the recording's bytes just before `offset`
    snap_pos: int = 0
    snap_len: int = 0


@dataclass(frozen=True)
class Segment:
    """Transcript lines released between two keyframes."""

    times: array[float]
    kinds: bytes
    text: str  # the lines' texts joined by "\n"

    def __len__(self) -> int:
        return len(self.times)

    def lines(self) -> Iterator[TextLine]:
        if not self.times:
            return
        names = _KIND_NAMES
        for seconds, kind, text in zip(self.times, self.kinds, self.text.split("\n"), strict=True):
            yield TextLine(seconds, names[kind], text)


def encode_segment(lines: list[TextLine]) -> bytes:
    times = array("d", [line.seconds for line in lines])
    if sys.byteorder == "big":
        times.byteswap()
    kinds = b"".join(_KIND_CODES[line.kind] for line in lines)
    text = "\n".join(line.text.replace("\n", " ") for line in lines)
    raw = _COUNT.pack(len(lines)) + times.tobytes() + kinds + text.encode("utf-8", "replace")
    return zlib.compress(raw, 1)


def decode_segment(blob: bytes) -> Segment:
    raw = zlib.decompress(blob)
    (count,) = _COUNT.unpack_from(raw)
    start = _COUNT.size
    times = array("d")
    times.frombytes(raw[start : start + 8 * count])
    if sys.byteorder == "big":
        times.byteswap()
    kinds = raw[start + 8 * count : start + 9 * count]
    return Segment(times, kinds, raw[start + 9 * count :].decode("utf-8", "replace"))


class KeyframeIndex:
    """An open index: keyframes in memory, blobs read from the file on demand."""

    def __init__(self, file: IO[bytes], meta: dict[str, Any]) -> None:
        self._file = file
        self.meta = meta
        self.keyframes = [Keyframe(*fields) for fields in meta["keyframes"]]
        self.segment_refs: list[tuple[int, int, int]] = [
            (int(pos), int(length), int(count)) for pos, length, count in meta["segments"]
        ]
        if not self.keyframes or len(self.segment_refs) != len(self.keyframes):
            raise ValueError("index without keyframes")

    def __enter__(self) -> KeyframeIndex:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _blob(self, pos: int, length: int) -> bytes:
        self._file.seek(pos)
        data = self._file.read(length)
        if len(data) != length:
            raise ValueError("index file cut short")
        return data

    def snapshot(self, number: int) -> dict[str, Any]:
        keyframe = self.keyframes[number]
        value = json.loads(zlib.decompress(self._blob(keyframe.snap_pos, keyframe.snap_len)))
        if not isinstance(value, dict):
            raise ValueError("keyframe state is not an object")
        return value

    def segments(self) -> Iterator[Segment]:
        for pos, length, count in self.segment_refs:
            if count:
                yield decode_segment(self._blob(pos, length))

    def lines(self) -> Iterator[TextLine]:
        for segment in self.segments():
            yield from segment.lines()

    @property
    def line_count(self) -> int:
        return sum(count for _pos, _length, count in self.segment_refs)


def read_index(path: Path) -> KeyframeIndex | None:
    """The index at `path`, or None if there is none or it can't be used."""
    try:
        file = open(path, "rb")  # noqa: SIM115 - owned by the returned index
    except OSError:
        return None
    try:
        size = os.fstat(file.fileno()).st_size
        if size < len(INDEX_MAGIC) + _TRAILER.size:
            raise ValueError("too short")
        file.seek(size - _TRAILER.size)
        meta_pos, meta_len, magic = _TRAILER.unpack(file.read(_TRAILER.size))
        file.seek(0)
        if magic != INDEX_MAGIC or file.read(len(INDEX_MAGIC)) != INDEX_MAGIC:
            raise ValueError("bad magic")
        if meta_pos + meta_len + _TRAILER.size != size:
            raise ValueError("bad trailer")
        file.seek(meta_pos)
        meta = json.loads(file.read(meta_len))
        if not isinstance(meta, dict) or meta.get("version") != INDEX_VERSION:
            raise ValueError("other version")
        return KeyframeIndex(file, meta)
    except (ValueError, TypeError, KeyError, OSError, struct.error):
        file.close()
        return None


class IndexWriter:
    """Writes a new index to a temporary file; `finish` renames it into place.

    If the recording's directory isn't writable the index is built in an anonymous
    temporary file instead: usable until closed, never cached.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self._temp: Path | None
        try:
            handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - renamed by finish()
                dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False
            )
            self._temp = Path(handle.name)
            self._file: IO[bytes] = handle
        except OSError:
            self._temp = None
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the index
        self._file.write(INDEX_MAGIC)
        self._pos = len(INDEX_MAGIC)
        self.keyframes: list[Keyframe] = []
        self.segments: list[tuple[int, int, int]] = []

    def _write(self, blob: bytes) -> int:
        pos = self._pos
        self._file.write(blob)
        self._pos += len(blob)
        return pos

    def resume(self, previous: KeyframeIndex) -> None:
        """Start from `previous` up to (and including) its last keyframe."""
        last = previous.keyframes[-1]
        keep = last.snap_pos + last.snap_len
        previous._file.seek(len(INDEX_MAGIC))
        remaining = keep - len(INDEX_MAGIC)
        while remaining > 0:
            chunk = previous._file.read(min(remaining, 1 << 20))
            if not chunk:
                raise ValueError("index file cut short")
            self._file.write(chunk)
            remaining -= len(chunk)
        self._pos = keep
        self.keyframes = list(previous.keyframes)
        self.segments = list(previous.segment_refs[:-1])

    def add_keyframe(self, keyframe: Keyframe, state: dict[str, Any]) -> None:
        blob = zlib.compress(json.dumps(state, separators=(",", ":")).encode(), 6)
        pos = self._write(blob)
        self.keyframes.append(replace(keyframe, snap_pos=pos, snap_len=len(blob)))

    def end_segment(self, lines: list[TextLine]) -> None:
        if not lines:
            self.segments.append((self._pos, 0, 0))
            return
        blob = encode_segment(lines)
        self.segments.append((self._write(blob), len(blob), len(lines)))

    def finish(self, meta: dict[str, Any]) -> KeyframeIndex:
        meta = meta | {
            "version": INDEX_VERSION,
            "keyframes": [
                [k.offset, k.time, k.output, k.anchor, k.snap_pos, k.snap_len]
                for k in self.keyframes
            ],
            "segments": [list(ref) for ref in self.segments],
        }
        encoded = json.dumps(meta, separators=(",", ":")).encode()
        self._file.write(encoded)
        self._file.write(_TRAILER.pack(self._pos, len(encoded), INDEX_MAGIC))
        self._file.flush()
        if self._temp is not None:
            try:
                os.replace(self._temp, self.target)
            except OSError:
                with contextlib.suppress(OSError):
                    self._temp.unlink()
            self._temp = None
        self._file.seek(0)
        return KeyframeIndex(self._file, meta)

    def abort(self) -> None:
        self._file.close()
        if self._temp is not None:
            with contextlib.suppress(OSError):
                self._temp.unlink()
