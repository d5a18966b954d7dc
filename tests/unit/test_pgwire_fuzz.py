"""pgwire under hypothesis: arbitrary bytes only ever raise ProtocolError, work is bounded
per byte, buffering stays under the limit, and encode → parse gives the message back."""

from __future__ import annotations

import contextlib
import itertools
import os
import string
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion import pgwire as pg
from bastion.pgwire import (
    CLOSED,
    NEED_DATA,
    BackendParser,
    FrontendParser,
    Message,
    ProtocolError,
    encode,
)
from bastion.pgwire._decode import BACKEND_TYPES, FRONTEND_TYPES

SETTINGS = settings(
    max_examples=int(os.environ.get("PGWIRE_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=12)
blob = st.binary(max_size=40)
i16 = st.integers(-(2**15), 2**15 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
u32 = st.integers(0, 2**32 - 1)
key = st.binary(min_size=4, max_size=256)
kind = st.sampled_from(["S", "P"])
Ints = tuple[int, ...]


def tuples(elements: st.SearchStrategy[int], max_size: int = 5) -> st.SearchStrategy[Ints]:
    return st.lists(elements, max_size=max_size).map(tuple)


def _bind(params: list[bytes | None]) -> st.SearchStrategy[pg.Bind]:
    formats = st.one_of(st.just(()), st.tuples(i16), st.tuples(*[i16] * len(params)))
    return st.builds(pg.Bind, text, text, formats, st.just(tuple(params)), tuples(i16))


startup_messages = st.one_of(
    st.just(pg.SSLRequest()),
    st.just(pg.GSSENCRequest()),
    st.builds(
        pg.StartupMessage,
        st.dictionaries(text.filter(bool), text, max_size=4),
        st.integers(0, 0xFFFF).map(lambda minor: 3 << 16 | minor),
    ),
)
typed_frontend_messages = st.one_of(
    st.builds(pg.Query, text),
    st.builds(pg.Parse, text, text, tuples(u32)),
    st.lists(st.one_of(st.none(), blob), max_size=5).flatmap(_bind),
    st.builds(pg.Describe, kind, text),
    st.builds(pg.Close, kind, text),
    st.builds(pg.Execute, text, i32),
    st.sampled_from([pg.Sync(), pg.Flush(), pg.CopyDone()]),
    st.builds(pg.CopyData, blob),
    st.builds(pg.CopyFail, text),
    st.builds(pg.FunctionCall, blob),
    st.builds(pg.AuthResponse, blob),
)
fields = st.builds(pg.FieldDescription, text, u32, i16, u32, i16, i32, i16)
diagnostic_fields = st.dictionaries(st.sampled_from(string.ascii_letters), text, max_size=6)
backend_messages = st.one_of(
    st.sampled_from(
        [
            pg.AuthenticationOk(),
            pg.AuthenticationCleartextPassword(),
            pg.EmptyQueryResponse(),
            pg.ParseComplete(),
            pg.BindComplete(),
            pg.CloseComplete(),
            pg.NoData(),
            pg.PortalSuspended(),
            pg.CopyDone(),
        ]
    ),
    st.builds(pg.AuthenticationMD5Password, st.binary(min_size=4, max_size=4)),
    st.builds(pg.AuthenticationSASL, st.lists(text.filter(bool), min_size=1).map(tuple)),
    st.builds(pg.AuthenticationSASLContinue, blob),
    st.builds(pg.AuthenticationSASLFinal, blob),
    st.builds(pg.AuthenticationOther, i32.filter(lambda c: c not in (0, 3, 5, 10, 11, 12)), blob),
    st.builds(pg.ParameterStatus, text, text),
    st.builds(pg.BackendKeyData, i32, key),
    st.builds(pg.ReadyForQuery, st.sampled_from(["I", "T", "E"])),
    st.lists(fields, max_size=4).map(lambda f: pg.RowDescription.from_fields(tuple(f))),
    st.lists(st.one_of(st.none(), blob), max_size=5).map(tuple).map(pg.DataRow.from_values),
    st.builds(pg.CommandComplete, text),
    st.builds(pg.ErrorResponse, diagnostic_fields),
    st.builds(pg.NoticeResponse, diagnostic_fields),
    st.builds(pg.ParameterDescription, tuples(u32)),
    st.builds(pg.CopyInResponse, st.integers(0, 255), tuples(i16)),
    st.builds(pg.CopyOutResponse, st.integers(0, 255), tuples(i16)),
    st.builds(pg.CopyBothResponse, st.integers(0, 255), tuples(i16)),
    st.builds(pg.CopyData, blob),
    st.builds(pg.NotificationResponse, i32, text, text),
    st.builds(pg.NegotiateProtocolVersion, i32, st.lists(text, max_size=3).map(tuple)),
    st.builds(pg.FunctionCallResponse, st.one_of(st.none(), blob)),
    st.builds(
        pg.Unknown,
        st.sampled_from(sorted({bytes([i]) for i in range(256)} - BACKEND_TYPES)),
        blob,
    ),
)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _parse_in_chunks(parser: FrontendParser | BackendParser, chunks: list[bytes]) -> list[Message]:
    found: list[Message] = []
    for chunk in chunks:
        parser.receive_data(chunk)
        while (event := parser.next_event()) is not NEED_DATA:
            assert event is not CLOSED
            found.append(event)
    parser.receive_data(b"")
    assert parser.next_event() is CLOSED
    return found


@SETTINGS
@given(msg=backend_messages)
def test_backend_encode_then_parse(msg: Message) -> None:
    parser = BackendParser()
    parser.receive_data(encode(msg))
    parsed = parser.next_event()
    assert parsed == msg
    assert isinstance(parsed, Message)
    assert parsed.raw == encode(msg)


@SETTINGS
@given(msg=typed_frontend_messages)
def test_frontend_encode_then_parse(msg: Message) -> None:
    parser = FrontendParser(startup=False)
    parser.receive_data(encode(msg))
    assert parser.next_event() == msg


@SETTINGS
@given(
    startup=st.lists(st.sampled_from([pg.SSLRequest(), pg.GSSENCRequest()]), max_size=2),
    hello=startup_messages.filter(lambda m: isinstance(m, pg.StartupMessage)),
    msgs=st.lists(typed_frontend_messages, max_size=12),
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
)
def test_a_client_stream_cut_anywhere(
    startup: list[Message], hello: Message, msgs: list[Message], cuts: list[int]
) -> None:
    everything = [*startup, hello, *msgs]
    data = b"".join(map(encode, everything))
    assert _parse_in_chunks(FrontendParser(), _chunks(data, cuts)) == everything


@SETTINGS
@given(msgs=st.lists(backend_messages, max_size=15), cuts=st.lists(st.integers(0, 10_000)))
def test_a_server_stream_cut_anywhere(msgs: list[Message], cuts: list[int]) -> None:
    data = b"".join(map(encode, msgs))
    found = _parse_in_chunks(BackendParser(), _chunks(data, cuts))
    assert found == msgs
    assert b"".join(m.raw for m in found) == data


LIMIT = 200
PARSERS: dict[str, Callable[[], FrontendParser | BackendParser]] = {
    "startup": lambda: FrontendParser(max_message_size=LIMIT, max_startup_size=LIMIT),
    "frontend": lambda: FrontendParser(startup=False, max_message_size=LIMIT),
    "backend": lambda: BackendParser(max_message_size=LIMIT),
}


def _survive(parser: FrontendParser | BackendParser, chunks: list[bytes], frames: bool) -> None:
    """Feed `chunks`; the parser may refuse them, but only with ProtocolError."""
    events = 0
    try:
        for chunk in [*chunks, b""]:
            parser.receive_data(chunk)
            assert parser.buffered <= 1 + LIMIT + len(chunk)
            while True:
                before = parser.buffered
                event = parser.next_frame() if frames else parser.next_event()
                if event is NEED_DATA or event is CLOSED:
                    break
                events += 1
                assert before - parser.buffered >= 5  # a whole header at least
            assert parser.buffered < 1 + LIMIT
    except ProtocolError:
        return
    # Bounded work: every event consumed at least 5 bytes, so there are few of them.
    assert events <= sum(map(len, chunks)) // 5


@SETTINGS
@given(
    side=st.sampled_from(sorted(PARSERS)),
    data=st.binary(max_size=800),
    cuts=st.lists(st.integers(0, 800), max_size=12),
    frames=st.booleans(),
)
def test_arbitrary_bytes(side: str, data: bytes, cuts: list[int], frames: bool) -> None:
    _survive(PARSERS[side](), _chunks(data, cuts), frames)


@st.composite
def mutated_streams(draw: st.DrawFn) -> tuple[str, bytes]:
    side = draw(st.sampled_from(["frontend", "backend"]))
    messages = typed_frontend_messages if side == "frontend" else backend_messages
    data = bytearray(b"".join(map(encode, draw(st.lists(messages, min_size=1, max_size=8)))))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(data) - 1))
        data[where] = draw(st.integers(0, 255))
    return side, bytes(data)


@SETTINGS
@given(stream=mutated_streams(), cuts=st.lists(st.integers(0, 2000), max_size=8))
def test_valid_streams_with_bytes_flipped(stream: tuple[str, bytes], cuts: list[int]) -> None:
    side, data = stream
    _survive(PARSERS[side](), _chunks(data, cuts), frames=False)


@SETTINGS
@given(
    msgs=st.lists(backend_messages, max_size=15),
    cuts=st.lists(st.integers(0, 5000), max_size=10),
    passthrough=st.sets(st.sampled_from([b"D", b"d", b"C", b"Z", b"T"])).map(frozenset),
)
def test_next_run_with_next_frame_reassembles_the_stream(
    msgs: list[Message], cuts: list[int], passthrough: frozenset[bytes]
) -> None:
    data = b"".join(map(encode, msgs))
    parser = BackendParser()
    out: list[bytes] = []
    for chunk in _chunks(data, cuts):
        parser.receive_data(chunk)
        while True:
            out.append(parser.next_run(passthrough))
            frame = parser.next_frame()
            if frame is NEED_DATA:
                break
            assert isinstance(frame, tuple)
            out.append(frame[1])
    assert b"".join(out) == data


@SETTINGS
@given(body=st.binary(max_size=300))
def test_lazy_decoders_on_arbitrary_bodies(body: bytes) -> None:
    for read in (
        pg.DataRow(body).values,
        pg.RowDescription(body).fields,
        pg.AuthResponse(body).as_password,
        pg.AuthResponse(body).as_sasl_initial,
    ):
        with contextlib.suppress(ProtocolError):
            read()


@SETTINGS
@given(
    side=st.sampled_from(["frontend", "backend"]),
    data=st.data(),
    body=st.binary(max_size=120),
)
def test_every_decoder_on_arbitrary_bodies(side: str, data: st.DataObject, body: bytes) -> None:
    types = FRONTEND_TYPES if side == "frontend" else BACKEND_TYPES
    kind = data.draw(st.sampled_from(sorted(types)))
    decode = pg.decode_frontend if side == "frontend" else pg.decode_backend
    try:
        msg = decode((kind, kind + (4 + len(body)).to_bytes(4, "big") + body))
    except ProtocolError:
        return
    assert msg.raw[5:] == body
    if not isinstance(msg, pg.Diagnostic):  # a field code sent twice is kept once
        assert encode(msg) == msg.raw
