"""pgwire framing: the startup phase and its transitions, size limits, end of stream,
the error state, the relay's fast paths (next_frame, next_run) and bounded buffering."""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion import pgwire as pg
from bastion.pgwire import (
    CLOSED,
    NEED_DATA,
    BackendParser,
    FrontendParser,
    ProtocolError,
    UsageError,
    encode,
)

STARTUP = encode(pg.StartupMessage({"user": "agent", "database": "app"}))
QUERY = encode(pg.Query("select 1"))


def test_startup_phase_ssl_refused_then_startup_then_typed() -> None:
    parser = FrontendParser()
    assert parser.in_startup
    parser.receive_data(encode(pg.SSLRequest()))
    assert parser.next_event() == pg.SSLRequest()
    assert parser.in_startup  # we answer ENCRYPTION_REFUSED; the client goes on in clear
    assert parser.next_event() is NEED_DATA
    parser.receive_data(encode(pg.GSSENCRequest()) + STARTUP + QUERY)
    assert parser.next_event() == pg.GSSENCRequest()
    startup = parser.next_event()
    assert isinstance(startup, pg.StartupMessage)
    assert startup.parameters == {"user": "agent", "database": "app"}
    assert not parser.in_startup
    assert parser.next_event() == pg.Query("select 1")


def test_typed_bytes_are_not_read_as_a_startup_packet() -> None:
    parser = FrontendParser()
    parser.receive_data(QUERY)  # 'Q' 0 0 0 -> a length of 1358954496
    with pytest.raises(ProtocolError, match="exceeds the limit of 10000"):
        parser.next_frame()


def test_startup_false_starts_typed() -> None:
    parser = FrontendParser(startup=False)
    assert not parser.in_startup
    parser.receive_data(QUERY)
    assert parser.next_event() == pg.Query("select 1")


def test_cancel_request_ends_the_conversation() -> None:
    parser = FrontendParser()
    parser.receive_data(encode(pg.CancelRequest(7, b"abcd")))
    assert parser.next_event() == pg.CancelRequest(7, b"abcd")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(STARTUP)
    with pytest.raises(ProtocolError, match="after CancelRequest"):
        parser.next_event()


def test_nothing_after_terminate() -> None:
    parser = FrontendParser(startup=False)
    parser.receive_data(encode(pg.Terminate()))
    assert parser.next_frame() == (b"X", encode(pg.Terminate()))
    parser.receive_data(b"")
    assert parser.next_frame() is CLOSED
    parser = FrontendParser(startup=False)
    parser.receive_data(encode(pg.Terminate()) + QUERY)
    assert parser.next_event() == pg.Terminate()
    with pytest.raises(ProtocolError, match="after Terminate"):
        parser.next_event()


@pytest.mark.parametrize(
    ("packet", "match"),
    [
        (b"\x00\x00\x00\x08\x00\x02\x00\x00", "unsupported protocol 2.0"),
        (b"\x00\x00\x00\x08\x04\xd2\x16\x31", "unsupported protocol 1234.5681"),
        (b"\x00\x00\x00\x0c\x04\xd2\x16\x2f\x00\x00\x00\x00", "encryption request of 12"),
        (b"\x00\x00\x00\x0c\x04\xd2\x16\x2e\x00\x00\x00\x01", "CancelRequest of 12"),
        (b"\x00\x00\x00\x04", "invalid length 4"),
        (b"\xff\xff\xff\xf0", "invalid length -16"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "exceeds"),  # direct TLS hello
        (b"\x00\x00\x00\x0d\x00\x03\x00\x00user\x00", "message ends early|unterminated"),
        (b"\x00\x00\x00\x0c\x00\x03\x00\x00u\x00v\x00", "unterminated"),  # no final NUL
    ],
)
def test_invalid_startup_packets(packet: bytes, match: str) -> None:
    parser = FrontendParser()
    parser.receive_data(packet)
    with pytest.raises(ProtocolError, match=match):
        parser.next_event()


def test_startup_size_limit() -> None:
    big = encode(pg.StartupMessage({"options": "x" * 9000}))
    parser = FrontendParser()
    parser.receive_data(big)
    assert isinstance(parser.next_event(), pg.StartupMessage)
    huge = encode(pg.StartupMessage({"options": "x" * 10000}))
    parser = FrontendParser()
    parser.receive_data(huge[:4])  # the header alone is enough to refuse it
    with pytest.raises(ProtocolError, match=f"startup packet of {len(huge)} bytes exceeds"):
        parser.next_event()
    parser = FrontendParser(max_startup_size=len(huge))
    parser.receive_data(huge)
    assert isinstance(parser.next_event(), pg.StartupMessage)


@pytest.mark.parametrize(
    "make",
    [
        lambda m: FrontendParser(startup=False, max_message_size=m),
        lambda m: BackendParser(max_message_size=m),
    ],
    ids=["frontend", "backend"],
)
def test_message_size_limit(make: Callable[[int], FrontendParser | BackendParser]) -> None:
    exact = encode(pg.CopyData(b"x" * 96))  # length field 100
    parser = make(100)
    parser.receive_data(exact)
    assert parser.next_event() == pg.CopyData(b"x" * 96)
    parser = make(99)
    parser.receive_data(exact[:5])
    with pytest.raises(ProtocolError, match="message b'd' of 100 bytes exceeds the limit of 99"):
        parser.next_frame()
    with pytest.raises(UsageError):
        parser.receive_data(b"more")


@pytest.mark.parametrize("length", [-1, 0, 3, -(2**31)])
def test_lengths_below_four_are_refused(length: int) -> None:
    parser = BackendParser()
    parser.receive_data(b"D" + length.to_bytes(4, "big", signed=True))
    with pytest.raises(ProtocolError, match=f"invalid length {length}"):
        parser.next_frame()


def test_unknown_types() -> None:
    parser = FrontendParser(startup=False)
    parser.receive_data(b"Z\x00\x00\x00\x05I")
    with pytest.raises(ProtocolError, match="unknown message type b'Z'"):
        parser.next_frame()
    backend = BackendParser()
    backend.receive_data(b"Q\x00\x00\x00\x06ab" + encode(pg.ReadyForQuery("I")))
    assert backend.next_event() == pg.Unknown(b"Q", b"ab")
    assert backend.next_event() == pg.ReadyForQuery("I")


def test_end_of_stream() -> None:
    parser = BackendParser()
    parser.receive_data(b"")
    assert parser.next_frame() is CLOSED
    assert parser.next_event() is CLOSED
    with pytest.raises(UsageError):
        parser.receive_data(b"x")
    cut = BackendParser()
    cut.receive_data(encode(pg.ReadyForQuery("I"))[:-1])
    assert cut.next_frame() is NEED_DATA
    cut.receive_data(b"")
    with pytest.raises(ProtocolError, match="ended inside a message"):
        cut.next_frame()
    with pytest.raises(UsageError):
        cut.receive_data(b"x")


def test_a_protocol_error_stops_the_parser_and_frees_its_buffer() -> None:
    parser = FrontendParser(startup=False)
    parser.receive_data(b"\x00" + b"y" * 1000)
    with pytest.raises(ProtocolError):
        parser.next_frame()
    assert parser.buffered == 0
    with pytest.raises(ProtocolError, match="earlier error"):
        parser.next_frame()
    with pytest.raises(UsageError):
        parser.receive_data(QUERY)


def test_constructor_limits_are_checked() -> None:
    with pytest.raises(UsageError):
        BackendParser(max_message_size=3)
    with pytest.raises(UsageError):
        FrontendParser(max_startup_size=7)


def test_frames_inside_one_chunk_are_slices_and_a_whole_chunk_is_not_copied() -> None:
    data = encode(pg.DataRow.from_values((b"x" * 100,)))
    parser = BackendParser()
    parser.receive_data(data)
    frame = parser.next_frame()
    assert isinstance(frame, tuple)
    assert frame[1] is data
    parser.receive_data(bytearray(data))  # mutable input is copied once, then sliced
    assert parser.next_frame() == (b"D", data)


def test_frames_straddling_many_chunks() -> None:
    rows = [encode(pg.DataRow.from_values((bytes([i]) * i,))) for i in range(200)]
    stream = b"".join(rows)
    for size in (1, 2, 3, 5, 7, 64, 1000):
        parser = BackendParser()
        frames = []
        for i in range(0, len(stream), size):
            parser.receive_data(stream[i : i + size])
            while (frame := parser.next_frame()) is not NEED_DATA:
                assert isinstance(frame, tuple)
                frames.append(frame[1])
        assert frames == rows
        assert parser.buffered == 0


def test_a_large_message_in_small_chunks_is_joined_once() -> None:
    # Quadratic buffering would copy ~64 GiB here and never finish.
    payload = bytes(range(256)) * (16 * 4096)  # 16 MiB
    data = encode(pg.CopyData(payload))
    parser = BackendParser()
    for i in range(0, len(data), 4096):
        parser.receive_data(data[i : i + 4096])
        if i + 4096 < len(data):
            assert parser.next_frame() is NEED_DATA
            assert parser.buffered == i + 4096
    frame = parser.next_frame()
    assert isinstance(frame, tuple)
    assert frame[1] == data


def test_a_message_trickled_byte_by_byte_is_not_kept_as_one_object_per_byte() -> None:
    data = encode(pg.CopyData(bytes(range(256)) * 400))  # 100 KiB
    parser = BackendParser()
    for i in range(len(data) - 1):
        parser.receive_data(data[i : i + 1])
        assert parser.next_frame() is NEED_DATA
        assert len(parser._more) <= len(data) // 65536 + 1  # 64 KiB pieces, not 1-byte ones
    parser.receive_data(data[-1:])
    assert parser.next_frame() == (b"d", data)
    assert parser.buffered == 0


def test_next_run_returns_whole_runs_and_stops_where_next_frame_must_look() -> None:
    rows = b"".join(encode(pg.DataRow.from_values((str(i).encode(),))) for i in range(10))
    done = encode(pg.CommandComplete("SELECT 10")) + encode(pg.ReadyForQuery("I"))
    parser = BackendParser()
    parser.receive_data(encode(pg.RowDescription.from_fields((pg.FieldDescription("n"),))))
    parser.receive_data(rows + done)
    passthrough = frozenset({b"D", b"d"})
    assert parser.next_run(passthrough) == b""  # RowDescription first: not in the set
    assert isinstance(parser.next_event(), pg.RowDescription)
    assert parser.next_run(passthrough) == rows
    assert parser.next_run(passthrough) == b""
    assert parser.next_event() == pg.CommandComplete("SELECT 10")
    assert parser.next_event() == pg.ReadyForQuery("I")
    assert parser.next_run(passthrough) == b""


def test_next_run_never_passes_what_next_frame_would_refuse() -> None:
    parser = FrontendParser(startup=False, max_message_size=50)
    copy = encode(pg.CopyData(b"abc"))
    parser.receive_data(copy + encode(pg.CopyData(b"x" * 60)))
    assert parser.next_run(frozenset({b"d", b"X"})) == copy
    with pytest.raises(ProtocolError, match="exceeds"):
        parser.next_frame()
    terminate = FrontendParser(startup=False)
    terminate.receive_data(encode(pg.Terminate()) + copy)
    assert terminate.next_run(frozenset({b"d", b"X"})) == b""  # Terminate changes state
    startup = FrontendParser()
    startup.receive_data(copy)
    assert startup.next_run(frozenset({b"d"})) == b""


def test_next_run_and_next_frame_together_cover_the_stream() -> None:
    msgs = [
        pg.DataRow.from_values((b"v" * (i % 13),)) if i % 5 else pg.CommandComplete("x")
        for i in range(300)
    ]
    stream = b"".join(map(encode, msgs))
    for size in (1, 9, 100, 4096):
        parser = BackendParser()
        out = []
        for i in range(0, len(stream), size):
            parser.receive_data(stream[i : i + size])
            while True:
                out.append(parser.next_run(frozenset({b"D"})))
                frame = parser.next_frame()
                if frame is NEED_DATA:
                    break
                assert isinstance(frame, tuple)
                out.append(frame[1])
        assert b"".join(out) == stream


def test_encryption_answers_from_the_server() -> None:
    for answer in (b"N", b"S", b"G"):
        parser = BackendParser()
        assert parser.next_encryption_answer() is NEED_DATA
        parser.receive_data(answer)
        assert parser.next_encryption_answer() == answer
        assert parser.buffered == 0
    refused = BackendParser()
    refused.receive_data(b"N" + encode(pg.AuthenticationOk()))
    assert refused.next_encryption_answer() == b"N"
    assert refused.next_event() == pg.AuthenticationOk()
    old = BackendParser()
    error = encode(pg.ErrorResponse.build("FATAL", "08P01", "unsupported frontend protocol"))
    old.receive_data(error)
    assert old.next_encryption_answer() == b"E"
    assert isinstance(old.next_event(), pg.ErrorResponse)


def test_bytes_injected_after_an_ssl_yes_are_refused() -> None:
    parser = BackendParser()
    parser.receive_data(b"S" + encode(pg.AuthenticationOk()))  # CVE-2021-23222
    with pytest.raises(ProtocolError, match="unencrypted bytes"):
        parser.next_encryption_answer()
    junk = BackendParser()
    junk.receive_data(b"x")
    with pytest.raises(ProtocolError, match="invalid answer"):
        junk.next_encryption_answer()
    closed = BackendParser()
    closed.receive_data(b"")
    assert closed.next_encryption_answer() is CLOSED


def test_buffered_stays_below_one_message_plus_one_read() -> None:
    limit = 1000
    parser = BackendParser(max_message_size=limit)
    message = encode(pg.CopyData(b"z" * (limit - 4)))
    stream = message * 5
    read = 333
    for i in range(0, len(stream), read):
        chunk = stream[i : i + read]
        parser.receive_data(chunk)
        assert parser.buffered <= 1 + limit + len(chunk)
        while parser.next_frame() is not NEED_DATA:
            pass
        assert parser.buffered < 1 + limit


def test_pgwire_imports_only_non_io_stdlib_modules() -> None:
    allowed = {"__future__", "collections", "dataclasses", "enum", "struct", "typing"}
    package = Path(pg.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert name.startswith("bastion.pgwire") or top in allowed, (path.name, name)
                assert top in sys.stdlib_module_names or top == "bastion"


def test_lone_frame_takes_exactly_one_whole_message_when_nothing_is_buffered() -> None:
    parser = FrontendParser(startup=False)
    assert parser.lone_frame(QUERY) == (b"Q", QUERY)
    assert parser.lone_frame(QUERY) == (b"Q", QUERY)  # nothing was buffered by it
    assert parser.next_frame() is NEED_DATA
    sync = encode(pg.Sync())
    refused = {
        "two messages": QUERY + sync,
        "a cut-off message": QUERY[:-1],
        "trailing bytes": QUERY + b"Q",
        "a header alone": QUERY[:5],
        "a short read": b"Q\0\0",
        "a bytearray": bytearray(QUERY),
        "Terminate (changes state)": encode(pg.Terminate()),
        "an unknown type": b"\x01\0\0\0\x04",
        "a length below four": b"Q\0\0\0\x03",
        "a negative length": b"Q\xff\xff\xff\xff",
    }
    for what, data in refused.items():
        assert parser.lone_frame(data) is None, what  # type: ignore[arg-type]
    assert parser.next_frame() is NEED_DATA  # and none of it was buffered either


def test_lone_frame_declines_whenever_next_frame_would_not_return_it_at_once() -> None:
    buffered = FrontendParser(startup=False)
    buffered.receive_data(QUERY[:3])
    assert buffered.lone_frame(QUERY) is None  # it must come after those three bytes
    in_startup = FrontendParser()
    assert in_startup.lone_frame(QUERY) is None
    small = FrontendParser(startup=False, max_message_size=len(QUERY) - 2)
    assert small.lone_frame(QUERY) is None
    with pytest.raises(ProtocolError, match="exceeds"):
        small.receive_data(QUERY)
        small.next_frame()
    ended = FrontendParser(startup=False)
    ended.receive_data(b"")
    assert ended.lone_frame(QUERY) is None
    stopped = FrontendParser(startup=False)
    stopped.receive_data(b"\x01\0\0\0\x04")
    with pytest.raises(ProtocolError):
        stopped.next_frame()
    assert stopped.lone_frame(QUERY) is None
    finished = FrontendParser(startup=False)
    finished.receive_data(encode(pg.Terminate()))
    assert finished.next_frame() == (b"X", encode(pg.Terminate()))
    assert finished.lone_frame(QUERY) is None


_READS = st.one_of(
    st.binary(max_size=12),
    st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=30).map(
        lambda sql: encode(pg.Query(sql))
    ),
    st.sampled_from([encode(pg.Sync()), encode(pg.Terminate()), QUERY + encode(pg.Sync())]),
)


@given(st.lists(_READS, max_size=3), _READS)
def test_lone_frame_agrees_with_next_frame(before: list[bytes], data: bytes) -> None:
    """Whatever was read before, a frame from `lone_frame(data)` is what feeding `data`
    would have given `next_frame()`, with nothing left over; None changes nothing."""

    def parser_after_reads() -> FrontendParser:
        parser = FrontendParser(startup=False, max_message_size=30)
        for read in before:
            parser.receive_data(read)  # b"" is the end of the stream: the last read
            try:
                while isinstance(parser.next_frame(), tuple):
                    pass
            except ProtocolError:
                break
            if not read:
                break
        return parser

    ours, theirs = parser_after_reads(), parser_after_reads()
    buffered = ours.buffered
    frame = ours.lone_frame(data)
    assert ours.buffered == buffered
    if frame is None:
        return
    theirs.receive_data(data)
    assert theirs.next_frame() == frame
    assert theirs.next_frame() is NEED_DATA
    assert ours.next_frame() is NEED_DATA
