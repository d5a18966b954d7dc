"""The statement gate and the server must read the same statements (issue #19).

The attack: the relay classifies the client's bytes as UTF-8 with the parser's default
settings, while the server reads the same bytes under the session's settings, which the
client controls. Two settings change where a string literal ends:

- `client_encoding`: in SJIS, SHIFT_JIS_2004, BIG5, GBK and GB18030 the second byte of a
  character can be a backslash. The UTF-8 text `E'Ã\\'` (bytes `45 27 C3 83 5C 27`) is,
  read as SJIS, `E'ﾃソ'`: the server never sees the backslash, so the quote that
  escaped for the gate closes the literal for the server, and what follows runs.
- `standard_conforming_strings = off`: a backslash escapes in every '...' literal, so
  `'\\''; DROP TABLE t; --'` is one literal for the gate and a DROP for the server.

Each case here is a short script of what an agent's client writes, as raw protocol bytes,
through the real gateway (`bastion serve` and the agent's `ssh -N -L`): its startup packet,
settings changed in one of the ways a client can (a Query of their own, pipelined in the
same write, inside the same Query or extended batch, for a transaction, for the role or
database and a reconnect, in the startup packet), and statements in which a `DROP TABLE
sentinel_x`, or a `DELETE`/`TRUNCATE`/`UPDATE` of all of `sentinel_y`, is inside what a
UTF-8 standard-strings reader takes for a string literal; by simple Query or by
Parse/Bind/Execute. Every approval the gate asks for is denied at once (the NOTICE names the
request; `bastion approvals deny` runs in-process), so nothing destructive may run.

A case passes when, looking at the server itself rather than through the bastion:

- nothing touched the sentinels: they exist with the same rows (read as the superuser),
  and no tripwire fired (a statement trigger on each and an event trigger on DROP, which
  `RAISE LOG`, so a destructive statement that ran and was rolled back still counts);
- every statement the server ran is in the session's query log (the recording), with the
  verdict `allowed` and the text the server read (after its client_encoding conversion).
  "Ran" is what `log_statement = 'all'` logs: `statement: ...` for a simple Query (once it
  parsed), `execute ...: ...` for an Execute. The relay's own refusal, a
  `DO $bastion$ ... $bastion$` block it sends instead of a refused statement, is not the
  agent's and is left out (`_OWN_REFUSAL`; if the relay's way of refusing changes, so must
  that pattern);
- the client got an answer to everything it sent within `ANSWER_TIMEOUT_S` (a refusal is
  an error, never a hang), an error when the query log shows a refusal, and at the end it
  is still in step with the server: `ROLLBACK; SELECT 'differential: in step'` gets its
  own answer. A gate that refuses what it cannot read (an encoding it does not support)
  passes, as long as nothing it refused ran.

`test_known_attack` holds the attacks by name. Each failed against the gate of commit
242fd35 (UTF-8 and standard strings, whatever the session said): the DROP, DELETE or
TRUNCATE ran with no approval and the query log showed it `allowed`, except three:
`sjis-bytes-that-are-not-utf-8` left the client hanging (storing an approval for text
that is not UTF-8 failed), `refusal-in-an-aborted-transaction` put client and server out
of step (so a later statement ran unlogged), and `latin1-query-log-shows-another-text`
logged another text than the one the server ran.
`test_gate_and_server_read_the_same_statements` runs a generated corpus (hypothesis,
derandomized: the same examples on every run, not shrunk, so a failure is reported at
once) with hand-written cases as explicit examples.

The PostgreSQL 15 is this module's own, not the session's: `log_statement` and a
`log_line_prefix` naming the user are server-wide settings, and cases change settings of
their role and database (`ALTER ROLE CURRENT_USER SET ...`), reset after each case.
"""

from __future__ import annotations

import contextlib
import json
import pwd
import re
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from bastion import pgwire
from bastion.recording import format as recfmt
from tests.integration import pg_helpers as pg
from tests.integration.conftest import Server, cli, wait_until
from tests.peers import PG_BIN, Postgres

ROLE = "gate_app"
PASSWORD = "gate-app-secret"
DB = "gatedb"
TARGET = "gate-db"
APPROVAL_TIMEOUT_S = 3  # a backstop: every approval is denied as soon as it is asked for
ANSWER_TIMEOUT_S = 20.0  # longer than any approval wait: past it, the client hangs
LOG_PREFIX = "|%p|%u|%d| "
_LOG_LINE = re.compile(r"\|(\d+)\|([^|]*)\|([^|]*)\| ([A-Z0-9]+):  (.*)", re.DOTALL)
_RAN = re.compile(r"statement: (.*)|execute (?:fetch from )?[^:]*: (.*)", re.DOTALL)
_OWN_REFUSAL = re.compile(
    r"DO \$bastion\$ BEGIN RAISE EXCEPTION USING ERRCODE = '[0-9A-Z]{5}',"
    r" MESSAGE = '(?:[^']|'')*'; END \$bastion\$"
)
_APPROVAL = re.compile(r"\[bastion\] approval required, request (a-[0-9a-f]+)")

SENTINELS = {"sentinel_x": "1=x1,2=x2,3=x3", "sentinel_y": "1=y1,2=y2,3=y3"}
_RESTORE_SENTINELS = f"""
SET ROLE {ROLE};
DROP TABLE IF EXISTS sentinel_x, sentinel_y;
CREATE TABLE sentinel_x (id int PRIMARY KEY, v text);
CREATE TABLE sentinel_y (id int PRIMARY KEY, v text);
INSERT INTO sentinel_x SELECT i, 'x' || i FROM generate_series(1, 3) i;
INSERT INTO sentinel_y SELECT i, 'y' || i FROM generate_series(1, 3) i;
RESET ROLE;
CREATE TRIGGER touched BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON sentinel_x
    FOR EACH STATEMENT EXECUTE FUNCTION public.sentinel_touched();
CREATE TRIGGER touched BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON sentinel_y
    FOR EACH STATEMENT EXECUTE FUNCTION public.sentinel_touched();
"""
# A write to a sentinel, or its DROP, is logged as it happens (RAISE LOG is not undone by a
# rollback): a destructive statement that ran and was rolled back still shows.
_SENTINEL_TRIPWIRES = """
CREATE FUNCTION public.sentinel_touched() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE LOG '[sentinel] % %', TG_OP, TG_TABLE_NAME; RETURN NULL; END $$;
CREATE FUNCTION public.sentinel_dropped() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE o record;
BEGIN
    FOR o IN SELECT * FROM pg_event_trigger_dropped_objects()
             WHERE object_type = 'table' AND object_identity LIKE 'public.sentinel%' LOOP
        RAISE LOG '[sentinel] DROP %', o.object_identity;
    END LOOP;
END $$;
CREATE EVENT TRIGGER sentinel_dropped ON sql_drop EXECUTE FUNCTION public.sentinel_dropped();
"""
_RESET_SETTINGS = (
    f"ALTER ROLE {ROLE} RESET ALL",
    f"ALTER ROLE {ROLE} IN DATABASE {DB} RESET ALL",
    f"ALTER DATABASE {DB} RESET ALL",
)

# Every encoding PostgreSQL 15 accepts as client_encoding with a UTF8 server (all but
# MULE_INTERNAL): `test_the_corpus_covers_every_client_encoding` holds the list to it.
ENCODINGS = (
    "SQL_ASCII", "EUC_JP", "EUC_CN", "EUC_KR", "EUC_TW", "EUC_JIS_2004", "UTF8",
    "LATIN1", "LATIN2", "LATIN3", "LATIN4", "LATIN5", "LATIN6", "LATIN7", "LATIN8",
    "LATIN9", "LATIN10", "WIN1256", "WIN1258", "WIN866", "WIN874", "KOI8R", "WIN1251",
    "WIN1252", "ISO_8859_5", "ISO_8859_6", "ISO_8859_7", "ISO_8859_8", "WIN1250",
    "WIN1253", "WIN1254", "WIN1255", "WIN1257", "KOI8U", "SJIS", "BIG5", "GBK", "UHC",
    "GB18030", "JOHAB", "SHIFT_JIS_2004",
)  # fmt: skip
CLIENT_ONLY = ("SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "UHC", "GB18030", "JOHAB")
# Other names the server takes for them (it ignores case and anything not alphanumeric).
ALIASES = {
    "SJIS": ("sjis", "Shift_JIS", "mskanji", "WIN932", "windows932"),
    "SHIFT_JIS_2004": ("shiftjis2004",),
    "BIG5": ("big5", "Big-5"),
    "GBK": ("gbk", "windows936"),
    "UHC": ("uhc", "WIN949"),
    "GB18030": ("gb18030", "GB-18030"),
    "JOHAB": ("johab",),
    "UTF8": ("unicode", "utf-8"),
    "LATIN1": ("latin1", "ISO88591"),
    "WIN1252": ("windows1252",),
    "WIN866": ("alt",),
}
# A UTF-8 character whose last byte, read in that encoding, starts a two-byte character
# that takes the byte after it, a backslash, as its second: the backslash vanishes in the
# server's conversion (`test_the_smugglers_eat_a_backslash_on_the_server`). UHC and JOHAB
# (as PostgreSQL reads them) have none.
SMUGGLERS = {
    "SJIS": "Ã".encode(),  # C3 83: ﾃ, then 83 5C is ソ
    "SHIFT_JIS_2004": "Ã".encode(),
    "BIG5": "両".encode(),  # E4 B8 A1: A1 5C is ﹏
    "GBK": "丁".encode(),  # E4 B8 81: 81 5C is 乗
    "GB18030": "丁".encode(),
}
# Bytes that are not UTF-8 at all, written in the session's encoding: the first byte of
# SJIS 表 (95 5C), BIG5 功 (A5 5C), GBK 乗 (81 5C), and a LATIN1 é.
RAW_SMUGGLERS = {
    "SJIS": b"\x95",
    "SHIFT_JIS_2004": b"\x95",
    "BIG5": b"\xa5",
    "GBK": b"\x81",
    "GB18030": b"\x81",
    "LATIN1": b"\xe9",
    "WIN1252": b"\xe9",
}

PAYLOADS = (
    b"DROP TABLE sentinel_x",
    b"DELETE FROM sentinel_y",
    b"TRUNCATE sentinel_y",
    b"UPDATE sentinel_y SET v = NULL",
)
CTE_PAYLOADS = (b"DELETE FROM sentinel_y", b"UPDATE sentinel_y SET v = NULL")

SCS_OFF = (
    "SET standard_conforming_strings = off",
    "SET SESSION standard_conforming_strings TO 'off'",
    "SET standard_conforming_strings = false",
    "SET standard_conforming_strings = 0",
    "SELECT set_config('standard_conforming_strings', 'off', false)",
    "SELECT pg_catalog.set_config('standard_conforming_strings', 'off', false)",
)
SCS_OFF_LOCAL = (
    "SET LOCAL standard_conforming_strings = off",
    "SELECT set_config('standard_conforming_strings', 'off', true)",
)
SCS_OFF_PERSISTENT = (
    "ALTER ROLE CURRENT_USER SET standard_conforming_strings = off",
    f"ALTER DATABASE {DB} SET standard_conforming_strings = off",
    f"ALTER ROLE CURRENT_USER IN DATABASE {DB} SET standard_conforming_strings = off",
)
SCS_OFF_STARTUP = (
    ("standard_conforming_strings", "off"),
    ("options", "-c standard_conforming_strings=off"),
)
ENC_SET = (
    "SET client_encoding = '{}'",
    "SET client_encoding TO '{}'",
    "SET NAMES '{}'",
    "SELECT set_config('client_encoding', '{}', false)",
)
ENC_LOCAL = ("SET LOCAL client_encoding = '{}'", "SELECT set_config('client_encoding', '{}', true)")
ENC_PERSISTENT = (
    "ALTER ROLE CURRENT_USER SET client_encoding = '{}'",
    f"ALTER DATABASE {DB} SET client_encoding = '{{}}'",
)
OTHER_SETTINGS = (
    "SET backslash_quote = on",
    "SET backslash_quote = off",
    "SET escape_string_warning = off",
    "SET standard_conforming_strings = on",
    "RESET standard_conforming_strings",
    "RESET ALL",
    "SET client_encoding = 'UTF8'",
)


# -- what a case is -----------------------------------------------------------------------


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def _startup(params: Sequence[tuple[str, str]]) -> bytes:
    body = struct.pack("!i", 196608)  # protocol 3.0
    body += b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


_SYNC = _message(b"S", b"")


@dataclass(frozen=True)
class Step:
    """`Q`: a simple Query. `X`: Parse, Bind, Execute (unnamed) and Sync. `x`: the same
    without the Sync, so the next step is in the same extended batch."""

    kind: str
    sql: bytes

    def encode(self) -> bytes:
        if self.kind == "Q":
            return _message(b"Q", self.sql + b"\0")
        data = (
            _message(b"P", b"\0" + self.sql + b"\0" + struct.pack("!h", 0))
            + _message(b"B", b"\0\0" + struct.pack("!hhh", 0, 0, 0))
            + _message(b"E", b"\0" + struct.pack("!i", 0))
        )
        return data + _SYNC if self.kind == "X" else data


@dataclass(frozen=True)
class Write:
    """Steps the client writes at once, before it reads the answers."""

    steps: tuple[Step, ...]

    @property
    def answers(self) -> int:
        """ReadyForQuery messages that end the answers: one per Query and per Sync."""
        return sum(step.kind in "QX" for step in self.steps)

    def encode(self) -> bytes:
        steps = list(self.steps)
        if steps[-1].kind == "x":  # an extended batch ends with a Sync
            steps[-1] = Step("X", steps[-1].sql)
        return b"".join(step.encode() for step in steps)


@dataclass(frozen=True)
class Connection:
    startup: tuple[tuple[str, str], ...]
    writes: tuple[Write, ...]


@dataclass(frozen=True)
class Case:
    connections: tuple[Connection, ...]


@dataclass(frozen=True)
class Setting:
    """One setting changed, and how: `startup` (a startup packet parameter), `reconnect`
    (for the role or database, then a new connection), `transaction` (BEGIN first, COMMIT
    after the attack), `own` (a Query or batch of its own, answered before the attack is
    sent), `pipelined` (written with the attack, before it), `same` (in the attack's own
    Query text, or its extended batch)."""

    how: str
    sql: str = ""
    param: tuple[str, str] | None = None


# Ends every connection (see `play`); it runs in any transaction state and encoding.
IN_STEP_VALUE = b"differential: in step"
IN_STEP = Write((Step("Q", b"ROLLBACK"), Step("Q", b"SELECT '" + IN_STEP_VALUE + b"'")))
BASE_STARTUP = (("user", "mallory"), ("database", DB), ("application_name", "differential"))


def build_case(
    settings_: Sequence[Setting],
    statements: Sequence[bytes],
    *,
    extended: bool = False,
    settings_extended: bool = False,
    one_batch: bool = False,
    pipeline: bool = True,
) -> Case:
    """The client's script: settings as `settings_` say, then `statements`, as one simple
    Query (joined with `; `) or each by Parse/Bind/Execute (in one batch with
    `one_batch`), written at once with `pipeline` or each answered before the next."""

    def setting_step(sql: str) -> Step:
        return Step("X" if settings_extended else "Q", sql.encode())

    startup = list(BASE_STARTUP)
    first: list[Write] = []
    writes: list[Write] = []
    pipelined: list[Step] = []
    same: list[bytes] = []
    in_transaction: list[str] = []
    for setting in settings_:
        if setting.how == "startup":
            assert setting.param is not None
            startup.append(setting.param)
        elif setting.how == "reconnect":
            first.append(Write((Step("Q", setting.sql.encode()),)))
        elif setting.how == "transaction":
            in_transaction.append(setting.sql)
        elif setting.how == "own":
            writes.append(Write((setting_step(setting.sql),)))
        elif setting.how == "pipelined":
            pipelined.append(setting_step(setting.sql))
        else:
            same.append(setting.sql.encode())
    if in_transaction:
        writes.append(Write((Step("Q", b"BEGIN"),)))
        writes.extend(Write((setting_step(sql),)) for sql in in_transaction)
    if extended:
        steps = [Step("x", sql) for sql in same]
        steps += [Step("x" if one_batch else "X", sql) for sql in statements]
        steps[-1] = Step("X", steps[-1].sql)
    else:
        steps = [Step("Q", b"; ".join([*same, *statements]))]
    batches: list[tuple[Step, ...]] = []  # each ends with a Query or a Sync
    start = 0
    for end, step in enumerate(steps, 1):
        if step.kind in "QX":
            batches.append(tuple(steps[start:end]))
            start = end
    if pipeline:
        writes.append(Write((*pipelined, *(step for batch in batches for step in batch))))
    else:
        writes.append(Write((*pipelined, *batches[0])))
        writes.extend(Write(batch) for batch in batches[1:])
    if in_transaction:
        writes.append(Write((Step("Q", b"COMMIT"),)))
    connections = [Connection(BASE_STARTUP, tuple(first))] if first else []
    connections.append(Connection(tuple(startup), tuple(writes)))
    return Case(tuple(connections))


# -- the corpus ---------------------------------------------------------------------------

OPENERS = (b"'", b"E'", b"e'")
FILLERS = (b"", b"a", "é".encode(), "表".encode(), b"\\\\", b"''", b"$$", b"/*", b"--", b" ")
TAILS = (b"", b"'", b", '")
BODY_ATOMS = (
    b"a", b"''", b"\\", b"\\\\", b"\\'", "é".encode(), "ソ".encode(), b"$", b"$q$", b"--",
    b"/*", b"*/", b";", b"\n", b"\\0041", b"!0041", b"\\x41", b"; DROP TABLE sentinel_x; ",
)  # fmt: skip


def hidden_statement(
    opener: bytes, filler: bytes, smuggler: bytes, slashes: int, tail: bytes, payload: bytes
) -> bytes:
    """`payload` after a literal that, for a UTF-8 standard-strings reader, runs on over it:
    `SELECT E'Ã\\'; DROP TABLE sentinel_x; --'`."""
    literal = opener + filler + smuggler + b"\\" * slashes + b"'" + tail
    return b"SELECT " + literal + b"; " + payload + b"; --'"


def hidden_cte(
    opener: bytes, filler: bytes, smuggler: bytes, slashes: int, tail: bytes, payload: bytes
) -> bytes:
    """The same in one statement (a Parse takes only one): a data-modifying WITH query
    that the gate reads as a literal, then a harmless one it reads as the statement."""
    literal = opener + filler + smuggler + b"\\" * slashes + b"'" + tail
    return (
        b"WITH a AS (SELECT " + literal + b"), b AS (" + payload
        + b" RETURNING 1) SELECT 1 --'), b AS (SELECT 1) SELECT 1"
    )  # fmt: skip


def smugglers_for(encoding: str | None) -> st.SearchStrategy[bytes]:
    """Mostly the session's own smuggler, if its encoding has one."""
    own = [found for found in (SMUGGLERS.get(encoding or ""),) if found is not None]
    raw = [found for found in (RAW_SMUGGLERS.get(encoding or ""),) if found is not None]
    return st.sampled_from([*own * 3, *raw, b"", *SMUGGLERS.values()])


@st.composite
def hidden(draw: st.DrawFn, smugglers: st.SearchStrategy[bytes]) -> bytes:
    opener = draw(st.sampled_from(OPENERS))
    filler = b"".join(draw(st.lists(st.sampled_from(FILLERS), max_size=2)))
    smuggler = draw(smugglers)
    slashes = draw(st.integers(0, 3))
    tail = draw(st.sampled_from(TAILS))
    if draw(st.booleans()):
        return hidden_statement(
            opener, filler, smuggler, slashes, tail, draw(st.sampled_from(PAYLOADS))
        )
    return hidden_cte(opener, filler, smuggler, slashes, tail, draw(st.sampled_from(CTE_PAYLOADS)))


@st.composite
def harmless(draw: st.DrawFn, smugglers: st.SearchStrategy[bytes]) -> bytes:
    """Literals and comments of every kind, with backslashes, quotes and payloads inside."""
    atoms = st.one_of(st.sampled_from(BODY_ATOMS), smugglers)
    bodies = st.lists(atoms, max_size=4).map(b"".join)
    body = draw(bodies)
    kind = draw(st.sampled_from(("plain", "E", "U&", "dollar", "block", "line")))
    if kind == "plain":
        return b"SELECT '" + body + b"'"
    if kind == "E":
        return b"SELECT E'" + body + b"'"
    if kind == "U&":
        return b"SELECT U&'" + body + b"'" + draw(st.sampled_from((b"", b" UESCAPE '!'")))
    if kind == "dollar":
        tag = draw(st.sampled_from((b"", b"q", b"x_1", "é".encode())))
        return b"SELECT $" + tag + b"$" + body + b"$" + tag + b"$"
    if kind == "block":
        return b"SELECT 1 /* " + body + b" /* " + draw(bodies) + b" */ " + draw(bodies) + b" */"
    return b"SELECT 1 -- " + body + b"\n"


def spellings(encoding: str) -> tuple[str, ...]:
    return (encoding, encoding.lower(), *ALIASES.get(encoding, ()))


@st.composite
def settings_for(draw: st.DrawFn, encoding: str | None) -> list[Setting]:
    found: list[Setting] = []
    forms: Sequence[str]
    hows = ("startup", "reconnect", "transaction", "own", "pipelined", "same")
    if encoding is not None:
        name = draw(st.sampled_from(spellings(encoding)))
        how = draw(st.sampled_from(hows))
        if how == "startup":
            found.append(Setting(how, param=("client_encoding", name)))
        else:
            forms = {"reconnect": ENC_PERSISTENT, "transaction": ENC_LOCAL}.get(how, ENC_SET)
            found.append(Setting(how, draw(st.sampled_from(forms)).format(name)))
    scs = draw(st.sampled_from((None, *hows)))
    if scs == "startup":
        found.append(Setting(scs, param=draw(st.sampled_from(SCS_OFF_STARTUP))))
    elif scs is not None:
        forms = {"reconnect": SCS_OFF_PERSISTENT, "transaction": SCS_OFF_LOCAL}.get(scs, SCS_OFF)
        found.append(Setting(scs, draw(st.sampled_from(forms))))
    for sql in draw(st.lists(st.sampled_from(OTHER_SETTINGS), max_size=1)):
        found.append(Setting(draw(st.sampled_from(("own", "pipelined", "same"))), sql))
    return list(draw(st.permutations(found)))


@st.composite
def cases(draw: st.DrawFn) -> Case:
    encoding = draw(
        st.one_of(
            st.none(),
            st.sampled_from(tuple(SMUGGLERS)),
            st.sampled_from(CLIENT_ONLY),
            st.sampled_from(ENCODINGS),
        )
    )
    smugglers = smugglers_for(encoding)
    statements = [draw(hidden(smugglers))]
    for _ in range(draw(st.sampled_from((0, 0, 1, 2)))):
        statements.insert(
            draw(st.integers(0, len(statements))),
            draw(st.one_of(harmless(smugglers), hidden(smugglers))),
        )
    return build_case(
        draw(settings_for(encoding)),
        statements,
        extended=draw(st.booleans()),
        settings_extended=draw(st.booleans()),
        one_batch=draw(st.booleans()),
        pipeline=draw(st.booleans()),
    )


# -- the hand-written attacks ----------------------------------------------------------------

E_SJIS = b"SELECT E'\xc3\x83\\'; DROP TABLE sentinel_x; --'"  # E'Ã\'; to the gate
SCS = b"SELECT '\\''; DROP TABLE sentinel_x; --'"


def _enc(name: str, how: str = "startup", sql: str = "SET client_encoding = '{}'") -> Setting:
    if how == "startup":
        return Setting(how, param=("client_encoding", name))
    return Setting(how, sql.format(name))


def _scs(sql: str = SCS_OFF[0], how: str = "own") -> Setting:
    return Setting(how, sql)


KNOWN_ATTACKS = {
    # client_encoding: a backslash eaten by a two-byte character of the client's encoding
    "sjis-startup-e-string": build_case([_enc("SJIS")], [E_SJIS]),
    "sjis-alias-mskanji-startup": build_case([_enc("mskanji")], [E_SJIS]),
    "big5-set-client-encoding-delete": build_case(
        [_enc("BIG5", "own")],
        [hidden_statement(b"E'", b"", SMUGGLERS["BIG5"], 1, b"", b"DELETE FROM sentinel_y")],
    ),
    # (Without `backslash_quote = on` the server itself refuses the `\'` it is left with,
    # in a client-only encoding: see the explicit examples of the generated test.)
    "gbk-set-names-backslash-quote-on-two-backslashes": build_case(
        [Setting("own", "SET backslash_quote = on"), _enc("GBK", "own", "SET NAMES '{}'")],
        [hidden_statement(b"E'", b"", SMUGGLERS["GBK"], 2, b", '", b"DROP TABLE sentinel_x")],
    ),
    "gb18030-set-config-truncate": build_case(
        [_enc("GB18030", "own", "SELECT set_config('client_encoding', '{}', false)")],
        [hidden_statement(b"E'", b"", SMUGGLERS["GB18030"], 1, b"", b"TRUNCATE sentinel_y")],
    ),
    "sjis-parse-bind-execute-cte-delete": build_case(
        [_enc("SJIS")],
        [hidden_cte(b"E'", b"", SMUGGLERS["SJIS"], 1, b"", b"DELETE FROM sentinel_y")],
        extended=True,
    ),
    "shift-jis-2004-alter-role-then-reconnect": build_case(
        [_enc("SHIFT_JIS_2004", "reconnect", ENC_PERSISTENT[0])], [E_SJIS]
    ),
    "sjis-set-pipelined-in-the-same-write": build_case([_enc("SJIS", "pipelined")], [E_SJIS]),
    # The bytes SJIS itself writes for 表 (95 5C) are not UTF-8: the gate must refuse
    # them (or read them as SJIS), and answer.
    "sjis-bytes-that-are-not-utf-8": build_case(
        [_enc("SJIS")], [b"SELECT E'\x95\\'; DROP TABLE sentinel_x; --'"]
    ),
    # standard_conforming_strings = off: a backslash escapes in '...'
    "scs-off-set": build_case([_scs()], [SCS]),
    "scs-off-set-config": build_case([_scs(SCS_OFF[4])], [SCS]),
    "scs-off-pipelined-in-the-same-write": build_case([_scs(how="pipelined")], [SCS]),
    "scs-off-earlier-in-the-same-extended-batch": build_case(
        [_scs(how="same")],
        [hidden_cte(b"'", b"", b"", 1, b"'", b"DELETE FROM sentinel_y")],
        extended=True,
        settings_extended=True,
    ),
    "scs-off-set-local-in-a-transaction": build_case(
        [_scs(SCS_OFF_LOCAL[0], "transaction")], [SCS]
    ),
    "scs-off-alter-database-then-reconnect": build_case(
        [_scs(SCS_OFF_PERSISTENT[1], "reconnect")], [SCS]
    ),
    # A statement refused in a transaction already aborted: the refusal's DO fails with
    # 25P02 instead of the relay's own error, and its answers go out of step.
    "refusal-in-an-aborted-transaction": Case(
        (
            Connection(
                BASE_STARTUP,
                (
                    Write((Step("Q", b"BEGIN"),)),
                    Write((Step("Q", b"SELECT 1/0"),)),
                    Write((Step("X", b"DROP TABLE sentinel_x"),)),
                ),
            ),
        )
    ),
    # Not destructive, and still wrong: the query log shows another text than the one
    # that ran (C3 A9 is `é` to the gate, `Ã©` to a LATIN1 server).
    "latin1-query-log-shows-another-text": build_case(
        [_enc("LATIN1")], ["SELECT 'é' AS e".encode()]
    ),
}


# -- the bench: a PostgreSQL of its own, the gateway, the agent's tunnel ----------------------


@pytest.fixture(scope="module")
def gate_postgres() -> Iterator[Postgres]:
    """PostgreSQL 15 logging every statement with the user's name, role `gate_app` owning
    database `gatedb` (the sentinel tables are created per test)."""
    if not all((PG_BIN / tool).exists() for tool in ("initdb", "postgres", "psql")):
        pytest.skip(f"needs the PostgreSQL 15 server binaries in {PG_BIN}")
    try:
        pwd.getpwnam(Postgres.OS_USER)
    except KeyError:
        pytest.skip(f"needs the {Postgres.OS_USER!r} OS user")
    with Postgres() as server:
        server.psql("ALTER SYSTEM SET log_statement = 'all'")
        server.psql(f"ALTER SYSTEM SET log_line_prefix = '{LOG_PREFIX}'")
        server.psql("SELECT pg_reload_conf()")
        wait_until(
            lambda: (
                server.psql("SHOW log_line_prefix; SHOW log_statement").splitlines()
                == [LOG_PREFIX, "all"]
            )
        )
        server.create_role(ROLE, PASSWORD)
        server.create_database(DB, owner=ROLE)
        server.psql(_SENTINEL_TRIPWIRES, db=DB)
        yield server


@pytest.fixture(scope="module")
def gate_gateway(
    gate_postgres: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`bastion serve` with one PostgreSQL target, the default statement rules."""
    base = tmp_path_factory.mktemp("pg-gate-differential")
    home = base / "home"
    cli(home, "init")
    (home / "bastion.toml").write_text(
        f'[grants]\nmin_ttl = "2s"\n\n[approvals]\ntimeout = "{APPROVAL_TIMEOUT_S}s"\n'
    )
    cli(
        home,
        *("target", "add-postgres", TARGET, "--host", pg.LOOPBACK),
        *("--port", str(gate_postgres.port), "--database", DB, "--user", ROLE),
        *("--password-env", "PW"),
        env={"PW": PASSWORD},
    )
    server = Server(home, base)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Bench:
    server: Server
    postgres: Postgres
    port: int  # the agent's end of `ssh -L`
    admin: psycopg.Connection[Any]  # the superuser, on the server's unix socket

    @property
    def recordings(self) -> Path:
        return self.server.home / "recordings"

    def deny(self, approval_id: str) -> None:
        cli(
            self.server.home,
            *("approvals", "deny", approval_id, "--reason", "auto-denied by the differential"),
            actor="alice",
        )

    def sentinels(self) -> dict[str, str | None]:
        """Each sentinel table's rows (`id=v,...`), None for a table that is gone."""
        found: dict[str, str | None] = {}
        for table in SENTINELS:
            row = self.admin.execute("SELECT to_regclass(%s) IS NOT NULL", [table]).fetchone()
            if row is None or not row[0]:
                found[table] = None
                continue
            rows = self.admin.execute(
                f"SELECT coalesce(string_agg(id || '=' || coalesce(v, 'NULL'), ','"
                f" ORDER BY id), '') FROM {table}"
            ).fetchone()
            found[table] = rows[0] if rows else None
        return found

    def reset(self) -> None:
        """Settings the case left on the role or database go; damaged sentinels come back."""
        for sql in _RESET_SETTINGS:
            self.admin.execute(sql)
        if self.sentinels() != SENTINELS:
            self.admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                [ROLE],
            )
            self.admin.execute(_RESTORE_SENTINELS)


@pytest.fixture
def bench(gate_gateway: Server, gate_postgres: Postgres) -> Iterator[Bench]:
    tunnel = pg.open_tunnel(gate_gateway, pg.issue(gate_gateway, TARGET), TARGET)
    admin = psycopg.connect(
        host=str(gate_postgres.socket_dir),
        port=gate_postgres.port,
        user=Postgres.OS_USER,
        dbname=DB,
        autocommit=True,
    )
    admin.execute("SET lock_timeout = '10s'")
    bench = Bench(gate_gateway, gate_postgres, tunnel.port, admin)
    admin.execute(_RESTORE_SENTINELS)
    try:
        yield bench
    finally:
        admin.close()
        tunnel.stop()


# -- playing a case ----------------------------------------------------------------------------


class _Client:
    """The agent's client on a plain socket: exact bytes out, whole messages in."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((pg.LOOPBACK, port), timeout=10)
        self.parser = pgwire.BackendParser()
        self.closed = False

    def answers(self, count: int, bench: Bench, transcript: list[str]) -> list[pgwire.Message]:
        """Read until `count` ReadyForQuery (or the end of the connection), denying each
        approval asked for; fail if they do not come within ANSWER_TIMEOUT_S."""
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        found: list[pgwire.Message] = []
        while count > 0 and not self.closed:
            event = self.parser.next_event()
            if event is pgwire.NEED_DATA:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"the client hangs: {count} answer(s) missing after"
                        f" {ANSWER_TIMEOUT_S}s; so far: {transcript}"
                    )
                self.sock.settimeout(left)
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError as exc:
                    data = b""
                    transcript.append(f"connection lost: {exc}")
                self.parser.receive_data(data)
                continue
            if event is pgwire.CLOSED:
                transcript.append("closed")
                self.closed = True
                continue
            assert not isinstance(event, pgwire.Signal)
            found.append(event)
            if isinstance(event, pgwire.ReadyForQuery):
                count -= 1
            elif isinstance(event, pgwire.ErrorResponse | pgwire.NoticeResponse):
                kind = "E" if isinstance(event, pgwire.ErrorResponse) else "N"
                transcript.append(f"{kind} {event.sqlstate} {event.message}")
                if asked := _APPROVAL.search(event.message):
                    bench.deny(asked.group(1))
            elif isinstance(event, pgwire.CommandComplete):
                transcript.append(f"C {event.tag}")
        return found

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(OSError):
                self.sock.sendall(_message(b"X", b""))
        self.sock.close()


def play(bench: Bench, case: Case) -> list[str]:
    """Run the case's connections one after another; what the client saw."""
    transcript: list[str] = []
    for connection in case.connections:
        client = _Client(bench.port)
        try:
            transcript.append(f"startup {dict(connection.startup)}")
            client.sock.sendall(_startup(connection.startup))
            client.answers(1, bench, transcript)
            for write in connection.writes:
                if client.closed:
                    break
                transcript.append(f"write {write.steps}")
                client.sock.sendall(write.encode())
                client.answers(write.answers, bench, transcript)
            if not client.closed:
                # The client and the server are still in step: the answer to this last
                # Query is its own (not one left over from before), and every answer
                # has come, so the query log is complete when the connection closes.
                transcript.append("write the in-step check")
                client.sock.sendall(IN_STEP.encode())
                answers = client.answers(IN_STEP.answers, bench, transcript)
                rows = [m.values() for m in answers if isinstance(m, pgwire.DataRow)]
                assert client.closed or rows == [(IN_STEP_VALUE,)], (
                    f"the client and the server are out of step: the in-step check got"
                    f" {answers}; so far: {transcript}"
                )
        finally:
            client.close()
    return transcript


def closed_recordings(directory: Path, before: set[Path]) -> list[recfmt.Parsed]:
    """The recordings made since `before`, once each has its end frame."""

    def ended() -> list[recfmt.Parsed] | None:
        found = []
        for path in sorted(set(directory.glob("*/*.rec")) - before):
            try:
                parsed = recfmt.parse(path.read_bytes())
            except recfmt.FormatError:
                return None  # still being created
            if not (parsed.complete and parsed.frames and parsed.frames[-1].kind == recfmt.END):
                return None
            found.append(parsed)
        return found

    return wait_until(ended, timeout=10, interval=0.02)  # type: ignore[no-any-return]


def query_log(recordings: Sequence[recfmt.Parsed]) -> tuple[list[str], list[str]]:
    """The texts the query logs show as allowed (or approved) to run, and the verdicts
    of the statements they show as refused."""
    allowed, refused = [], []
    for parsed in recordings:
        for frame in parsed.frames:
            if frame.kind != recfmt.QUERY:
                continue
            entry = json.loads(frame.payload)
            if "sql" in entry and "event" not in entry:
                verdict = str(entry.get("verdict", ""))
                if verdict == "allowed" or verdict.startswith("approved"):
                    allowed.append(entry["sql"])
                else:
                    refused.append(verdict)
    return allowed, refused


def server_log(log_path: Path, offset: int) -> tuple[list[str], list[str]]:
    """What the server logged for ROLE since `offset`: the statements it ran (not the
    relay's refusals), and the sentinel tripwires that fired. The server writes a newline
    inside a message as a newline and a tab."""
    text = log_path.read_bytes()[offset:].decode("utf-8", "surrogateescape")
    records: list[list[str]] = []
    for line in text.split("\n"):
        if line.startswith("\t") and records:
            records[-1][2] += "\n" + line[1:]
        elif found := _LOG_LINE.fullmatch(line):
            records.append([found.group(2), found.group(4), found.group(5)])
    ran, tripped = [], []
    for user, level, message in records:
        if user != ROLE or level != "LOG":
            continue
        if message.startswith("[sentinel] "):
            tripped.append(message)
        elif found := _RAN.fullmatch(message):
            sql = found.group(1) if found.group(1) is not None else found.group(2)
            if not _OWN_REFUSAL.fullmatch(sql):
                ran.append(sql)
    return ran, tripped


def check(bench: Bench, case: Case) -> None:
    """Play `case` through the gateway, then judge it on the server: see the docstring."""
    log_offset = bench.postgres.log_path.stat().st_size
    before = set(bench.recordings.glob("*/*.rec"))
    try:
        transcript = play(bench, case)
        recordings = closed_recordings(bench.recordings, before)
        ran, tripped = server_log(bench.postgres.log_path, log_offset)
        allowed, refused = query_log(recordings)
        sentinels = bench.sentinels()
    finally:
        bench.reset()
    unlogged = list((Counter(ran) - Counter(allowed)).elements())
    problems = []
    if tripped:
        problems.append(f"destructive statements ran on the sentinels: {tripped}")
    if sentinels != SENTINELS:
        problems.append(f"the sentinel tables changed: {sentinels} (were {SENTINELS})")
    if unlogged:
        problems.append(
            f"the server ran {unlogged!r}, which the query log does not show as allowed"
            f" (it shows as allowed: {allowed!r})"
        )
    if refused and not any(line.startswith(("E ", "closed")) for line in transcript):
        problems.append(f"the gate refused ({refused}) and the client got no error")
    assert not problems, "\n".join([*problems, f"case: {case}", "client saw:", *transcript])


# -- the tests -----------------------------------------------------------------------------------


def test_the_corpus_covers_every_client_encoding(gate_postgres: Postgres) -> None:
    """ENCODINGS is what this server takes as client_encoding, and the aliases are too."""
    names = [*ENCODINGS, *(alias for aliases in ALIASES.values() for alias in aliases)]
    out = gate_postgres.psql(
        "CREATE FUNCTION pg_temp.takes(e text) RETURNS text LANGUAGE plpgsql AS $$"
        " BEGIN PERFORM set_config('client_encoding', e, true);"
        " PERFORM set_config('client_encoding', 'UTF8', true); RETURN e;"
        " EXCEPTION WHEN others THEN RETURN NULL; END $$;"
        " BEGIN;"
        " SELECT pg_encoding_to_char(i) FROM generate_series(0, 100) i"
        "  WHERE pg_encoding_to_char(i) <> ''"
        "  AND pg_temp.takes(pg_encoding_to_char(i)) IS NOT NULL;"
        " SELECT 'refused: ' || e FROM unnest(:'names'::text[]) e WHERE pg_temp.takes(e) IS NULL;"
        " ROLLBACK;",
        variables={"names": "{" + ",".join(f'"{n}"' for n in names) + "}"},
    )
    assert out.split() == list(ENCODINGS)


def test_the_smugglers_eat_a_backslash_on_the_server(gate_postgres: Postgres) -> None:
    """The corpus's premise, on the server: each smuggler and a backslash, read in its
    encoding, convert without a backslash left (and, in UTF-8, keep it)."""
    for encoding, smuggler in SMUGGLERS.items():
        data = (smuggler + b"\\'").hex()
        out = gate_postgres.psql(
            f"SELECT convert_from('\\x{data}'::bytea, '{encoding}'),"
            f" convert_from('\\x{data}'::bytea, 'UTF8')"
        )
        read_there, read_here = out.rstrip("\n").split("|")
        assert "\\" not in read_there and read_there.endswith("'"), (encoding, read_there)
        assert read_here == smuggler.decode() + "\\'"


@pytest.mark.parametrize("case", KNOWN_ATTACKS.values(), ids=KNOWN_ATTACKS.keys())
def test_known_attack(bench: Bench, case: Case) -> None:
    check(bench, case)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(case=cases())
# Settings changed inside the Query that uses them: the server parses the whole Query
# before it runs any of it, so these are harmless, and must stay allowed and logged.
@example(case=build_case([_scs(how="same")], [SCS]))
@example(case=build_case([_enc("SJIS", "same")], [E_SJIS]))
# A startup packet asking for standard_conforming_strings = off, two ways.
@example(case=build_case([Setting("startup", param=SCS_OFF_STARTUP[1])], [SCS]))
@example(case=build_case([Setting("startup", param=SCS_OFF_STARTUP[0])], [SCS], extended=True))
# The server refuses `\'` left over in a client-only encoding (backslash_quote =
# safe_encoding, its default), so this one is harmless; with `backslash_quote = on` it is not.
@example(
    case=build_case(
        [_enc("GBK", "own", "SET NAMES '{}'")],
        [hidden_statement(b"E'", b"", SMUGGLERS["GBK"], 2, b", '", b"DROP TABLE sentinel_x")],
    )
)
# Known attacks: the gate must hold these.
@example(case=KNOWN_ATTACKS["sjis-startup-e-string"])
@example(case=KNOWN_ATTACKS["scs-off-pipelined-in-the-same-write"])
def test_gate_and_server_read_the_same_statements(bench: Bench, case: Case) -> None:
    check(bench, case)
