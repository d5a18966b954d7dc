"""A sans-IO PostgreSQL v3 wire protocol: bytes in, messages out; messages in, bytes out.

No sockets, no asyncio, stdlib only. The shape is h11's: feed what you read, then pull
messages until the parser needs more.

    parser = FrontendParser()              # the client's stream (BackendParser: the server's)
    parser.receive_data(data)              # b"" marks the end of the stream
    while (msg := parser.next_event()) is not NEED_DATA:
        if msg is CLOSED: ...              # clean end of stream
        ...                                # a frozen dataclass: Query, Parse, StartupMessage, ...
    writer.write(encode(ReadyForQuery("I")))

For a relay there are faster paths that do not decode: `next_frame()` returns a `Frame`,
the tuple `(type, raw)` (raw: the exact bytes, header included); forward `raw` and
`parser.decode(frame)` only the frames worth a look (`query_text(frame)` and
`command_tag(frame)` read the one field of a Query or CommandComplete without a message).
`next_run(types)` returns, as one slice, a run of consecutive frames of the given types
(DataRow, CopyData), for a relay that forwards rows unread. `lone_frame(data)` takes a read
that is exactly one whole message (a relay's usual Query) as a frame without buffering it,
or returns None: then feed it with `receive_data(data)`. Every decoded message also
keeps its exact bytes in `msg.raw`.

Errors: `ProtocolError` when the peer's bytes are not valid protocol (the parser stops;
`sqlstate` is 08P01 for an ErrorResponse to the peer), `UsageError` when the caller
misuses the API (encoding a string with a NUL, feeding data after the end, ...).

Limits: `max_message_size` (default 1 GiB) caps a typed message's length field, and
`max_startup_size` (10000, PostgreSQL's) the startup packet; both are checked as soon as
the 5-byte header is in, before the body is awaited, so a caller that drains to
NEED_DATA before each read buffers at most one maximum-size message plus one read.

Not here: authentication cryptography (SCRAM, MD5), TLS, the query-flow state machine,
SQL parsing; those are the relay's and its libraries'.
"""

from __future__ import annotations

from bastion.pgwire._auth import (
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationOther,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthResponse,
    PasswordMessage,
    SASLInitialResponse,
    SASLResponse,
)
from bastion.pgwire._backend import (
    BackendKeyData,
    BindComplete,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyInResponse,
    CopyOutResponse,
    CopyResponse,
    DataRow,
    Diagnostic,
    EmptyQueryResponse,
    ErrorResponse,
    FieldDescription,
    FunctionCallResponse,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    ParseComplete,
    PortalSuspended,
    ReadyForQuery,
    RowDescription,
    Unknown,
    tag_rows,
)
from bastion.pgwire._decode import command_tag, decode_backend, decode_frontend, query_text
from bastion.pgwire._encode import encode
from bastion.pgwire._errors import ProtocolError, UsageError
from bastion.pgwire._framing import (
    CANCEL_REQUEST_CODE,
    CLOSED,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_STARTUP_SIZE,
    ENCRYPTION_REFUSED,
    GSSENC_REQUEST_CODE,
    NEED_DATA,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
    Frame,
    Signal,
)
from bastion.pgwire._frontend import (
    Bind,
    CancelRequest,
    Close,
    CopyFail,
    Describe,
    Execute,
    Flush,
    FunctionCall,
    GSSENCRequest,
    Parse,
    Query,
    SSLRequest,
    StartupMessage,
    Sync,
    Terminate,
)
from bastion.pgwire._messages import BackendMessage, CopyData, CopyDone, FrontendMessage, Message
from bastion.pgwire._parsers import BackendParser, FrontendParser

__all__ = [
    "CANCEL_REQUEST_CODE",
    "CLOSED",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_STARTUP_SIZE",
    "ENCRYPTION_REFUSED",
    "GSSENC_REQUEST_CODE",
    "NEED_DATA",
    "PROTOCOL_3_0",
    "SSL_REQUEST_CODE",
    "AuthResponse",
    "AuthenticationCleartextPassword",
    "AuthenticationMD5Password",
    "AuthenticationOk",
    "AuthenticationOther",
    "AuthenticationSASL",
    "AuthenticationSASLContinue",
    "AuthenticationSASLFinal",
    "BackendKeyData",
    "BackendMessage",
    "BackendParser",
    "Bind",
    "BindComplete",
    "CancelRequest",
    "Close",
    "CloseComplete",
    "CommandComplete",
    "CopyBothResponse",
    "CopyData",
    "CopyDone",
    "CopyFail",
    "CopyInResponse",
    "CopyOutResponse",
    "CopyResponse",
    "DataRow",
    "Describe",
    "Diagnostic",
    "EmptyQueryResponse",
    "ErrorResponse",
    "Execute",
    "FieldDescription",
    "Flush",
    "Frame",
    "FrontendMessage",
    "FrontendParser",
    "FunctionCall",
    "FunctionCallResponse",
    "GSSENCRequest",
    "Message",
    "NegotiateProtocolVersion",
    "NoData",
    "NoticeResponse",
    "NotificationResponse",
    "ParameterDescription",
    "ParameterStatus",
    "Parse",
    "ParseComplete",
    "PasswordMessage",
    "PortalSuspended",
    "ProtocolError",
    "Query",
    "ReadyForQuery",
    "RowDescription",
    "SASLInitialResponse",
    "SASLResponse",
    "SSLRequest",
    "Signal",
    "StartupMessage",
    "Sync",
    "Terminate",
    "Unknown",
    "UsageError",
    "command_tag",
    "decode_backend",
    "decode_frontend",
    "encode",
    "query_text",
    "tag_rows",
]
