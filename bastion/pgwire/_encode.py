"""Message → bytes, for every message type in both directions.

`encode()` always works from the fields, never from `raw` (forward `msg.raw` yourself to
relay a message untouched). A value the protocol cannot carry (a NUL inside a string, a
number out of its field's range, an unknown status) is a UsageError: the caller's bug,
not the peer's. The answer to SSLRequest/GSSENCRequest is not a message: it is the one
byte ENCRYPTION_REFUSED (b"N").
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from bastion.pgwire._auth import (
    AUTH_CLEARTEXT,
    AUTH_MD5,
    AUTH_OK,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
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
)
from bastion.pgwire._codec import INT32, UINT16, cstring, frame, int16s, value
from bastion.pgwire._errors import UsageError
from bastion.pgwire._framing import CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, SSL_REQUEST_CODE
from bastion.pgwire._frontend import (
    MAX_CANCEL_KEY,
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
from bastion.pgwire._messages import CopyData, CopyDone, Message

_UINT8 = struct.Struct("!B")
_DEDICATED_AUTH_CODES = (
    AUTH_OK,
    AUTH_CLEARTEXT,
    AUTH_MD5,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
)


def _untyped(code: int, *parts: bytes) -> bytes:
    body = b"".join((INT32.pack(code), *parts))
    return INT32.pack(4 + len(body)) + body


def _key(key: bytes) -> bytes:
    if not 4 <= len(key) <= MAX_CANCEL_KEY:
        raise UsageError(f"a cancel key has 4 to {MAX_CANCEL_KEY} bytes, not {len(key)}")
    return key


def _startup(msg: StartupMessage) -> bytes:
    if msg.protocol >> 16 != 3:
        raise UsageError(f"StartupMessage for protocol {msg.protocol >> 16}, not 3")
    pairs = [cstring(k) + cstring(v) for k, v in msg.parameters.items()]
    if any(not k for k in msg.parameters):
        raise UsageError("a startup parameter needs a name")
    return _untyped(msg.protocol, *pairs, b"\0")


def _kind(kind: str) -> bytes:
    if kind not in ("S", "P"):
        raise UsageError(f"kind must be 'S' (statement) or 'P' (portal), not {kind!r}")
    return kind.encode()


def _bind(msg: Bind) -> bytes:
    return frame(
        b"B",
        cstring(msg.portal),
        cstring(msg.statement),
        int16s(msg.param_formats),
        UINT16.pack(len(msg.params)),
        *map(value, msg.params),
        int16s(msg.result_formats),
    )


def _diagnostic(kind: bytes) -> Callable[[Diagnostic], bytes]:
    def encode(msg: Diagnostic) -> bytes:
        parts: list[bytes] = []
        for code, text in msg.fields.items():
            if len(code) != 1 or not "\x01" <= code <= "\xff":
                raise UsageError(f"a field code is one byte (a letter), not {code!r}")
            parts += (code.encode("latin-1"), cstring(text))
        return frame(kind, *parts, b"\0")

    return encode


def _copy_response(kind: bytes) -> Callable[[CopyResponse], bytes]:
    return lambda msg: frame(kind, _UINT8.pack(msg.format), int16s(msg.column_formats))


def _ready(msg: ReadyForQuery) -> bytes:
    if msg.status not in ("I", "T", "E"):
        raise UsageError(f"transaction status must be 'I', 'T' or 'E', not {msg.status!r}")
    return frame(b"Z", msg.status.encode())


def _auth_other(msg: AuthenticationOther) -> bytes:
    if msg.code in _DEDICATED_AUTH_CODES:
        raise UsageError(f"use the dedicated class for authentication code {msg.code}")
    return frame(b"R", INT32.pack(msg.code), msg.data)


def _md5(msg: AuthenticationMD5Password) -> bytes:
    if len(msg.salt) != 4:
        raise UsageError(f"an MD5 salt has 4 bytes, not {len(msg.salt)}")
    return frame(b"R", INT32.pack(AUTH_MD5), msg.salt)


def _sasl(msg: AuthenticationSASL) -> bytes:
    if not msg.mechanisms or not all(msg.mechanisms):
        raise UsageError("AuthenticationSASL needs at least one non-empty mechanism name")
    return frame(b"R", INT32.pack(AUTH_SASL), *map(cstring, msg.mechanisms), b"\0")


def _unknown(msg: Unknown) -> bytes:
    if len(msg.type) != 1:
        raise UsageError(f"a message type is one byte, not {msg.type!r}")
    return frame(msg.type, msg.body)


_ENCODERS: dict[type[Message], Callable[[Any], bytes]] = {
    # frontend
    SSLRequest: lambda msg: _untyped(SSL_REQUEST_CODE),
    GSSENCRequest: lambda msg: _untyped(GSSENC_REQUEST_CODE),
    CancelRequest: lambda msg: _untyped(CANCEL_REQUEST_CODE, INT32.pack(msg.pid), _key(msg.key)),
    StartupMessage: _startup,
    Query: lambda msg: frame(b"Q", cstring(msg.sql)),
    Parse: lambda msg: frame(
        b"P",
        cstring(msg.name),
        cstring(msg.query),
        UINT16.pack(len(msg.param_types)),
        struct.pack(f"!{len(msg.param_types)}I", *msg.param_types),
    ),
    Bind: _bind,
    Describe: lambda msg: frame(b"D", _kind(msg.kind), cstring(msg.name)),
    Execute: lambda msg: frame(b"E", cstring(msg.portal), INT32.pack(msg.max_rows)),
    Sync: lambda msg: frame(b"S"),
    Flush: lambda msg: frame(b"H"),
    Close: lambda msg: frame(b"C", _kind(msg.kind), cstring(msg.name)),
    CopyData: lambda msg: frame(b"d", msg.data),
    CopyDone: lambda msg: frame(b"c"),
    CopyFail: lambda msg: frame(b"f", cstring(msg.message)),
    Terminate: lambda msg: frame(b"X"),
    FunctionCall: lambda msg: frame(b"F", msg.body),
    AuthResponse: lambda msg: frame(b"p", msg.data),
    PasswordMessage: lambda msg: frame(b"p", cstring(msg.password)),
    SASLInitialResponse: lambda msg: frame(b"p", cstring(msg.mechanism), value(msg.data)),
    SASLResponse: lambda msg: frame(b"p", msg.data),
    # backend
    AuthenticationOk: lambda msg: frame(b"R", INT32.pack(AUTH_OK)),
    AuthenticationCleartextPassword: lambda msg: frame(b"R", INT32.pack(AUTH_CLEARTEXT)),
    AuthenticationMD5Password: _md5,
    AuthenticationSASL: _sasl,
    AuthenticationSASLContinue: lambda msg: frame(b"R", INT32.pack(AUTH_SASL_CONTINUE), msg.data),
    AuthenticationSASLFinal: lambda msg: frame(b"R", INT32.pack(AUTH_SASL_FINAL), msg.data),
    AuthenticationOther: _auth_other,
    ParameterStatus: lambda msg: frame(b"S", cstring(msg.name), cstring(msg.value)),
    BackendKeyData: lambda msg: frame(b"K", INT32.pack(msg.pid), _key(msg.key)),
    ReadyForQuery: _ready,
    RowDescription: lambda msg: frame(b"T", msg.body),
    DataRow: lambda msg: frame(b"D", msg.body),
    CommandComplete: lambda msg: frame(b"C", cstring(msg.tag)),
    EmptyQueryResponse: lambda msg: frame(b"I"),
    ErrorResponse: _diagnostic(b"E"),
    NoticeResponse: _diagnostic(b"N"),
    ParseComplete: lambda msg: frame(b"1"),
    BindComplete: lambda msg: frame(b"2"),
    CloseComplete: lambda msg: frame(b"3"),
    NoData: lambda msg: frame(b"n"),
    PortalSuspended: lambda msg: frame(b"s"),
    ParameterDescription: lambda msg: frame(
        b"t",
        UINT16.pack(len(msg.type_oids)),
        struct.pack(f"!{len(msg.type_oids)}I", *msg.type_oids),
    ),
    CopyInResponse: _copy_response(b"G"),
    CopyOutResponse: _copy_response(b"H"),
    CopyBothResponse: _copy_response(b"W"),
    NotificationResponse: lambda msg: frame(
        b"A", INT32.pack(msg.pid), cstring(msg.channel), cstring(msg.payload)
    ),
    NegotiateProtocolVersion: lambda msg: frame(
        b"v",
        INT32.pack(msg.newest_minor),
        INT32.pack(len(msg.unrecognized)),
        *map(cstring, msg.unrecognized),
    ),
    FunctionCallResponse: lambda msg: frame(b"V", value(msg.value)),
    Unknown: _unknown,
}


def encode(msg: Message) -> bytes:
    """The wire bytes of `msg`, built from its fields."""
    encoder = _ENCODERS.get(type(msg))
    if encoder is None:
        raise UsageError(f"pgwire cannot encode {type(msg).__name__}")
    try:
        return encoder(msg)
    except (struct.error, OverflowError, UnicodeEncodeError) as exc:
        raise UsageError(f"cannot encode {type(msg).__name__}: {exc}") from None
