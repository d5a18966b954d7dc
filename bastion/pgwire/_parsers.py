"""The two parsers: FrontendParser (what a client sends) and BackendParser (a server).

Both are sans-IO, in h11's manner: `receive_data(bytes)` in, then `next_event()` (decoded)
or `next_frame()` (type + raw bytes, for a relay that forwards without decoding) until
NEED_DATA; `receive_data(b"")` marks the end of the stream, after which the parsers say
CLOSED or raise ProtocolError for a message cut short. The framing, buffering and limits
are `_framing.FrameReader`'s; this module adds each side's states and decoding.

The client's stream, as a table (anything else is a ProtocolError):

    state      message                            next state
    startup    SSLRequest, GSSENCRequest          startup    (answer one byte: 'N')
    startup    StartupMessage (protocol 3.x)      messages
    startup    CancelRequest                      done
    messages   any frontend type but 'X'          messages
    messages   Terminate                          done
    done       (end of stream)                    CLOSED

The server's stream has one state: every typed message, known or not. The one exception,
the unframed byte that answers an encryption request, has its own method.

Not here: the order of messages within the extended-query protocol, or which answer
belongs to which request; that is the relay's state to keep.
"""

from __future__ import annotations

from bastion.pgwire._codec import INT32
from bastion.pgwire._decode import FRONTEND_TYPES, decode_backend, decode_frontend
from bastion.pgwire._errors import ProtocolError
from bastion.pgwire._framing import (
    CANCEL_REQUEST_CODE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_STARTUP_SIZE,
    GSSENC_REQUEST_CODE,
    SSL_REQUEST_CODE,
    Frame,
    FrameReader,
    Signal,
)
from bastion.pgwire._frontend import MAX_CANCEL_KEY
from bastion.pgwire._messages import BackendMessage, FrontendMessage


class FrontendParser(FrameReader):
    """Parses what a client sends: `receive_data(bytes)`, then `next_event()` until NEED_DATA.

    `startup=False` starts directly in the typed phase (a stream picked up after its
    startup). If you answer an SSLRequest with 'S' (this gateway answers 'N'), check that
    `buffered == 0` first: bytes sent before the TLS handshake are an injection attempt
    (CVE-2021-23214).
    """

    __slots__ = ()

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_startup_size: int = DEFAULT_MAX_STARTUP_SIZE,
        startup: bool = True,
    ) -> None:
        super().__init__(
            accept=FRONTEND_TYPES,
            fast=FRONTEND_TYPES - {b"X"},  # Terminate changes state: slow path
            typed=not startup,
            max_message_size=max_message_size,
            max_startup_size=max_startup_size,
        )

    @property
    def in_startup(self) -> bool:
        """True until the StartupMessage has been returned (or `startup=False`)."""
        return not self._typed

    def next_event(self) -> FrontendMessage | Signal:
        """The next message, decoded; or NEED_DATA / CLOSED."""
        frame = self.next_frame()
        if isinstance(frame, Signal):
            return frame
        try:
            return decode_frontend(frame)
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def decode(self, frame: Frame) -> FrontendMessage:
        """Decode a frame from `next_frame()` (the parser's state is not involved)."""
        return decode_frontend(frame)

    def _check(self, frame: Frame) -> None:
        kind, raw = frame
        if kind == b"X":
            self._finish("Terminate")
        if kind:
            return
        (code,) = INT32.unpack_from(raw, 4)
        length = len(raw)
        if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
            if length != 8:
                raise ProtocolError(f"encryption request of {length} bytes instead of 8")
        elif code == CANCEL_REQUEST_CODE:
            if not 16 <= length <= 12 + MAX_CANCEL_KEY:
                raise ProtocolError(f"CancelRequest of {length} bytes")
            self._finish("CancelRequest")
        elif code >> 16 == 3:
            self._start_messages()
        else:
            raise ProtocolError(f"unsupported protocol {code >> 16}.{code & 0xFFFF}")


class BackendParser(FrameReader):
    """Parses what a server sends: `receive_data(bytes)`, then `next_event()` until NEED_DATA.

    Every type byte is accepted (unknown ones decode to `Unknown`); only lengths and
    sizes are checked while framing.
    """

    __slots__ = ()

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        super().__init__(max_message_size=max_message_size)

    def next_event(self) -> BackendMessage | Signal:
        """The next message, decoded; or NEED_DATA / CLOSED."""
        frame = self.next_frame()
        if isinstance(frame, Signal):
            return frame
        try:
            return decode_backend(frame)
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def decode(self, frame: Frame) -> BackendMessage:
        """Decode a frame from `next_frame()` (the parser's state is not involved)."""
        return decode_backend(frame)

    def next_encryption_answer(self) -> bytes | Signal:
        """After sending SSLRequest or GSSENCRequest: the server's one-byte, unframed answer.

        Returns b"S" (start TLS), b"G" (start GSSAPI) or b"N" (declined; go on in clear),
        consumed; or b"E", not consumed: an ErrorResponse follows (a server too old for
        the request), read it with `next_event()`. Any byte buffered after 'S' or 'G' is
        a ProtocolError: the server cannot have sent it before the handshake, so someone
        injected it (CVE-2021-23222).
        """
        if self._error is not None:
            raise ProtocolError(f"the parser stopped after an earlier error: {self._error}")
        if not self.buffered:
            return self._short(0)
        answer = self._peek(1)
        if answer == b"E":
            return answer
        try:
            if answer not in (b"S", b"G", b"N"):
                raise ProtocolError(f"invalid answer {answer!r} to an encryption request")
            self._take(1)
            if answer != b"N" and self.buffered:
                raise ProtocolError(
                    f"{self.buffered} unencrypted bytes followed the server's {answer!r}"
                )
        except ProtocolError as exc:
            self._fail(exc)
            raise
        return answer
