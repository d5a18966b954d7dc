"""The statement gate, sans-IO: frames in, decisions out (real server peers are in
tests/integration/test_postgres*.py and test_pg_gate_differential.py)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion import pggate, pgwire, sqlclass
from bastion.pggate import DROP, FORWARD, PASS, SWALLOW, TERMINATE, WAIT, Fatal, Hold

RULES = sqlclass.DEFAULT_RULES


class Session:
    """A gate, the frames it decided on, and the query log it wrote."""

    def __init__(self, rules: Sequence[sqlclass.StatementRule] = RULES) -> None:
        self.log: list[pggate.Pending] = []
        self.gate = pggate.StatementGate(
            rules, redact=False, now=lambda: 0.0, on_done=self.log.append
        )

    def send(self, *messages: pgwire.FrontendMessage | bytes) -> list[pggate.ClientDecision]:
        parser = pgwire.FrontendParser(startup=False)
        parser.receive_data(b"".join(_bytes(m) for m in messages))
        decisions = []
        while (frame := parser.next_frame()) is not pgwire.NEED_DATA:
            assert frame is not pgwire.CLOSED
            decisions.append(self.gate.client(frame))
        return decisions

    def answer(self, *messages: pgwire.BackendMessage) -> list[pggate.ServerDecision]:
        parser = pgwire.BackendParser()
        parser.receive_data(b"".join(pgwire.encode(m) for m in messages))
        out = []
        while (frame := parser.next_frame()) is not pgwire.NEED_DATA:
            assert frame is not pgwire.CLOSED
            out.append(self.gate.server(frame) if frame[0] in pggate.WATCHED else PASS)
        return out

    def run(self, sql: str, tag: str = "SELECT 1") -> pggate.ClientDecision:
        """A simple query, answered by the server when it is let through."""
        [decision] = self.send(pgwire.Query(sql))
        if decision is FORWARD:
            self.answer(pgwire.CommandComplete(tag), pgwire.ReadyForQuery("I"))
        return decision


def _bytes(message: pgwire.FrontendMessage | bytes) -> bytes:
    return message if isinstance(message, bytes) else pgwire.encode(message)


def _function_call(oid: int) -> bytes:
    body = struct.pack("!IhhIh", oid, 0, 1, 4, 0) + struct.pack("!i", 4) + b"\0\0\0\1"
    return b"F" + struct.pack("!i", 4 + len(body)) + body


def test_a_harmless_query_goes_through_and_is_logged() -> None:
    s = Session()
    assert s.run("select 1") is FORWARD
    assert [(e.kind, e.sql, e.tags, e.verdict) for e in s.log] == [
        (pggate.Kind.QUERY, "select 1", ["SELECT 1"], "allowed")
    ]
    assert not s.gate.in_flight


def test_a_destructive_query_is_held_then_approved_once() -> None:
    s = Session()
    [hold] = s.send(pgwire.Query("DROP TABLE t"))
    assert isinstance(hold, Hold) and hold.reasons == ("DROP TABLE: DROP TABLE t",)
    assert s.gate.approved(hold, "approved a-1 by alice") == hold.frame[1]
    s.answer(pgwire.CommandComplete("DROP TABLE"), pgwire.ReadyForQuery("I"))
    assert s.log[-1].verdict == "approved a-1 by alice"


def test_a_refused_query_becomes_the_servers_own_error() -> None:
    s = Session()
    [hold] = s.send(pgwire.Query("DROP TABLE t"))
    assert isinstance(hold, Hold)
    refusal = s.gate.refused(hold, "denied a-1", "[bastion] statement refused (a-1): no")
    assert refusal.startswith(b"Q") and b"RAISE EXCEPTION" in refusal
    error = pgwire.ErrorResponse.build("ERROR", "42501", "[bastion] statement refused (a-1): no")
    decisions = s.answer(error, pgwire.ReadyForQuery("I"))
    assert isinstance(decisions[0], bytes)  # without the DO's PL/pgSQL context
    assert decisions[1] is PASS
    assert s.log[-1].verdict == "denied a-1"


def test_a_refused_parse_drops_the_batch_up_to_its_sync() -> None:
    s = Session()
    decisions = s.send(
        pgwire.Parse("", "DELETE FROM t"),
    )
    [hold] = decisions
    assert isinstance(hold, Hold)
    s.gate.refused(hold, "denied a-1", "[bastion] no")
    assert s.send(pgwire.Bind("", ""), pgwire.Execute("")) == [DROP, DROP]
    assert s.send(pgwire.Sync()) == [FORWARD]
    error = pgwire.ErrorResponse.build("ERROR", "42501", "[bastion] no")
    assert s.answer(error, pgwire.ReadyForQuery("I"), pgwire.ReadyForQuery("I"))[1:] == [
        SWALLOW,
        PASS,
    ]


# -- prepared statements by name, whichever way they were made -------------------------


def test_sql_prepare_then_protocol_bind_is_held_on_every_run() -> None:
    s = Session()
    [hold] = s.send(pgwire.Query("PREPARE p AS DELETE FROM t"))
    assert isinstance(hold, Hold)
    s.gate.approved(hold, "approved a-1 by alice")
    s.answer(pgwire.CommandComplete("PREPARE"), pgwire.ReadyForQuery("I"))
    # The approval covers one execution, by the protocol...
    assert s.send(pgwire.Bind("", "p"), pgwire.Execute(""), pgwire.Sync()) == [FORWARD] * 3
    s.answer(pgwire.BindComplete(), pgwire.CommandComplete("DELETE 3"), pgwire.ReadyForQuery("I"))
    assert s.log[-1].verdict == "approved a-1 by alice"
    # ...and no more: by the protocol or by SQL.
    [again] = s.send(pgwire.Bind("", "p"))
    assert isinstance(again, Hold) and again.reasons == (
        "DELETE without WHERE: PREPARE p AS DELETE FROM t",
    )
    [sql_again] = s.send(pgwire.Query("EXECUTE p"))
    assert isinstance(sql_again, Hold)
    assert sql_again.reasons == ("EXECUTE p: DELETE without WHERE: PREPARE p AS DELETE FROM t",)


def test_a_harmless_prepared_statement_runs_without_a_human() -> None:
    # pg_dump: PREPARE getColumnACLs(...) AS SELECT ..., then EXECUTE getColumnACLs(...).
    s = Session()
    assert s.run("PREPARE getColumnACLs(oid) AS SELECT $1", "PREPARE") is FORWARD
    assert s.run("EXECUTE getColumnACLs('1')") is FORWARD
    assert s.run("EXPLAIN ANALYZE EXECUTE getColumnACLs('1')") is FORWARD


@pytest.mark.parametrize(
    "sql", ["EXECUTE nobody_prepared", "EXPLAIN ANALYZE EXECUTE x", "CREATE TABLE t2 AS EXECUTE x"]
)
def test_running_a_name_the_gate_never_saw_prepared_is_held(sql: str) -> None:
    [hold] = Session().send(pgwire.Query(sql))
    assert isinstance(hold, Hold)
    assert "did not see made" in hold.reasons[-1]


def test_prepare_and_execute_in_one_approved_text_use_the_approval_up() -> None:
    s = Session()
    [hold] = s.send(pgwire.Query("PREPARE p AS DELETE FROM t; EXECUTE p"))
    assert isinstance(hold, Hold)
    s.gate.approved(hold, "approved a-1 by alice")
    s.answer(
        pgwire.CommandComplete("PREPARE"),
        pgwire.CommandComplete("DELETE 1"),
        pgwire.ReadyForQuery("I"),
    )
    assert isinstance(s.send(pgwire.Query("EXECUTE p"))[0], Hold)


def test_a_name_is_believed_only_once_the_server_confirms_it() -> None:
    s = Session()
    [hold] = s.send(pgwire.Query("PREPARE p AS DELETE FROM t"))
    assert isinstance(hold, Hold)
    s.gate.approved(hold, "approved")
    s.answer(pgwire.CommandComplete("PREPARE"), pgwire.ReadyForQuery("I"))
    assert s.run("EXECUTE p", "DELETE 3") is FORWARD  # the one covered run
    # In an aborted transaction DEALLOCATE fails: p still holds the DELETE on the server.
    assert s.send(pgwire.Query("DEALLOCATE p")) == [FORWARD]
    s.answer(pgwire.ErrorResponse.build("ERROR", "25P02", "aborted"), pgwire.ReadyForQuery("E"))
    # A harmless PREPARE of the same name fails ("already exists"): still the DELETE.
    assert s.send(pgwire.Query("PREPARE p AS SELECT 1")) == [FORWARD]
    s.answer(pgwire.ErrorResponse.build("ERROR", "42P05", "exists"), pgwire.ReadyForQuery("I"))
    assert isinstance(s.send(pgwire.Query("EXECUTE p"))[0], Hold)
    # Once DEALLOCATE is confirmed, the name is free and means what is prepared next.
    assert s.run("DEALLOCATE p", "DEALLOCATE") is FORWARD
    assert s.run("PREPARE p AS SELECT 1", "PREPARE") is FORWARD
    assert s.run("EXECUTE p") is FORWARD


def test_discard_all_and_close_forget_names_once_confirmed() -> None:
    s = Session()
    assert s.run("PREPARE q AS SELECT 1", "PREPARE") is FORWARD
    assert s.run("DISCARD ALL", "DISCARD ALL") is FORWARD
    assert isinstance(s.send(pgwire.Query("EXECUTE q"))[0], Hold)
    assert s.send(pgwire.Parse("n", "select 1"), pgwire.Sync()) == [FORWARD, FORWARD]
    s.answer(pgwire.ParseComplete(), pgwire.ReadyForQuery("I"))
    assert s.send(pgwire.Close("S", "n"), pgwire.Sync()) == [FORWARD, FORWARD]
    s.answer(pgwire.CloseComplete(), pgwire.ReadyForQuery("I"))
    assert isinstance(s.send(pgwire.Bind("", "n"))[0], Hold)


def test_a_bind_of_a_statement_prepared_in_an_unanswered_batch_waits() -> None:
    s = Session()
    assert s.send(pgwire.Parse("n", "select 1"), pgwire.Sync(), pgwire.Bind("", "n")) == [
        FORWARD,
        FORWARD,
        WAIT,
    ]
    s.answer(pgwire.ParseComplete(), pgwire.ReadyForQuery("I"))
    assert s.send(pgwire.Bind("", "n")) == [FORWARD]


# -- one reading of every statement -------------------------------------------------------


def test_a_statement_that_depends_on_settings_waits_for_the_answers_in_flight() -> None:
    s = Session()
    hidden = b"select E'\x95\\'; drop table t; --'"  # SJIS: 0x95 0x5C is one character
    assert s.send(pgwire.Query("set client_encoding to sjis")) == [FORWARD]
    query = b"Q" + struct.pack("!i", 4 + len(hidden) + 1) + hidden + b"\0"
    assert s.send(query) == [WAIT]  # the SET may change how it reads
    s.answer(
        pgwire.CommandComplete("SET"),
        pgwire.ParameterStatus("client_encoding", "SJIS"),
        pgwire.ReadyForQuery("I"),
    )
    [hold] = s.send(query)  # now read as SJIS: the DROP is a statement of its own
    assert isinstance(hold, Hold) and hold.reasons == ("DROP TABLE: drop table t",)


def test_ascii_without_a_backslash_never_waits() -> None:
    s = Session()
    assert s.send(pgwire.Query("set client_encoding to sjis"), pgwire.Query("select 2")) == [
        FORWARD,
        FORWARD,
    ]


def test_inside_an_unfinished_batch_every_reading_must_pass() -> None:
    s = Session()
    # An Execute of this batch may change standard_conforming_strings: a backslash in the
    # next Parse can't be read, and the batch can't be waited for.
    decisions = s.send(
        pgwire.Parse("", "select set_config('standard_conforming_strings', 'off', false)"),
        pgwire.Bind("", ""),
        pgwire.Execute(""),
        pgwire.Parse("", "select '\\'; delete from t; --'"),
    )
    assert decisions[:3] == [FORWARD] * 3
    hold = decisions[3]
    assert isinstance(hold, Hold) and "standard_conforming_strings" in hold.reasons[0]


def test_standard_strings_off_is_tracked_from_the_server() -> None:
    s = Session()
    s.gate.startup_parameters([pgwire.ParameterStatus("standard_conforming_strings", "off")])
    [hold] = s.send(pgwire.Query("select '\\'; drop table t; --'"))
    assert isinstance(hold, Hold) and "standard_conforming_strings" in hold.reasons[0]


def test_text_not_valid_in_the_session_encoding_is_held_and_shown_safely() -> None:
    s = Session()
    raw = b"select '\xff'"
    [hold] = s.send(b"Q" + struct.pack("!i", 4 + len(raw) + 1) + raw + b"\0")
    assert isinstance(hold, Hold) and hold.reasons[0].startswith("unreadable")
    hold.sql.encode("utf-8")  # no lone surrogate to break the approval's storage


def test_latin9_text_is_read_in_latin9() -> None:
    s = Session()
    s.gate.startup_parameters([pgwire.ParameterStatus("client_encoding", "LATIN9")])
    raw = "select '€'".encode("iso8859-15")
    assert s.send(b"Q" + struct.pack("!i", 4 + len(raw) + 1) + raw + b"\0") == [FORWARD]


# -- every message type has a rule -------------------------------------------------------


def test_fast_path_calls_of_large_object_functions_pass_and_others_are_held() -> None:
    s = Session()
    assert s.send(_function_call(954)) == [FORWARD]  # loread
    assert s.gate.in_flight  # until its ReadyForQuery: expiry cancels it
    s.answer(pgwire.ReadyForQuery("T"))
    assert s.log[-1].sql.startswith("-- fast-path function call: loread")
    [hold] = s.send(_function_call(764))  # lo_import(text): a file on the server
    assert isinstance(hold, Hold) and "OID 764" in hold.reasons[0]


def test_an_authentication_message_after_startup_is_a_protocol_violation() -> None:
    [fatal] = Session().send(pgwire.PasswordMessage("x"))
    assert isinstance(fatal, Fatal) and fatal.sqlstate == "08P01"


def test_terminate() -> None:
    assert Session().send(pgwire.Terminate()) == [TERMINATE]


# -- statements = [] ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql", ["DO $$ BEGIN END $$", "EXECUTE nobody", "SELEC 1", "DROP TABLE t", "select '\\'"]
)
def test_no_rules_no_gate(sql: str) -> None:
    s = Session(rules=())
    s.gate.startup_parameters([pgwire.ParameterStatus("standard_conforming_strings", "off")])
    assert s.send(pgwire.Query(sql)) == [FORWARD]
    assert s.send(_function_call(764)) == [FORWARD]


# -- read as a stream: whole, byte by byte, with trailing data -----------------------------

_MESSAGES = [
    pgwire.Query("select 1"),
    pgwire.Parse("s1", "select $1::int"),
    pgwire.Bind("", "s1", (), (b"7",)),
    pgwire.Describe("P"),
    pgwire.Execute(""),
    pgwire.Sync(),
    pgwire.Query("DROP TABLE t"),
]


@settings(max_examples=50, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=20))
def test_decisions_do_not_depend_on_how_the_bytes_arrive(cuts: list[int]) -> None:
    stream = b"".join(pgwire.encode(m) for m in _MESSAGES)
    expected = _decisions([stream])
    pieces, start = [], 0
    for cut in sorted(set(cuts)):
        if start < cut < len(stream):
            pieces.append(stream[start:cut])
            start = cut
    pieces.append(stream[start:])
    assert _decisions(pieces) == expected
    assert _decisions([bytes([b]) for b in stream]) == expected
    # Trailing data (half of the next message) decides nothing more.
    assert _decisions([stream + pgwire.encode(pgwire.Query("select 2"))[:6]]) == expected


def _decisions(pieces: list[bytes]) -> list[str]:
    s = Session()
    parser = pgwire.FrontendParser(startup=False)
    out = []
    for piece in pieces:
        parser.receive_data(piece)
        while (frame := parser.next_frame()) is not pgwire.NEED_DATA:
            assert frame is not pgwire.CLOSED
            decision = s.gate.client(frame)
            out.append(type(decision).__name__ if isinstance(decision, Hold) else str(decision))
    return out


def test_a_refused_batch_in_an_aborted_transaction_stays_in_step() -> None:
    """The server answers the DO with 25P02 and a ReadyForQuery of its own: swallowed, so
    the client's Sync gets exactly one."""
    s = Session()
    [hold] = s.send(pgwire.Parse("", "DROP TABLE t"))
    assert isinstance(hold, Hold)
    s.gate.refused(hold, "denied a-1", "[bastion] no")
    assert s.send(pgwire.Bind("", ""), pgwire.Execute(""), pgwire.Sync()) == [DROP, DROP, FORWARD]
    aborted = pgwire.ErrorResponse.build("ERROR", "25P02", "current transaction is aborted")
    assert s.answer(aborted, pgwire.ReadyForQuery("E"), pgwire.ReadyForQuery("E")) == [
        PASS,
        SWALLOW,
        PASS,
    ]
    assert not s.gate.in_flight
