"""Field-level reading and writing shared by the decoders and the encoder.

Text fields (SQL, names, messages) are decoded as UTF-8 with `surrogateescape`: valid
UTF-8 (nearly every session) reads normally, and anything else (a LATIN1 client_encoding)
still decodes without error and encodes back to the very same bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from bastion.pgwire._errors import ProtocolError, UsageError

INT16 = struct.Struct("!h")
UINT16 = struct.Struct("!H")
INT32 = struct.Struct("!i")
UINT32 = struct.Struct("!I")

TEXT_ENCODING = "utf-8"
TEXT_ERRORS = "surrogateescape"


class Reader:
    """Reads a message body left to right; any shortfall or leftover is a ProtocolError."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, pos: int, what: str) -> None:
        self._data = data
        self._pos = pos
        self._what = what

    def _need(self, n: int) -> int:
        pos = self._pos
        if pos + n > len(self._data):
            raise ProtocolError(f"{self._what} message ends early")
        self._pos = pos + n
        return pos

    def byte(self) -> bytes:
        pos = self._need(1)
        return self._data[pos : pos + 1]

    def int16(self) -> int:
        value: int = INT16.unpack_from(self._data, self._need(2))[0]
        return value

    def uint16(self) -> int:
        value: int = UINT16.unpack_from(self._data, self._need(2))[0]
        return value

    def int32(self) -> int:
        value: int = INT32.unpack_from(self._data, self._need(4))[0]
        return value

    def int16s(self, count: int) -> tuple[int, ...]:
        return struct.unpack_from(f"!{count}h", self._data, self._need(2 * count))

    def uint32s(self, count: int) -> tuple[int, ...]:
        return struct.unpack_from(f"!{count}I", self._data, self._need(4 * count))

    def take(self, n: int) -> bytes:
        pos = self._need(n)
        return self._data[pos : pos + n]

    def value(self) -> bytes | None:
        """An int32 length then that many bytes; length -1 is NULL."""
        length = self.int32()
        if length == -1:
            return None
        if length < 0:
            raise ProtocolError(f"{self._what} has an invalid value length {length}")
        return self.take(length)

    def rest(self) -> bytes:
        pos = self._pos
        self._pos = len(self._data)
        return self._data[pos:]

    def cstring(self) -> str:
        end = self._data.find(b"\0", self._pos)
        if end < 0:
            raise ProtocolError(f"{self._what} has an unterminated string")
        text = self._data[self._pos : end].decode(TEXT_ENCODING, TEXT_ERRORS)
        self._pos = end + 1
        return text

    def end(self) -> None:
        extra = len(self._data) - self._pos
        if extra:
            raise ProtocolError(f"{self._what} message has {extra} unexpected trailing bytes")


def cstring(text: str) -> bytes:
    data = text.encode(TEXT_ENCODING, TEXT_ERRORS)
    if b"\0" in data:
        raise UsageError(f"a NUL byte cannot be sent inside a string: {text[:40]!r}")
    return data + b"\0"


def value(data: bytes | None) -> bytes:
    return INT32.pack(-1) if data is None else INT32.pack(len(data)) + data


def int16s(values: Iterable[int]) -> bytes:
    items = tuple(values)
    return UINT16.pack(len(items)) + struct.pack(f"!{len(items)}h", *items)


def frame(kind: bytes, *parts: bytes) -> bytes:
    """A typed message: type byte, int32 length (counting itself), body."""
    size = 4 + sum(len(part) for part in parts)
    if size > 0x7FFFFFFF:
        raise UsageError(f"a message of {size} bytes does not fit the protocol's int32 length")
    return b"".join((kind, INT32.pack(size), *parts))
