"""The messages a client sends (the frontend stream), as frozen dataclasses.

The stream opens in the startup phase, where packets have no type byte: any number of
SSLRequest/GSSENCRequest (each answered by a single byte, see ENCRYPTION_REFUSED), then a
StartupMessage; or a CancelRequest on a connection of its own. Then typed messages.
The 'p' messages (password, SASL) are in `_auth`; CopyData/CopyDone in `_messages`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bastion.pgwire._framing import PROTOCOL_3_0
from bastion.pgwire._messages import FrontendMessage

MAX_CANCEL_KEY = 256  # protocol 3.2 allows up to 256 bytes; 3.0 keys are 4 bytes


@dataclass(frozen=True, slots=True)
class SSLRequest(FrontendMessage):
    """Untyped, code 80877103: asks for TLS; the answer is one byte, 'S' or 'N'."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest(FrontendMessage):
    """Untyped, code 80877104: asks for GSSAPI encryption; the answer is 'G' or 'N'."""


@dataclass(frozen=True, slots=True)
class CancelRequest(FrontendMessage):
    """Untyped, code 80877102, on a fresh connection: cancel what backend `pid` runs."""

    pid: int
    key: bytes  # the secret from BackendKeyData: 4 bytes in protocol 3.0


@dataclass(frozen=True, slots=True)
class StartupMessage(FrontendMessage):
    """Untyped, code = protocol version: the session's parameters (user, database, ...)."""

    parameters: dict[str, str] = field(hash=False)
    protocol: int = PROTOCOL_3_0  # major << 16 | minor


@dataclass(frozen=True, slots=True)
class Query(FrontendMessage):
    """'Q': a simple query (one or more statements)."""

    sql: str


@dataclass(frozen=True, slots=True)
class Parse(FrontendMessage):
    """'P': prepare `query` as statement `name` ("" is the unnamed statement)."""

    name: str
    query: str
    param_types: tuple[int, ...] = ()  # type OIDs; 0 leaves one unspecified


@dataclass(frozen=True, slots=True)
class Bind(FrontendMessage):
    """'B': bind parameter values to a prepared statement, making a portal."""

    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()  # none: all text; one: for all; else one each
    params: tuple[bytes | None, ...] = ()  # None is SQL NULL
    result_formats: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Describe(FrontendMessage):
    """'D': describe a prepared statement ('S') or a portal ('P')."""

    kind: Literal["S", "P"]
    name: str = ""


@dataclass(frozen=True, slots=True)
class Execute(FrontendMessage):
    """'E': run a portal, returning at most `max_rows` rows (0: all)."""

    portal: str = ""
    max_rows: int = 0


@dataclass(frozen=True, slots=True)
class Sync(FrontendMessage):
    """'S': end of an extended-query batch; the server answers ReadyForQuery."""


@dataclass(frozen=True, slots=True)
class Flush(FrontendMessage):
    """'H': ask the server to send what it has buffered."""


@dataclass(frozen=True, slots=True)
class Close(FrontendMessage):
    """'C': close a prepared statement ('S') or a portal ('P')."""

    kind: Literal["S", "P"]
    name: str = ""


@dataclass(frozen=True, slots=True)
class CopyFail(FrontendMessage):
    """'f': the client aborts COPY FROM STDIN."""

    message: str


@dataclass(frozen=True, slots=True)
class Terminate(FrontendMessage):
    """'X': the client is leaving."""


@dataclass(frozen=True, slots=True)
class FunctionCall(FrontendMessage):
    """'F': the legacy fast-path function call, kept undecoded."""

    body: bytes
