"""pgwire messages: every type encoded, then parsed three ways (h11's style): the whole
input, one byte at a time, and followed by trailing data that must come out intact."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bastion import pgwire as pg
from bastion.pgwire import (
    CLOSED,
    NEED_DATA,
    BackendParser,
    FrontendParser,
    Message,
    ProtocolError,
    UsageError,
    encode,
)

ParserFactory = Callable[[], FrontendParser | BackendParser]

# Untyped packets of the frontend's startup phase.
STARTUP_SAMPLES: list[Message] = [
    pg.SSLRequest(),
    pg.GSSENCRequest(),
    pg.StartupMessage({"user": "agent", "database": "app", "application_name": "psql"}),
    pg.StartupMessage({}, protocol=3 << 16 | 2),
    pg.StartupMessage({"user": "ünïcode", "options": "-c search_path=x"}),
]
CANCEL_SAMPLES: list[Message] = [
    pg.CancelRequest(4242, b"\x01\x02\x03\x04"),
    pg.CancelRequest(-1, bytes(range(32))),  # protocol 3.2: longer keys
]
FRONTEND_SAMPLES: list[Message] = [
    pg.Query("select 1"),
    pg.Query(""),
    pg.Query("select 'é'; drop table t"),
    pg.Parse("", "select $1::int, $2", (23, 0)),
    pg.Parse("stmt1", "select now()"),
    pg.Parse("big", "select", (0xFFFFFFFF,)),
    pg.Bind("", "", (), (), ()),
    pg.Bind("p1", "stmt1", (1,), (b"\x00\x00\x00\x2a", None, b""), (0, 1)),
    pg.Bind("", "s", (0, 1), (b"text", b"\x01"), (1,)),
    pg.Describe("S", "stmt1"),
    pg.Describe("P"),
    pg.Execute(),
    pg.Execute("p1", 100),
    pg.Sync(),
    pg.Flush(),
    pg.Close("S", "stmt1"),
    pg.Close("P", ""),
    pg.CopyData(b"1\tone\n"),
    pg.CopyData(b""),
    pg.CopyDone(),
    pg.CopyFail("client aborted"),
    pg.FunctionCall(b"\x00\x00\x04\xd2\x00\x00\x00\x00\x00\x00"),
    pg.AuthResponse(b"md5abcdef\x00"),
]
# Encodable, but parsed as AuthResponse: the 'p' type depends on the server's request.
AUTH_ANSWER_SAMPLES: list[Message] = [
    pg.PasswordMessage("s3cret"),
    pg.PasswordMessage(""),
    pg.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc"),
    pg.SASLInitialResponse("SCRAM-SHA-256", None),
    pg.SASLResponse(b"c=biws,r=abc,p=xyz"),
]
BACKEND_SAMPLES: list[Message] = [
    pg.AuthenticationOk(),
    pg.AuthenticationCleartextPassword(),
    pg.AuthenticationMD5Password(b"\x01\x02\x03\x04"),
    pg.AuthenticationSASL(("SCRAM-SHA-256", "SCRAM-SHA-256-PLUS")),
    pg.AuthenticationSASLContinue(b"r=abc,s=salt,i=4096"),
    pg.AuthenticationSASLFinal(b"v=signature"),
    pg.AuthenticationOther(7),
    pg.AuthenticationOther(8, b"gss token"),
    pg.ParameterStatus("server_version", "15.4"),
    pg.ParameterStatus("client_encoding", "UTF8"),
    pg.BackendKeyData(1234, b"\xde\xad\xbe\xef"),
    pg.BackendKeyData(-7, bytes(256)),
    pg.ReadyForQuery("I"),
    pg.ReadyForQuery("T"),
    pg.ReadyForQuery("E"),
    pg.RowDescription.from_fields(
        (pg.FieldDescription("id", 16384, 1, 23, 4, -1, 0), pg.FieldDescription("name"))
    ),
    pg.RowDescription.from_fields(()),
    pg.DataRow.from_values((b"1", None, b"")),
    pg.DataRow.from_values(()),
    pg.CommandComplete("SELECT 3"),
    pg.CommandComplete("INSERT 0 1"),
    pg.CommandComplete("CREATE TABLE"),
    pg.EmptyQueryResponse(),
    pg.ErrorResponse.build("ERROR", "42501", "permission denied", detail="d", hint="h"),
    pg.ErrorResponse({"S": "FATAL", "C": "08P01", "M": "bye", "P": "17"}),
    pg.ErrorResponse({}),
    pg.NoticeResponse.build("NOTICE", "00000", "approval required, request a-1"),
    pg.ParseComplete(),
    pg.BindComplete(),
    pg.CloseComplete(),
    pg.NoData(),
    pg.PortalSuspended(),
    pg.ParameterDescription((23, 25, 0xFFFFFFFF)),
    pg.ParameterDescription(()),
    pg.CopyInResponse(0, (0, 0)),
    pg.CopyOutResponse(1, (1,)),
    pg.CopyBothResponse(0),
    pg.CopyData(b"row\n"),
    pg.CopyDone(),
    pg.NotificationResponse(99, "jobs", "payload"),
    pg.NotificationResponse(99, "jobs"),
    pg.NegotiateProtocolVersion(0, ("_pq_.option",)),
    pg.NegotiateProtocolVersion(2),
    pg.FunctionCallResponse(b"\x00\x01"),
    pg.FunctionCallResponse(None),
    pg.Unknown(b"?", b"future message"),
    pg.Unknown(b"\xff", b""),
]


def drain(parser: FrontendParser | BackendParser) -> list[Message]:
    """Every message the parser can give now; stops at NEED_DATA or CLOSED."""
    found: list[Message] = []
    while True:
        event = parser.next_event()
        if event is NEED_DATA or event is CLOSED:
            return found
        found.append(event)


def feed_bytewise(parser: FrontendParser | BackendParser, data: bytes) -> list[Message]:
    found: list[Message] = []
    for i in range(len(data)):
        parser.receive_data(data[i : i + 1])
        found += drain(parser)
    return found


def as_parsed(msg: Message) -> Message:
    """What a parser gives back for `msg` (the 'p' family comes back as AuthResponse)."""
    if isinstance(msg, pg.PasswordMessage | pg.SASLInitialResponse | pg.SASLResponse):
        return pg.AuthResponse(encode(msg)[5:])
    return msg


def _factory(side: str, msg: Message) -> tuple[ParserFactory, Message]:
    """A parser for `side` that accepts `msg`, and a message that may follow it."""
    if side == "startup":
        if isinstance(msg, pg.StartupMessage):
            return FrontendParser, pg.Query("select 2")  # the parser switched to typed
        return FrontendParser, pg.StartupMessage({"user": "u"})
    if side == "frontend":
        return lambda: FrontendParser(startup=False), pg.Sync()
    return BackendParser, pg.ReadyForQuery("I")


CASES = (
    [("startup", m) for m in STARTUP_SAMPLES]
    + [("frontend", m) for m in FRONTEND_SAMPLES + AUTH_ANSWER_SAMPLES]
    + [("backend", m) for m in BACKEND_SAMPLES]
)
CANCEL_CASES = [("startup", m) for m in CANCEL_SAMPLES]
IDS = [f"{side}:{msg!r}"[:80] for side, msg in CASES + CANCEL_CASES]


@pytest.mark.parametrize(("side", "msg"), CASES + CANCEL_CASES, ids=IDS)
def test_whole(side: str, msg: Message) -> None:
    make, _ = _factory(side, msg)
    parser = make()
    data = encode(msg)
    parser.receive_data(data)
    (parsed,) = drain(parser)
    assert parsed == as_parsed(msg)
    assert type(parsed) is type(as_parsed(msg))
    assert parsed.raw == data
    assert encode(parsed) == data
    parser.receive_data(b"")
    assert parser.next_event() is CLOSED


@pytest.mark.parametrize(("side", "msg"), CASES + CANCEL_CASES, ids=IDS)
def test_one_byte_at_a_time(side: str, msg: Message) -> None:
    make, _ = _factory(side, msg)
    data = encode(msg)
    parser = make()
    (parsed,) = feed_bytewise(parser, data)
    assert parsed == as_parsed(msg)
    assert parsed.raw == data
    assert parser.buffered == 0


@pytest.mark.parametrize(("side", "msg"), CASES, ids=IDS[: len(CASES)])
def test_followed_by_trailing_data(side: str, msg: Message) -> None:
    make, follower = _factory(side, msg)
    data = encode(msg) + encode(follower)
    for chunks in ([data], [data[:-1], data[-1:]], [data[i : i + 1] for i in range(len(data))]):
        parser = make()
        found: list[Message] = []
        for chunk in chunks:
            parser.receive_data(chunk)
            found += drain(parser)
        assert found == [as_parsed(msg), follower]
        assert found[0].raw == encode(msg)
        assert found[1].raw == encode(follower)


@pytest.mark.parametrize(("side", "msg"), CASES, ids=IDS[: len(CASES)])
def test_frames_decode_like_events(side: str, msg: Message) -> None:
    make, _ = _factory(side, msg)
    parser = make()
    data = encode(msg)
    parser.receive_data(data + data)
    frame = parser.next_frame()
    assert frame == (b"" if side == "startup" else data[:1], data)
    assert not isinstance(frame, pg.Signal)
    assert parser.decode(frame) == as_parsed(msg)
    if not isinstance(msg, pg.StartupMessage):
        assert parser.next_event() == as_parsed(msg)


def test_mixed_sequence_of_a_session() -> None:
    hello = [*STARTUP_SAMPLES[:2], pg.StartupMessage({"user": "u"}), pg.PasswordMessage("pw")]
    client = [*hello, *FRONTEND_SAMPLES, pg.Terminate()]
    data = b"".join(map(encode, client))
    for step in (1, 3, 7, 64, len(data)):
        parser = FrontendParser()
        found: list[Message] = []
        for i in range(0, len(data), step):
            parser.receive_data(data[i : i + step])
            found += drain(parser)
        parser.receive_data(b"")
        assert parser.next_event() is CLOSED
        assert found == [as_parsed(m) for m in client]
        assert b"".join(m.raw for m in found) == data


def test_password_and_sasl_answers_read_by_the_helpers() -> None:
    password, _, initial, initial_empty, response = (
        pg.AuthResponse(encode(m)[5:], raw=encode(m)) for m in AUTH_ANSWER_SAMPLES
    )
    assert password.as_password() == pg.PasswordMessage("s3cret")
    assert password.as_password().raw == password.raw
    assert initial.as_sasl_initial() == pg.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert initial_empty.as_sasl_initial().data is None
    assert response.as_sasl() == pg.SASLResponse(b"c=biws,r=abc,p=xyz")
    with pytest.raises(ProtocolError):
        pg.AuthResponse(b"no terminator").as_password()
    with pytest.raises(ProtocolError):
        pg.AuthResponse(b"SCRAM-SHA-256\x00\x00\x00").as_sasl_initial()


def test_row_helpers() -> None:
    row = pg.DataRow.from_values((b"42", None, b"x" * 300))
    assert row.column_count == 3
    assert row.values() == (b"42", None, b"x" * 300)
    fields = (pg.FieldDescription("id", 1, 2, 23, 4, -1, 1), pg.FieldDescription("é"))
    description = pg.RowDescription.from_fields(fields)
    assert description.field_count == 2
    assert description.fields() == fields
    with pytest.raises(ProtocolError):
        pg.DataRow(b"\x00\x02\x00\x00\x00\x01x").values()  # says 2 columns, has 1
    with pytest.raises(ProtocolError):
        pg.DataRow(b"\x00\x01\xff\xff\xff\xfe").values()  # length -2
    with pytest.raises(ProtocolError):
        pg.RowDescription(b"\x00\x01id\x00\x00").fields()


@pytest.mark.parametrize(
    ("tag", "rows"),
    [
        ("SELECT 3", 3),
        ("INSERT 0 12", 12),
        ("UPDATE 0", 0),
        ("DELETE 7", 7),
        ("COPY 200000", 200000),
        ("MERGE 2", 2),
        ("FETCH 5", 5),
        ("CREATE TABLE", None),
        ("BEGIN", None),
        ("", None),
    ],
)
def test_command_complete_rows(tag: str, rows: int | None) -> None:
    assert pg.CommandComplete(tag).rows == rows


def test_diagnostic_fields() -> None:
    error = pg.ErrorResponse.build("ERROR", "42501", "denied", hint="ask")
    assert (error.severity, error.sqlstate, error.message) == ("ERROR", "42501", "denied")
    assert error.fields["H"] == "ask"
    assert pg.NoticeResponse({"S": "AVISO", "V": "WARNING"}).severity == "WARNING"
    assert pg.ErrorResponse({}).sqlstate == ""
    notice: Message = pg.NoticeResponse(error.fields)
    assert error != notice  # same fields, different message


def test_text_that_is_not_utf8_survives_byte_for_byte() -> None:
    body = b"select 'caf\xe9'\x00"  # LATIN1 client_encoding: not UTF-8
    data = b"Q" + (4 + len(body)).to_bytes(4, "big") + body
    parser = FrontendParser(startup=False)
    parser.receive_data(data)
    (query,) = drain(parser)
    assert isinstance(query, pg.Query)
    assert encode(query) == data


def test_messages_are_frozen_hashable_and_raw_is_not_compared() -> None:
    query = pg.Query("select 1", raw=b"whatever")
    assert query == pg.Query("select 1")
    assert hash(query) == hash(pg.Query("select 1"))
    assert "whatever" not in repr(query)
    with pytest.raises(AttributeError):
        query.sql = "drop table t"  # type: ignore[misc]
    assert hash(pg.StartupMessage({"user": "u"}))  # the dict is left out of the hash
    assert isinstance(pg.CopyData(b""), pg.FrontendMessage)
    assert isinstance(pg.CopyData(b""), pg.BackendMessage)


def test_encoding_the_gateway_answers() -> None:
    assert pg.ENCRYPTION_REFUSED == b"N"
    assert encode(pg.AuthenticationOk()) == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    assert encode(pg.ReadyForQuery("I")) == b"Z\x00\x00\x00\x05I"
    assert encode(pg.Sync()) == b"S\x00\x00\x00\x04"
    assert encode(pg.Terminate()) == b"X\x00\x00\x00\x04"
    assert encode(pg.SSLRequest()) == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    assert encode(pg.CancelRequest(1, b"\x00\x00\x00\x02")) == (
        b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x00\x01\x00\x00\x00\x02"
    )
    assert encode(pg.StartupMessage({"user": "u"})) == (
        b"\x00\x00\x00\x10\x00\x03\x00\x00user\x00u\x00\x00"
    )


@pytest.mark.parametrize(
    "msg",
    [
        pg.Query("select \0"),
        pg.Query("\udfff"),  # a lone surrogate outside surrogateescape's range
        pg.ParameterStatus("a\0", "b"),
        pg.ReadyForQuery("X"),  # type: ignore[arg-type]
        pg.Describe("Q"),  # type: ignore[arg-type]
        pg.Close(""),  # type: ignore[arg-type]
        pg.Execute("", 2**31),
        pg.Parse("", "", (-1,)),
        pg.Parse("", "", (2**32,)),
        pg.Bind("", "", (2**15,)),
        pg.BackendKeyData(2**31, b"1234"),
        pg.BackendKeyData(1, b"123"),
        pg.CancelRequest(1, b""),
        pg.AuthenticationMD5Password(b"12345"),
        pg.AuthenticationSASL(()),
        pg.AuthenticationOther(0),
        pg.ErrorResponse({"SS": "x"}),
        pg.ErrorResponse({"\0": "x"}),
        pg.ErrorResponse({"\u0100": "x"}),
        pg.CopyOutResponse(256),
        pg.StartupMessage({"": "x"}),
        pg.StartupMessage({"user": "u"}, protocol=2 << 16),
        pg.Unknown(b"", b""),
        pg.Message(),
    ],
    ids=repr,
)
def test_what_cannot_be_encoded_is_a_usage_error(msg: Message) -> None:
    with pytest.raises(UsageError):
        encode(msg)


@pytest.mark.parametrize(
    ("typed", "data"),
    [
        (b"Q", b"select 1"),  # no terminator
        (b"Q", b"select 1\x00junk"),
        (b"P", b"\x00q\x00\x00\x02\x00\x00\x00\x17"),  # two OIDs announced, one sent
        (b"B", b"\x00\x00\x00\x02\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00"),
        (b"B", b"\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00"),  # value length -2
        (b"D", b"X\x00"),
        (b"C", b"S"),
        (b"E", b"\x00\x00\x00\x00"),  # max_rows cut short
        (b"S", b"\x00"),
        (b"X", b"?"),
        (b"f", b""),
    ],
)
def test_malformed_frontend_bodies(typed: bytes, data: bytes) -> None:
    parser = FrontendParser(startup=False)
    parser.receive_data(typed + (4 + len(data)).to_bytes(4, "big") + data)
    with pytest.raises(ProtocolError):
        parser.next_event()
    with pytest.raises(ProtocolError, match="earlier error"):
        parser.next_event()


@pytest.mark.parametrize(
    ("typed", "data"),
    [
        (b"R", b"\x00\x00"),
        (b"R", b"\x00\x00\x00\x00x"),
        (b"R", b"\x00\x00\x00\x05\x01\x02"),
        (b"R", b"\x00\x00\x00\x0a\x00"),  # SASL with no mechanism
        (b"Z", b"X"),
        (b"Z", b"II"),
        (b"Z", b""),
        (b"K", b"\x00\x00\x00\x01\x00"),
        (b"D", b"\x00"),
        (b"T", b""),
        (b"E", b"Mno terminator"),
        (b"N", b"Mmsg\x00"),  # the list's final NUL missing
        (b"S", b"name\x00"),
        (b"1", b"x"),
        (b"t", b"\x00\x01"),
        (b"H", b"\x00\x00\x02\x00\x00"),
        (b"A", b"\x00\x00\x00\x01chan\x00"),
        (b"v", b"\x00\x00\x00\x00\xff\xff\xff\xff"),
        (b"V", b"\xff\xff\xff\xfe"),
    ],
)
def test_malformed_backend_bodies(typed: bytes, data: bytes) -> None:
    parser = BackendParser()
    parser.receive_data(typed + (4 + len(data)).to_bytes(4, "big") + data)
    with pytest.raises(ProtocolError):
        parser.next_event()


def test_decode_refuses_frames_it_did_not_cut() -> None:
    with pytest.raises(UsageError):
        pg.decode_frontend((b"Q", b"Q\x00\x00\x00\x09x\x00"))
    with pytest.raises(UsageError):
        pg.decode_backend((b"Z", b"Q\x00\x00\x00\x05I"))
    with pytest.raises(ProtocolError):
        pg.decode_backend((b"", b"\x00\x00\x00\x08\x04\xd2\x16\x2f"))


# -- the one-field readers a relay uses on every statement ----------------------------


def _frame(typed: bytes, body: bytes) -> pg.Frame:
    return typed, typed + (4 + len(body)).to_bytes(4, "big") + body


@pytest.mark.parametrize(
    "body",
    [b"select 1\x00", b"\x00", b"select 'caf\xe9'\x00", b"SELECT 1; DROP TABLE t\x00"],
)
def test_query_text_and_command_tag_read_what_decoding_reads(body: bytes) -> None:
    query, complete = _frame(b"Q", body), _frame(b"C", body)
    decoded_query = pg.decode_frontend(query)
    decoded_complete = pg.decode_backend(complete)
    assert isinstance(decoded_query, pg.Query)
    assert isinstance(decoded_complete, pg.CommandComplete)
    assert pg.query_text(query) == decoded_query.sql
    assert pg.command_tag(complete) == decoded_complete.tag


@pytest.mark.parametrize("body", [b"", b"no terminator", b"two\x00strings\x00", b"\x00trailing"])
def test_query_text_and_command_tag_refuse_what_decoding_refuses(body: bytes) -> None:
    for typed, read, decode in (
        (b"Q", pg.query_text, pg.decode_frontend),
        (b"C", pg.command_tag, pg.decode_backend),
    ):
        frame = _frame(typed, body)
        with pytest.raises(ProtocolError) as decoding:
            decode(frame)
        with pytest.raises(ProtocolError) as reading:
            read(frame)
        assert str(reading.value) == str(decoding.value)


def test_query_text_and_command_tag_of_another_message_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="Parse"):
        pg.query_text(_frame(b"P", b"\x00select 1\x00\x00\x00"))
    with pytest.raises(UsageError, match="EmptyQueryResponse"):
        pg.command_tag(_frame(b"I", b""))


def test_tag_rows_is_what_command_complete_reports() -> None:
    for tag in ("SELECT 3", "INSERT 0 12", "CREATE TABLE", "", "COPY 200000"):
        assert pg.tag_rows(tag) == pg.CommandComplete(tag).rows
