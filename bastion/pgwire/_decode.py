"""Frame → message: one table of decoders per direction.

Decoding is strict about layout (a short body, a missing NUL, trailing bytes, an invalid
kind or status byte are ProtocolErrors) and lenient about meaning (format codes, OIDs,
parameter names are the server's business). Unknown frontend types are a ProtocolError;
unknown backend types decode to `Unknown`, so a newer server does not break a relay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

from bastion.pgwire._auth import decode_auth_response, decode_authentication
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
from bastion.pgwire._codec import TEXT_ENCODING, TEXT_ERRORS, Reader
from bastion.pgwire._errors import ProtocolError, UsageError
from bastion.pgwire._framing import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    SSL_REQUEST_CODE,
    Frame,
    check_frame,
)
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
from bastion.pgwire._messages import BackendMessage, CopyData, CopyDone, FrontendMessage, Message

M = TypeVar("M", bound=Message)


def _empty(cls: type[M]) -> Callable[[bytes], M]:
    def decode(raw: bytes) -> M:
        if len(raw) != 5:
            raise ProtocolError(f"{cls.__name__} message has {len(raw) - 5} unexpected bytes")
        return cls(raw=raw)

    return decode


def _lone_cstring(raw: bytes) -> str | None:
    """The body of a typed message that is exactly one NUL-terminated string, decoded;
    None when it is anything else (then a `Reader` says what is wrong)."""
    if raw.find(b"\0", 5) == len(raw) - 1:
        return raw[5:-1].decode(TEXT_ENCODING, TEXT_ERRORS)
    return None


def _one_string(cls: Callable[..., M]) -> Callable[[bytes], M]:
    """Decoder for a message whose body is one NUL-terminated string."""

    what = getattr(cls, "__name__", "message")

    def decode(raw: bytes) -> M:
        text = _lone_cstring(raw)
        if text is not None:
            return cls(text, raw=raw)
        reader = Reader(raw, 5, what)  # and say what is wrong
        text = reader.cstring()
        reader.end()
        return cls(text, raw=raw)

    return decode


def _copy_data(raw: bytes) -> CopyData:
    return CopyData(raw[5:], raw=raw)


# -- frontend --------------------------------------------------------------------------


def _decode_startup(raw: bytes) -> FrontendMessage:
    reader = Reader(raw, 4, "startup")
    code = reader.int32()
    if code == SSL_REQUEST_CODE:
        reader.end()
        return SSLRequest(raw=raw)
    if code == GSSENC_REQUEST_CODE:
        reader.end()
        return GSSENCRequest(raw=raw)
    if code == CANCEL_REQUEST_CODE:
        pid = reader.int32()
        key = reader.rest()
        if not 4 <= len(key) <= MAX_CANCEL_KEY:
            raise ProtocolError(f"CancelRequest has a {len(key)}-byte key")
        return CancelRequest(pid, key, raw=raw)
    if code >> 16 != 3:
        raise ProtocolError(f"unsupported protocol {code >> 16}.{code & 0xFFFF}")
    parameters: dict[str, str] = {}
    while name := reader.cstring():
        parameters[name] = reader.cstring()
    reader.end()
    return StartupMessage(parameters, code, raw=raw)


def _kind(reader: Reader, what: str) -> Literal["S", "P"]:
    kind = reader.byte()
    if kind == b"S":
        return "S"
    if kind == b"P":
        return "P"
    raise ProtocolError(f"{what} of an unknown kind {kind!r}")


def _parse(raw: bytes) -> Parse:
    reader = Reader(raw, 5, "Parse")
    name, query = reader.cstring(), reader.cstring()
    types = reader.uint32s(reader.uint16())
    reader.end()
    return Parse(name, query, types, raw=raw)


def _bind(raw: bytes) -> Bind:
    reader = Reader(raw, 5, "Bind")
    portal, statement = reader.cstring(), reader.cstring()
    formats = reader.int16s(reader.uint16())
    params = tuple(reader.value() for _ in range(reader.uint16()))
    if len(formats) > 1 and len(formats) != len(params):
        raise ProtocolError(f"Bind has {len(formats)} parameter formats for {len(params)} values")
    results = reader.int16s(reader.uint16())
    reader.end()
    return Bind(portal, statement, formats, params, results, raw=raw)


def _target(cls: type[Describe] | type[Close]) -> Callable[[bytes], FrontendMessage]:
    def decode(raw: bytes) -> FrontendMessage:
        reader = Reader(raw, 5, cls.__name__)
        kind, name = _kind(reader, cls.__name__), reader.cstring()
        reader.end()
        return cls(kind, name, raw=raw)

    return decode


def _execute(raw: bytes) -> Execute:
    reader = Reader(raw, 5, "Execute")
    portal, max_rows = reader.cstring(), reader.int32()
    reader.end()
    return Execute(portal, max_rows, raw=raw)


_FRONTEND: dict[bytes, Callable[[bytes], FrontendMessage]] = {
    b"Q": _one_string(Query),
    b"P": _parse,
    b"B": _bind,
    b"D": _target(Describe),
    b"E": _execute,
    b"S": _empty(Sync),
    b"H": _empty(Flush),
    b"C": _target(Close),
    b"d": _copy_data,
    b"c": _empty(CopyDone),
    b"f": _one_string(CopyFail),
    b"X": _empty(Terminate),
    b"p": decode_auth_response,
    b"F": lambda raw: FunctionCall(raw[5:], raw=raw),
}
FRONTEND_TYPES = frozenset(_FRONTEND)


def decode_frontend(frame: Frame) -> FrontendMessage:
    """Decode a frame of the client's stream. Raises ProtocolError if the body is invalid."""
    check_frame(frame)
    kind, raw = frame
    if not kind:
        return _decode_startup(raw)
    decoder = _FRONTEND.get(kind)
    if decoder is None:
        raise ProtocolError(f"unknown frontend message type {kind!r}")
    return decoder(raw)


# -- backend ---------------------------------------------------------------------------


def _parameter_status(raw: bytes) -> ParameterStatus:
    reader = Reader(raw, 5, "ParameterStatus")
    name, value = reader.cstring(), reader.cstring()
    reader.end()
    return ParameterStatus(name, value, raw=raw)


def _key_data(raw: bytes) -> BackendKeyData:
    reader = Reader(raw, 5, "BackendKeyData")
    pid, key = reader.int32(), reader.rest()
    if not 4 <= len(key) <= MAX_CANCEL_KEY:
        raise ProtocolError(f"BackendKeyData has a {len(key)}-byte key")
    return BackendKeyData(pid, key, raw=raw)


_STATUSES: dict[bytes, Literal["I", "T", "E"]] = {b"I": "I", b"T": "T", b"E": "E"}


def _ready(raw: bytes) -> ReadyForQuery:
    status = _STATUSES.get(raw[5:])
    if status is None:
        raise ProtocolError(f"invalid ReadyForQuery status {raw[5:13]!r}")
    return ReadyForQuery(status, raw=raw)


def _counted(cls: type[RowDescription] | type[DataRow]) -> Callable[[bytes], BackendMessage]:
    """Lazy decoder: only checks that the int16 count is there."""

    def decode(raw: bytes) -> BackendMessage:
        if len(raw) < 7:
            raise ProtocolError(f"{cls.__name__} message ends early")
        return cls(raw[5:], raw=raw)

    return decode


def _diagnostic(cls: type[Diagnostic]) -> Callable[[bytes], BackendMessage]:
    def decode(raw: bytes) -> BackendMessage:
        reader = Reader(raw, 5, cls.__name__)
        fields: dict[str, str] = {}
        while (code := reader.byte()) != b"\0":
            fields[code.decode("latin-1")] = reader.cstring()
        reader.end()
        return cls(fields, raw=raw)

    return decode


def _parameter_description(raw: bytes) -> ParameterDescription:
    reader = Reader(raw, 5, "ParameterDescription")
    oids = reader.uint32s(reader.uint16())
    reader.end()
    return ParameterDescription(oids, raw=raw)


def _copy_response(cls: type[CopyResponse]) -> Callable[[bytes], BackendMessage]:
    def decode(raw: bytes) -> BackendMessage:
        reader = Reader(raw, 5, cls.__name__)
        overall = reader.byte()[0]
        formats = reader.int16s(reader.uint16())
        reader.end()
        return cls(overall, formats, raw=raw)

    return decode


def _notification(raw: bytes) -> NotificationResponse:
    reader = Reader(raw, 5, "NotificationResponse")
    pid, channel, payload = reader.int32(), reader.cstring(), reader.cstring()
    reader.end()
    return NotificationResponse(pid, channel, payload, raw=raw)


def _negotiate(raw: bytes) -> NegotiateProtocolVersion:
    reader = Reader(raw, 5, "NegotiateProtocolVersion")
    newest, count = reader.int32(), reader.int32()
    if count < 0:
        raise ProtocolError(f"NegotiateProtocolVersion lists {count} options")
    options = tuple(reader.cstring() for _ in range(count))
    reader.end()
    return NegotiateProtocolVersion(newest, options, raw=raw)


def _function_result(raw: bytes) -> FunctionCallResponse:
    reader = Reader(raw, 5, "FunctionCallResponse")
    value = reader.value()
    reader.end()
    return FunctionCallResponse(value, raw=raw)


_BACKEND: dict[bytes, Callable[[bytes], BackendMessage]] = {
    b"R": decode_authentication,
    b"S": _parameter_status,
    b"K": _key_data,
    b"Z": _ready,
    b"T": _counted(RowDescription),
    b"D": _counted(DataRow),
    b"C": _one_string(CommandComplete),
    b"I": _empty(EmptyQueryResponse),
    b"E": _diagnostic(ErrorResponse),
    b"N": _diagnostic(NoticeResponse),
    b"1": _empty(ParseComplete),
    b"2": _empty(BindComplete),
    b"3": _empty(CloseComplete),
    b"n": _empty(NoData),
    b"s": _empty(PortalSuspended),
    b"t": _parameter_description,
    b"G": _copy_response(CopyInResponse),
    b"H": _copy_response(CopyOutResponse),
    b"W": _copy_response(CopyBothResponse),
    b"d": _copy_data,
    b"c": _empty(CopyDone),
    b"A": _notification,
    b"v": _negotiate,
    b"V": _function_result,
}
BACKEND_TYPES = frozenset(_BACKEND)


def decode_backend(frame: Frame) -> BackendMessage:
    """Decode a frame of the server's stream; an unknown type gives `Unknown`."""
    check_frame(frame)
    kind, raw = frame
    if not kind:
        raise ProtocolError("the server's stream has no untyped messages")
    decoder = _BACKEND.get(kind)
    if decoder is None:
        return Unknown(kind, raw[5:], raw=raw)
    return decoder(raw)


# -- one field without the message, for a relay ------------------------------------------


def query_text(frame: Frame) -> str:
    """A Query frame's SQL, as `decode_frontend(frame).sql` gives it, without building the
    message: what a relay reads of every simple query. For frames from a parser."""
    return _lone_string(frame, b"Q", decode_frontend, "query_text")


def command_tag(frame: Frame) -> str:
    """A CommandComplete frame's tag, as `decode_backend(frame).tag` gives it, without
    building the message (`tag_rows` reads its row count). For frames from a parser."""
    return _lone_string(frame, b"C", decode_backend, "command_tag")


def _lone_string(frame: Frame, kind: bytes, decode: Callable[[Frame], Message], name: str) -> str:
    """The body of a `kind` frame that is one NUL-terminated string, as its decoder reads it."""
    if frame[0] == kind:
        text = _lone_cstring(frame[1])
        if text is not None:
            return text
    # Anything else in a `kind` frame is malformed: its decoder says how (ProtocolError).
    message = decode(frame)
    raise UsageError(f"{name}() of a {type(message).__name__} frame")
