"""pgtext: SQL bytes read as the server reads them (client_encoding, standard strings)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion import sqlclass
from bastion.pgtext import ASCII_TRAILING, Settings, Unreadable, read_sql, shown

UTF8 = Settings()
SJIS = Settings("SJIS")
# SJIS 0x95 0x5C is one character (表); a reader of any transparent encoding sees 0x95
# then a backslash, which escapes the quote in an E'' string: the DROP inside it.
HIDDEN = b"select E'\x95\\'; drop table sentinel; --'"


def test_ascii_is_one_reading_in_every_encoding() -> None:
    for encoding in ["UTF8", "SJIS", "LATIN1", "BIG5", "GB18030"]:
        assert read_sql(b"select 1", Settings(encoding)).texts == ("select 1",)


def test_sjis_bytes_are_read_with_the_servers_character_boundaries() -> None:
    reading = read_sql(HIDDEN, SJIS)
    assert reading.texts == ("select E'表'; drop table sentinel; --'",)
    verdict = sqlclass.check_sql(reading.texts[0], sqlclass.compile_rules())
    assert verdict is not None and verdict.reasons[0].startswith("DROP TABLE")


def test_bytes_that_are_not_text_in_the_session_encoding_are_unreadable() -> None:
    with pytest.raises(Unreadable, match="not valid UTF8"):
        read_sql(HIDDEN, UTF8)
    with pytest.raises(Unreadable, match="cut short"):
        read_sql(b"select '\x95", SJIS)


def test_in_a_transparent_encoding_the_backslash_escapes_the_quote() -> None:
    # As a LATIN1 server reads it: one statement, the DROP inside the literal.
    [text] = read_sql(HIDDEN, Settings("LATIN1")).texts
    assert sqlclass.check_sql(text, sqlclass.compile_rules()) is None


def test_while_settings_may_change_every_reading_the_server_could_make_is_returned() -> None:
    # LATIN1 now, a SET client_encoding in flight: JOHAB would read 0x84 0x3B as one
    # character, the semicolon swallowed. Every reading is returned, to be judged.
    raw = b"SELECT 1 x\x84;DROP TABLE t"
    readings = read_sql(raw, Settings("LATIN1"), uncertain=True).texts
    assert "SELECT 1 x\x84;DROP TABLE t" in readings
    assert "SELECT 1 x\ufffdDROP TABLE t" in readings
    with pytest.raises(Unreadable, match="standard_conforming_strings"):
        read_sql(HIDDEN, Settings("LATIN1"), uncertain=True)  # and E'' is read no way


@pytest.mark.parametrize(
    ("settings_", "uncertain"),
    [(Settings(standard_conforming_strings=False), False), (UTF8, True)],
    ids=["scs-off", "scs-may-be-off"],
)
def test_a_backslash_is_unreadable_where_standard_strings_are_or_may_be_off(
    settings_: Settings, uncertain: bool
) -> None:
    with pytest.raises(Unreadable, match="standard_conforming_strings"):
        read_sql(b"select '\\'; drop table t; --'", settings_, uncertain=uncertain)
    # Without a backslash both settings scan the same.
    assert read_sql(b"select 'a'", settings_, uncertain=uncertain).texts == ("select 'a'",)


def test_with_standard_strings_on_a_backslash_is_plain_text() -> None:
    assert read_sql(b"select '\\'", UTF8).texts == ("select '\\'",)


def test_settings_follow_the_servers_parameter_status() -> None:
    s = UTF8.with_parameter("client_encoding", "sjis")
    assert s.client_encoding == "SJIS" and not s.default
    s = s.with_parameter("standard_conforming_strings", "off")
    assert not s.standard_conforming_strings
    assert s.with_parameter("TimeZone", "UTC") is s
    assert UTF8.with_parameter("client_encoding", "UNICODE").default


def test_an_unknown_encoding_is_unreadable() -> None:
    with pytest.raises(Unreadable, match="not one the gate can read"):
        read_sql("é".encode(), Settings("KLINGON"))


def test_shown_text_never_has_a_lone_surrogate() -> None:
    text = shown(b"select '\xff\xfe'", UTF8)
    text.encode("utf-8")  # would raise on a surrogate
    assert shown("select '€'".encode("iso8859-15"), Settings("LATIN9")) == "select '€'"


_CODECS = {
    "SJIS": "cp932",
    "BIG5": "cp950",
    "GBK": "gbk",
    "UHC": "cp949",
    "GB18030": "gb18030",
    "JOHAB": "johab",
    "SHIFT_JIS_2004": "shift_jis_2004",
}


@settings(max_examples=300, deadline=None)
@given(
    encoding=st.sampled_from(sorted(ASCII_TRAILING)),
    text=st.text(
        alphabet=st.sampled_from("abc '\\;-$/*\"表予能ソ十申€中文한국어功夫"), max_size=30
    ),
)
def test_the_reading_of_text_a_client_encoded_is_that_text(encoding: str, text: str) -> None:
    """Whatever a client encodes in one of the seven, the gate reads back exactly: the
    server's character boundaries agree with the codec's."""
    codec = _CODECS[encoding]
    try:
        raw = text.encode(codec)
    except UnicodeEncodeError:
        return
    if any(c.isascii() and c.encode(codec) != c.encode() for c in text):
        return  # Python's codec, not the client, turned an ASCII character into two bytes
    assert read_sql(raw, Settings(encoding)).texts == (text,)
