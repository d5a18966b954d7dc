"""The messages a server sends (the backend stream), as frozen dataclasses.

Row data is decoded lazily: DataRow and RowDescription keep their body and split it only
when asked (`values()`, `fields()`), because a relay forwards rows without looking at
them. Authentication requests ('R') are in `_auth`; CopyData/CopyDone in `_messages`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Self

from bastion.pgwire._codec import UINT16, Reader, cstring
from bastion.pgwire._codec import value as encode_value
from bastion.pgwire._errors import UsageError
from bastion.pgwire._messages import BackendMessage

_FIELD = struct.Struct("!IhIhih")
_ROW_COUNT_COMMANDS = frozenset(
    ["INSERT", "DELETE", "UPDATE", "MERGE", "SELECT", "MOVE", "FETCH", "COPY"]
)


@dataclass(frozen=True, slots=True)
class ParameterStatus(BackendMessage):
    """'S': the current value of a run-time parameter (server_version, TimeZone, ...)."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class BackendKeyData(BackendMessage):
    """'K': what a CancelRequest for this session must quote."""

    pid: int
    key: bytes  # 4 bytes in protocol 3.0, up to 256 in 3.2


@dataclass(frozen=True, slots=True)
class ReadyForQuery(BackendMessage):
    """'Z': idle ('I'), in a transaction ('T') or in a failed transaction ('E')."""

    status: Literal["I", "T", "E"]


class FieldDescription(NamedTuple):
    """One column of a RowDescription."""

    name: str
    table_oid: int = 0
    column: int = 0
    type_oid: int = 25  # text
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0  # 0 text, 1 binary


@dataclass(frozen=True, slots=True)
class RowDescription(BackendMessage):
    """'T': the columns of the rows to come; `fields()` decodes them."""

    body: bytes

    @property
    def field_count(self) -> int:
        return Reader(self.body, 0, "RowDescription").uint16()

    def fields(self) -> tuple[FieldDescription, ...]:
        reader = Reader(self.body, 0, "RowDescription")
        found = []
        for _ in range(reader.uint16()):
            name = reader.cstring()
            found.append(FieldDescription(name, *_FIELD.unpack(reader.take(_FIELD.size))))
        reader.end()
        return tuple(found)

    @classmethod
    def from_fields(cls, fields: tuple[FieldDescription, ...]) -> Self:
        parts = [UINT16.pack(len(fields))]
        for f in fields:
            try:
                parts += (cstring(f.name), _FIELD.pack(*f[1:]))
            except struct.error as exc:
                raise UsageError(f"cannot encode field {f.name!r}: {exc}") from None
        return cls(b"".join(parts))


@dataclass(frozen=True, slots=True)
class DataRow(BackendMessage):
    """'D': one row; `values()` splits it into column values (None is NULL)."""

    body: bytes

    @property
    def column_count(self) -> int:
        return Reader(self.body, 0, "DataRow").uint16()

    def values(self) -> tuple[bytes | None, ...]:
        reader = Reader(self.body, 0, "DataRow")
        values = tuple(reader.value() for _ in range(reader.uint16()))
        reader.end()
        return values

    @classmethod
    def from_values(cls, values: tuple[bytes | None, ...]) -> Self:
        return cls(b"".join([UINT16.pack(len(values)), *map(encode_value, values)]))


@dataclass(frozen=True, slots=True)
class CommandComplete(BackendMessage):
    """'C': a statement finished; `tag` is e.g. "SELECT 3", "INSERT 0 1", "CREATE TABLE"."""

    tag: str

    @property
    def rows(self) -> int | None:
        """The row count the tag reports (INSERT/UPDATE/DELETE/MERGE/SELECT/COPY/...)."""
        return tag_rows(self.tag)


def tag_rows(tag: str) -> int | None:
    """The row count a command tag reports ("SELECT 3" -> 3, "CREATE TABLE" -> None)."""
    words = tag.split()
    if len(words) >= 2 and words[0] in _ROW_COUNT_COMMANDS and words[-1].isdigit():
        return int(words[-1])
    return None


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(BackendMessage):
    """'I': the query string was empty."""


@dataclass(frozen=True, slots=True)
class Diagnostic(BackendMessage):
    """The shared shape of ErrorResponse and NoticeResponse."""

    fields: dict[str, str] = field(hash=False)  # by code letter: S V C M D H P W ...

    @property
    def severity(self) -> str:
        return self.fields.get("V") or self.fields.get("S", "")

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @classmethod
    def build(
        cls,
        severity: str,
        sqlstate: str,
        message: str,
        *,
        detail: str | None = None,
        hint: str | None = None,
    ) -> Self:
        fields = {"S": severity, "V": severity, "C": sqlstate, "M": message}
        if detail is not None:
            fields["D"] = detail
        if hint is not None:
            fields["H"] = hint
        return cls(fields)


@dataclass(frozen=True, slots=True)
class ErrorResponse(Diagnostic):
    """'E': an error; `fields` by code letter (S severity, C SQLSTATE, M message, ...)."""


@dataclass(frozen=True, slots=True)
class NoticeResponse(Diagnostic):
    """'N': a notice or warning, same fields as ErrorResponse."""


@dataclass(frozen=True, slots=True)
class ParseComplete(BackendMessage):
    """'1'"""


@dataclass(frozen=True, slots=True)
class BindComplete(BackendMessage):
    """'2'"""


@dataclass(frozen=True, slots=True)
class CloseComplete(BackendMessage):
    """'3'"""


@dataclass(frozen=True, slots=True)
class NoData(BackendMessage):
    """'n': the statement or portal returns no rows."""


@dataclass(frozen=True, slots=True)
class PortalSuspended(BackendMessage):
    """'s': Execute stopped at max_rows."""


@dataclass(frozen=True, slots=True)
class ParameterDescription(BackendMessage):
    """'t': the parameter type OIDs of a described statement."""

    type_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyResponse(BackendMessage):
    """The shared shape of CopyIn/CopyOut/CopyBothResponse."""

    format: int  # 0 text, 1 binary
    column_formats: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class CopyInResponse(CopyResponse):
    """'G': the server awaits COPY data from the client."""


@dataclass(frozen=True, slots=True)
class CopyOutResponse(CopyResponse):
    """'H': COPY data follows from the server."""


@dataclass(frozen=True, slots=True)
class CopyBothResponse(CopyResponse):
    """'W': COPY data flows both ways (replication)."""


@dataclass(frozen=True, slots=True)
class NotificationResponse(BackendMessage):
    """'A': a NOTIFY on a channel this session LISTENs to."""

    pid: int
    channel: str
    payload: str = ""


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion(BackendMessage):
    """'v': the newest minor version the server supports, and the options it ignored."""

    newest_minor: int
    unrecognized: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FunctionCallResponse(BackendMessage):
    """'V': the result of a FunctionCall (None is NULL)."""

    value: bytes | None


@dataclass(frozen=True, slots=True)
class Unknown(BackendMessage):
    """A message type this library does not know; forward `raw` as it is."""

    type: bytes
    body: bytes
