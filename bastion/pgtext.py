"""SQL text as the PostgreSQL server will read it: the client's bytes, its encoding, its
settings.

Responsible for: turning the bytes of a Query or Parse into the text(s) the statement gate
classifies, so that the gate reads exactly what the server will parse. The server converts
the client's bytes from `client_encoding` to its own encoding and only then scans them, and
its scanner reads backslashes in '...' literals as escapes when
`standard_conforming_strings` is off. Both settings are the client's to change (`SET`,
`set_config()`, the startup packet), so a reader that assumed UTF-8 and standard strings
could be shown a `DROP` hidden inside what it took for a string literal.

How the reading is made exact, by construction rather than by a list of tricks:

- Only the *ASCII skeleton* of a text decides how it is scanned: quotes, backslashes,
  `$`, `-`, `/`, `*`, semicolons, letters of keywords are all ASCII, and every non-ASCII
  character is, to the scanner, an identifier character or the content of a literal.
  In every encoding the server can use (UTF8, the EUC family, the single-byte ones) a
  byte below 0x80 is that ASCII character and every byte of a multi-byte character is
  0x80 or above: those encodings are *transparent*, and any decoding that keeps ASCII
  bytes and turns the others into non-ASCII characters has the server's skeleton.
- Seven encodings a client may choose, but no database may use, put ASCII bytes inside
  multi-byte characters (SJIS's second byte may be 0x5C, a backslash): BIG5, GB18030,
  GBK, JOHAB, SJIS, SHIFT_JIS_2004, UHC. For those, characters are delimited with the
  server's own rules (`pg_*_mblen` in PostgreSQL's `wchar.c`), and the decoded text is
  checked to have that skeleton; Python's codec is used for the words when it agrees.
- With `standard_conforming_strings` off, a text holding a backslash is not read: the
  gate holds it (`Unreadable`). Without a backslash, both settings scan the same.
- When the settings may be changing under the text (a statement that could change them
  is still running: `uncertain`), every reading the server could make is returned: the
  current encoding's, a transparent one's and each of the seven's, and a backslash is
  unreadable under the possibility of `standard_conforming_strings = off`.

Not responsible for: knowing the settings (the gate tracks the server's ParameterStatus
messages) or classifying statements (`sqlclass`). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# The server's names (as ParameterStatus reports client_encoding) -> Python's codec.
_CODECS: dict[str, str] = {
    "UTF8": "utf-8",
    "SQL_ASCII": "latin-1",  # bytes as they are; the server checks them in its own encoding
    "LATIN1": "latin-1",
    "LATIN2": "iso8859-2",
    "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9",
    "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5",
    "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7",
    "ISO_8859_8": "iso8859-8",
    "WIN866": "cp866",
    "WIN874": "cp874",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    "WIN1253": "cp1253",
    "WIN1254": "cp1254",
    "WIN1255": "cp1255",
    "WIN1256": "cp1256",
    "WIN1257": "cp1257",
    "WIN1258": "cp1258",
    "KOI8R": "koi8-r",
    "KOI8U": "koi8-u",
    "EUC_JP": "euc_jp",
    "EUC_JIS_2004": "euc_jis_2004",
    "EUC_KR": "euc_kr",
    "EUC_CN": "gb2312",
    "EUC_TW": "latin-1",  # no Python codec: words unreadable, skeleton exact (transparent)
    "MULE_INTERNAL": "latin-1",
    # The seven whose multi-byte characters may hold ASCII bytes.
    "SJIS": "cp932",
    "SHIFT_JIS_2004": "shift_jis_2004",
    "BIG5": "cp950",
    "GBK": "gbk",
    "UHC": "cp949",
    "GB18030": "gb18030",
    "JOHAB": "johab",
}


def _sjis(data: bytes, i: int) -> int:
    b = data[i]
    return 1 if b < 0x80 or 0xA1 <= b <= 0xDF else 2


def _two(data: bytes, i: int) -> int:
    return 1 if data[i] < 0x80 else 2


def _gb18030(data: bytes, i: int) -> int:
    if data[i] < 0x80:
        return 1
    return 4 if i + 1 < len(data) and 0x30 <= data[i + 1] <= 0x39 else 2


def _johab(data: bytes, i: int) -> int:  # pg_johab_mblen is pg_euc_mblen
    b = data[i]
    return 1 if b < 0x80 else 3 if b == 0x8F else 2


# The character lengths of the seven, as the server's pg_*_mblen computes them.
_MBLEN: dict[str, Callable[[bytes, int], int]] = {
    "SJIS": _sjis,
    "SHIFT_JIS_2004": _sjis,
    "BIG5": _two,
    "GBK": _two,
    "UHC": _two,
    "GB18030": _gb18030,
    "JOHAB": _johab,
}
ASCII_TRAILING = frozenset(_MBLEN)
# One transparent encoding stands for all of them: their skeletons are the same.
_TRANSPARENT = "UTF8"
_STAND_IN = "\ufffd"  # a multi-byte character whose words are not known


@dataclass(frozen=True, slots=True)
class Settings:
    """What of the session decides how the server reads a statement's text."""

    client_encoding: str = "UTF8"
    standard_conforming_strings: bool = True

    def with_parameter(self, name: str, value: str) -> Settings:
        """These settings after the server's ParameterStatus `name` = `value`."""
        if name == "client_encoding":
            return Settings(_canonical(value), self.standard_conforming_strings)
        if name == "standard_conforming_strings":
            return Settings(self.client_encoding, value.lower() in ("on", "true", "1"))
        return self

    @property
    def default(self) -> bool:
        return self.client_encoding == "UTF8" and self.standard_conforming_strings


def _canonical(name: str) -> str:
    upper = name.upper().replace("-", "_")
    return {"UTF_8": "UTF8", "UNICODE": "UTF8", "SHIFT_JIS": "SJIS"}.get(upper, upper)


class Unreadable(Exception):
    """The gate can't read the text as the server will; the message says why."""


@dataclass(frozen=True, slots=True)
class Reading:
    """The texts to classify (each a way the server may read the bytes; all must pass),
    and the text to show people (the current encoding's, never a lone surrogate)."""

    texts: tuple[str, ...]
    shown: str


def read_sql(raw: bytes, settings: Settings, *, uncertain: bool = False) -> Reading:
    """How the server reads `raw` (a Query's or Parse's text, without its NUL).

    Raises `Unreadable` when the server's reading can't be known: a backslash where
    `standard_conforming_strings` is (or may be) off, an encoding the gate doesn't know,
    or bytes that aren't text in the session's encoding.
    """
    scs_possibly_off = uncertain or not settings.standard_conforming_strings
    if raw.isascii():  # the same text in every encoding
        text = raw.decode("ascii")
        if scs_possibly_off and "\\" in text:
            raise Unreadable(_BACKSLASH_REASON)
        return Reading((text,), text)
    encoding = settings.client_encoding
    if encoding not in _CODECS:
        raise Unreadable(f"client_encoding {encoding} is not one the gate can read")
    shown_text = _decode(raw, encoding)  # raises Unreadable: the server would refuse it too
    candidates = [encoding]
    if uncertain:
        candidates += [e for e in (_TRANSPARENT, *sorted(ASCII_TRAILING)) if e != encoding]
    texts: list[str] = []
    for name in candidates:
        try:
            text = shown_text if name == encoding else _decode(raw, name)
        except Unreadable:
            continue  # the server could not read the bytes that way either: it would refuse
        if scs_possibly_off and "\\" in text:
            raise Unreadable(_BACKSLASH_REASON)
        if text not in texts:
            texts.append(text)
    return Reading(tuple(texts), shown_text)


_BACKSLASH_REASON = (
    "a backslash while standard_conforming_strings is or may be off:"
    " the gate can't read string literals the way the server will"
)


def shown(raw: bytes, settings: Settings) -> str:
    """Text for people (approvals, the query log): the session's encoding, with
    replacement characters for what doesn't decode; never a lone surrogate."""
    codec = _CODECS.get(settings.client_encoding, "utf-8")
    return raw.decode(codec, errors="replace")


def _decode(raw: bytes, encoding: str) -> str:
    """`raw` read in `encoding`, with the server's character boundaries (its skeleton)."""
    codec = _CODECS[encoding]
    mblen = _MBLEN.get(encoding)
    if mblen is None:
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            if encoding == "UTF8":
                raise Unreadable("not valid UTF8 text") from None
            # A transparent encoding: any byte of 0x80 and above stands for part of a
            # non-ASCII character, so latin-1 gives the server's skeleton exactly.
            return raw.decode("latin-1")
        return text
    structural = _by_mblen(raw, mblen, encoding)
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError:
        return structural
    return text if _skeleton(text) == _skeleton(structural) else structural


def _by_mblen(raw: bytes, mblen: Callable[[bytes, int], int], encoding: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(raw):
        size = mblen(raw, i)
        if i + size > len(raw):
            raise Unreadable(f"a character cut short at the end of the {encoding} text")
        out.append(chr(raw[i]) if size == 1 and raw[i] < 0x80 else _STAND_IN)
        i += size
    return "".join(out)


def _skeleton(text: str) -> str:
    """What the server's scanner sees of `text`: its ASCII, each run of other characters
    as one stand-in."""
    out: list[str] = []
    for ch in text:
        if ch.isascii():
            out.append(ch)
        elif not out or out[-1] != _STAND_IN:
            out.append(_STAND_IN)
    return "".join(out)


def known_encoding(name: str) -> bool:
    return _canonical(name) in _CODECS


__all__ = [
    "ASCII_TRAILING",
    "Reading",
    "Settings",
    "Unreadable",
    "known_encoding",
    "read_sql",
    "shown",
]
