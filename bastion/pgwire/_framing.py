"""Cutting a byte stream into PostgreSQL messages ("frames"), without decoding them.

This module owns the receive buffer, the size limits and the frame boundaries; it knows
nothing about what a message means (that is `_decode`, and the states are `_parsers`').

    typed frame   := type:1 byte | length:int32 (counts itself, not the type byte) | body
    startup frame := length:int32 (counts itself) | code:int32 | body   (before StartupMessage)

The buffer is a queue of the `bytes` objects handed to `receive_data`, read at an offset,
never a growing bytearray: received chunks are kept as they are (no copy on receive), a
frame that lies inside one chunk is a single slice of it, and only a frame that straddles
chunks is joined, once, when all of it has arrived. While a large message arrives, each
`receive_data` is O(1), so a 1 GiB DataRow fed 64 KiB at a time costs one join, not
sixteen thousand. Reads under 1 KiB that arrive while a message is incomplete are
gathered in a bytearray first (`_tail`), so a peer trickling a large message byte by byte
costs no more than a few copies of it, not a Python object per byte.

Bounded buffering: once a frame's header is in, its length is checked against the limit
before its body is awaited. So when `next_frame()` returns `NEED_DATA`, fewer than
`1 + max_message_size` bytes are buffered; a caller that drains to `NEED_DATA` before each
read never holds more than one maximum-size message plus one read (plus the already
consumed front of the chunk being read, which the chunk object keeps alive, and while a
straddling message is joined, its pieces).
"""

from __future__ import annotations

import enum
import struct
from collections import deque
from typing import Final, Literal, TypeAlias

from bastion.pgwire._errors import ProtocolError, UsageError

PROTOCOL_3_0: Final = 196608  # 3 << 16
SSL_REQUEST_CODE: Final = 80877103  # 1234 << 16 | 5679
GSSENC_REQUEST_CODE: Final = 80877104  # 1234 << 16 | 5680
CANCEL_REQUEST_CODE: Final = 80877102  # 1234 << 16 | 5678

DEFAULT_MAX_MESSAGE_SIZE: Final = 1 << 30  # PostgreSQL's own ceiling (MaxAllocSize)
DEFAULT_MAX_STARTUP_SIZE: Final = 10000  # PostgreSQL's MAX_STARTUP_PACKET_LENGTH

ENCRYPTION_REFUSED: Final = b"N"
"""The whole answer to an SSLRequest or GSSENCRequest that is declined: one byte, no frame."""

_TYPED_HEADER = struct.Struct("!ci")
_INT32 = struct.Struct("!i")
_unpack_header = _TYPED_HEADER.unpack_from
_SMALL_READ = 1024  # smaller reads are gathered in _tail ...
_TAIL_LIMIT = 65536  # ... up to this size, then become one chunk


class Signal(enum.Enum):
    """What `next_frame()`/`next_event()` return when there is no message to give."""

    NEED_DATA = "NEED_DATA"  # feed more bytes with receive_data()
    CLOSED = "CLOSED"  # end of stream (receive_data(b"")) and nothing left over

    def __repr__(self) -> str:
        return self.value


NEED_DATA: Final = Signal.NEED_DATA
CLOSED: Final = Signal.CLOSED


Frame: TypeAlias = tuple[bytes, bytes]
"""One whole message as received: `(type, raw)`, a plain tuple because it is the fast path.

`type` is one byte (`b"Q"`, `b"D"`, ...), or `b""` for the untyped packets of the startup
phase. `raw` is the exact message, type byte and length included: forward it as it is.
(A NamedTuple would read nicer and cost 0.3 µs more per frame, about half the budget.)
"""


def check_frame(frame: Frame) -> None:
    """Refuse a frame whose header disagrees with itself (one not made by a parser)."""
    kind, raw = frame
    start = 1 if kind else 0
    if (
        len(kind) > 1
        or len(raw) < start + 4
        or raw[:start] != kind
        or _INT32.unpack_from(raw, start)[0] != len(raw) - start
    ):
        raise UsageError(f"not a whole frame: type {kind!r}, {len(raw)} raw bytes")


_ALL_TYPES: Final = frozenset(bytes([i]) for i in range(256))
_NONE: Final[frozenset[bytes]] = frozenset()


class FrameReader:
    """The receive buffer and frame splitter shared by both parsers.

    `_accept` holds the type bytes that are valid at all; `_fast` those that may take the
    fast path in `next_frame`, i.e. need no check and cause no state change. Everything
    else (the startup phase, errors, end of stream, a frame that straddles chunks) goes
    through `_next_frame_slow`, which calls the `_check` hook.
    """

    __slots__ = (
        "_accept",
        "_chunk",
        "_eof",
        "_error",
        "_fast",
        "_fast_typed",
        "_finished",
        "_max_message_size",
        "_max_startup_size",
        "_more",
        "_more_len",
        "_pos",
        "_run_fast",
        "_run_types",
        "_tail",
        "_typed",
    )

    def __init__(
        self,
        *,
        accept: frozenset[bytes] = _ALL_TYPES,
        fast: frozenset[bytes] = _ALL_TYPES,
        typed: bool = True,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_startup_size: int = DEFAULT_MAX_STARTUP_SIZE,
    ) -> None:
        if max_message_size < 4:
            raise UsageError(f"max_message_size must be at least 4, not {max_message_size}")
        if max_startup_size < 8:
            raise UsageError(f"max_startup_size must be at least 8, not {max_startup_size}")
        self._chunk = b""  # the chunk being read
        self._pos = 0  # read offset in _chunk
        self._more: deque[bytes] = deque()  # chunks received after _chunk
        self._more_len = 0
        self._tail = bytearray()  # small reads after _more, not yet a chunk
        self._eof = False
        self._error: str | None = None
        self._finished: str | None = None  # the message after which the peer must stop
        self._accept = accept
        self._fast_typed = fast
        self._typed = typed
        self._fast = fast if typed else _NONE
        self._run_types: dict[frozenset[bytes], frozenset[bytes]] = {}  # types & _fast
        self._run_fast = self._fast  # what _run_types was computed for
        self._max_message_size = max_message_size
        self._max_startup_size = max_startup_size

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned in a frame."""
        return len(self._chunk) - self._pos + self._more_len + len(self._tail)

    @property
    def max_message_size(self) -> int:
        """The largest length field accepted for a typed message (the length counts itself)."""
        return self._max_message_size

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes; `b""` means the peer closed its side (end of stream)."""
        if self._error is not None:
            raise UsageError("receive_data() after a ProtocolError: the parser has stopped")
        if self._eof:
            raise UsageError("receive_data() after the end of the stream (receive_data(b''))")
        if not data:
            self._eof = True
            return
        if self._pos >= len(self._chunk) and not self._more and not self._tail:
            # bytes are kept without copying; anything mutable is copied once
            self._chunk = data if type(data) is bytes else bytes(data)
            self._pos = 0
        elif len(data) < _SMALL_READ:
            self._tail += data
            if len(self._tail) >= _TAIL_LIMIT:
                self._flush_tail()
        else:
            self._flush_tail()
            self._more.append(data if type(data) is bytes else bytes(data))
            self._more_len += len(data)

    def lone_frame(self, data: bytes) -> Frame | None:
        """`data` as a frame, when it is exactly one whole message that `next_frame()` would
        return from its fast path and nothing is buffered: a relay's usual read (one Query),
        taken without buffering it. None otherwise: then `receive_data(data)` as usual.

        The parser's state is unchanged either way; its limits and accepted types apply.
        """
        if (
            len(data) >= 5
            and type(data) is bytes
            and self._pos >= len(self._chunk)
            and not (self._more or self._tail or self._eof)
        ):
            kind, length = _unpack_header(data, 0)
            if length + 1 == len(data) and length <= self._max_message_size and kind in self._fast:
                return kind, data
        return None

    def next_frame(self) -> Frame | Signal:
        """The next whole message as a `(type, raw)` frame, undecoded; or NEED_DATA, or CLOSED.

        Raises ProtocolError for a bad length, an oversized message, an unknown frontend
        type or bytes after the end of the conversation; the parser stays stopped after.
        """
        chunk = self._chunk
        pos = self._pos
        size = len(chunk)
        if size - pos >= 5:
            kind, length = _unpack_header(chunk, pos)
            end = pos + 1 + length
            if end <= size and 4 <= length <= self._max_message_size and kind in self._fast:
                self._pos = end
                return kind, chunk[pos:end]
        elif pos == size and self._fast and not (self._more or self._tail or self._eof):
            # All read, as after every answer a relay passes on: nothing can be wrong yet.
            # (`_fast` is empty once stopped or finished; at EOF the slow path says CLOSED.)
            return NEED_DATA
        return self._next_frame_slow()

    def next_run(self, types: frozenset[bytes]) -> bytes:
        """The raw bytes of consecutive whole messages whose types are all in `types`.

        For a relay that forwards row data unread: one slice for a run of DataRow or
        CopyData frames, with no per-frame object. Returns b"" when the next frame is of
        another type, is not all in one received chunk, or needs checking: then call
        `next_frame()`, which handles every case. Never skips a frame `next_frame()`
        would have refused.
        """
        if self._pos >= len(self._chunk):  # move on to the next chunk
            if not self._more:
                self._flush_tail()
            if self._more:
                self._chunk, self._pos = self._more.popleft(), 0
                self._more_len -= len(self._chunk)
        chunk = self._chunk
        start = pos = self._pos
        size = len(chunk)
        limit = self._max_message_size
        allowed = self._run_types.get(types)
        if allowed is None or self._run_fast is not self._fast:
            self._run_types, self._run_fast = {}, self._fast
            allowed = self._run_types[types] = types & self._fast
        while size - pos >= 5:
            kind, length = _unpack_header(chunk, pos)
            end = pos + 1 + length
            if end > size or length < 4 or length > limit or kind not in allowed:
                break
            pos = end
        if pos == start:
            return b""
        self._pos = pos
        return chunk[start:pos]

    def _next_frame_slow(self) -> Frame | Signal:
        if self._error is not None:
            raise ProtocolError(f"the parser stopped after an earlier error: {self._error}")
        try:
            return self._read_frame()
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: ProtocolError) -> None:
        self._error = str(exc)
        self._fast = _NONE
        self._chunk, self._pos = b"", 0
        self._more.clear()
        self._more_len = 0
        self._tail = bytearray()

    def _read_frame(self) -> Frame | Signal:
        available = self.buffered
        if self._finished is not None and available:
            raise ProtocolError(f"{available} bytes received after {self._finished}")
        header_size = 5 if self._typed else 4
        if available < header_size:
            return self._short(available)
        header = self._peek(header_size)
        if self._typed:
            kind, length = _TYPED_HEADER.unpack(header)
            if kind not in self._accept:
                raise ProtocolError(f"unknown message type {kind!r}")
            what, minimum, limit, size = f"message {kind!r}", 4, self._max_message_size, length + 1
        else:
            kind, (length,) = b"", _INT32.unpack(header)
            what, minimum, limit, size = "startup packet", 8, self._max_startup_size, length
        if length < minimum:
            raise ProtocolError(f"{what} has an invalid length {length}")
        if length > limit:
            raise ProtocolError(f"{what} of {length} bytes exceeds the limit of {limit} bytes")
        if available < size:
            return self._short(available)
        frame = (kind, self._take(size))
        self._check(frame)
        return frame

    def _check(self, frame: Frame) -> None:
        """Hook: validate a frame from the slow path and make any state change it causes."""

    def _short(self, available: int) -> Literal[Signal.NEED_DATA, Signal.CLOSED]:
        if not self._eof:
            return NEED_DATA
        if available:
            raise ProtocolError(f"stream ended inside a message ({available} bytes left over)")
        return CLOSED

    def _start_messages(self) -> None:
        self._typed = True
        self._fast = self._fast_typed

    def _finish(self, after: str) -> None:
        self._finished = after
        self._fast = _NONE

    def _peek(self, n: int) -> bytes:
        chunk, pos = self._chunk, self._pos
        if len(chunk) - pos >= n:
            return chunk[pos : pos + n]
        parts = [chunk[pos:]]
        got = len(parts[0])
        for more in (*self._more, self._tail):
            parts.append(bytes(more[: n - got]))
            got += len(parts[-1])
            if got >= n:
                break
        return b"".join(parts)

    def _flush_tail(self) -> None:
        if self._tail:
            self._more.append(bytes(self._tail))
            self._more_len += len(self._tail)
            self._tail.clear()

    def _take(self, size: int) -> bytes:
        """Consume `size` bytes (the caller made sure they are buffered)."""
        if size > len(self._chunk) - self._pos + self._more_len:
            self._flush_tail()
        chunk, pos, more = self._chunk, self._pos, self._more
        if pos >= len(chunk) and more:
            chunk, pos = more.popleft(), 0
            self._more_len -= len(chunk)
        end = pos + size
        if end <= len(chunk):
            self._chunk, self._pos = chunk, end
            return chunk[pos:end]
        pieces: list[bytes | memoryview] = [memoryview(chunk)[pos:]]
        need = end - len(chunk)
        while True:
            chunk = more.popleft()
            self._more_len -= len(chunk)
            if len(chunk) >= need:
                pieces.append(memoryview(chunk)[:need])
                self._chunk, self._pos = chunk, need
                return b"".join(pieces)
            pieces.append(chunk)
            need -= len(chunk)
