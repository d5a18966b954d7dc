"""The message base classes, and the messages both sides send (CopyData, CopyDone).

Every message is a frozen dataclass. `raw` holds the exact bytes it was decoded from, so a
relay can forward a message it has inspected without re-encoding it; a message built in
code has `raw == b""`. `raw` takes no part in equality, so a decoded message equals the
one that was encoded. `encode()` always encodes from the fields and never trusts `raw`
(a `dataclasses.replace()` copy keeps the old `raw`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Message:
    raw: bytes = field(default=b"", kw_only=True, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class FrontendMessage(Message):
    """A message a client sends to the server."""


@dataclass(frozen=True, slots=True)
class BackendMessage(Message):
    """A message the server sends to a client."""


@dataclass(frozen=True, slots=True)
class CopyData(FrontendMessage, BackendMessage):
    """'d': a chunk of COPY data (in either direction; one row per message on COPY OUT)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CopyDone(FrontendMessage, BackendMessage):
    """'c': the end of the COPY data."""
