"""The statement gate of a PostgreSQL session: frames in, decisions out. No I/O.

`PgRelay` (transport) owns the sockets, the approvals' waiting and the clock; it hands
every frame the agent sends to `StatementGate.client` and every frame the server sends
that the gate watches to `StatementGate.server`, and does what they return:

  client frame -> FORWARD | DROP (skipping to Sync after a refusal) | WAIT (feed it again
                  once the server has answered what is in flight) | Hold (a human decides;
                  then `approved` or `refused` gives the bytes to send) | Fatal | TERMINATE
  server frame -> PASS | SWALLOW | bytes to send instead

What the gate holds to, by construction:

- **One reading of every statement.** The text is read as the server will read it
  (`pgtext.read_sql`): in the session's `client_encoding`, with its
  `standard_conforming_strings`, both tracked from the server's own ParameterStatus
  messages, never from parsing SET. A statement whose reading depends on those settings
  (non-ASCII bytes, a backslash) is judged only when they are known: behind a whole
  cycle still in flight it WAITs; behind work of its own unfinished extended batch
  (which can't be waited for) every reading the server could make must pass.
  What can't be read is held for a human, never allowed.
- **Every message type has a rule.** Query and Parse are classified; Bind runs a
  prepared statement and is judged by what it runs; FunctionCall (the fast path) is
  allowed for the large-object functions libpq's lo_* use and held otherwise; an
  authentication message after startup is a protocol violation; the rest carry no SQL.
  Each statement, function call and batch is in flight (`in_flight`) until the server
  answers it, so expiry and revocation cancel it.
- **Prepared statements by name, whichever way they were made.** SQL PREPARE and
  protocol Parse register a name with what its statement needs; SQL EXECUTE (anywhere it
  runs: EXPLAIN ANALYZE, CREATE TABLE AS) and protocol Bind run it. An approval covers
  one execution. A name is only believed once the server has confirmed it
  (CommandComplete of the PREPARE, ParseComplete); until then, and after the server
  refused to prepare it, it is judged as strictly as anything it might be. DEALLOCATE,
  DISCARD ALL and Close count once confirmed. A name the gate never saw prepared is
  held: something else (a function) made it.
- **`statements = []` turns the gate off**: no rule, nothing held (DO blocks,
  unparseable text and EXECUTE included); the server gives its own errors.

Responses are matched to what asked for them with a queue of `Pending` entries (a
simple Query, FunctionCall or Sync ends at one ReadyForQuery; an Execute at its
CommandComplete or error; a Parse or Close at its ParseComplete or CloseComplete), which
also times statements and counts their rows for the query log (`on_done`).

A refused statement is replaced by a DO block that makes the *server* raise the error
(SQLSTATE 42501, or 57014 for a client's cancel), so the transaction state the client
sees is the server's own; in an extended batch the client's messages up to its Sync
are dropped and the DO's own ReadyForQuery is swallowed.
"""

from __future__ import annotations

import contextlib
import enum
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

from bastion import pgtext, pgwire, sqlclass


class Action(enum.Enum):
    FORWARD = "forward"
    DROP = "drop"
    WAIT = "wait"
    TERMINATE = "terminate"
    PASS = "pass"
    SWALLOW = "swallow"


FORWARD, DROP, WAIT, TERMINATE = Action.FORWARD, Action.DROP, Action.WAIT, Action.TERMINATE
PASS, SWALLOW = Action.PASS, Action.SWALLOW


class Kind(enum.Enum):
    """What a pending entry waits for the server's answer to."""

    QUERY = "query"
    FUNCTION = "function"
    EXECUTE = "execute"
    SYNC = "sync"
    PARSE = "parse"
    CLOSE = "close"
    DENIED_QUERY = "denied-query"
    DENIED_BATCH = "denied-batch"


# Server messages the gate reads; every other type passes unread (rows, in runs).
WATCHED = frozenset({b"C", b"I", b"s", b"E", b"Z", b"S", b"1", b"3"})

PARAM_LIMIT = 200
SQL_LIMIT = 10_000

# Built-in functions (their OIDs are fixed in pg_proc.dat) that libpq's large-object
# calls reach by the fast path: lo_import/lo_export on the client, pg_dump's blobs. The
# server-file lo_import/lo_export (764, 765, 767) and lo_unlink (964) are not here.
LARGE_OBJECT_FUNCTIONS = {
    715: "lo_create",
    952: "lo_open",
    953: "lo_close",
    954: "loread",
    955: "lowrite",
    956: "lo_lseek",
    957: "lo_creat",
    958: "lo_tell",
    1004: "lo_truncate",
    3170: "lo_lseek64",
    3171: "lo_tell64",
    3172: "lo_truncate64",
}


@dataclass(slots=True)
class Pending:
    """One thing sent to the server whose answer has not come yet."""

    kind: Kind
    sql: str = ""
    params: list[str | None] | None = None
    started: float = 0.0
    rows: int = 0
    tags: list[str] = field(default_factory=list)
    error: str | None = None
    verdict: str = "allowed"
    saw_marker: bool = False  # a denied entry: the server answered its DO
    name: str = ""  # PARSE/CLOSE: the statement's name
    effects: list[_Effect | None] = field(default_factory=list)  # QUERY: one per statement
    confirms: Prepared | None = None  # PARSE: what the name holds once the server says so


@dataclass(frozen=True, slots=True)
class Prepared:
    """A prepared statement as the gate knows it."""

    sql: str
    reasons: tuple[str, ...] | None  # None: it may run without approval
    covered: bool = False  # an approval covers its next execution
    approval: str = ""  # that approval's verdict, for the query log of the run it covers
    confirmed: bool = True  # the server said it prepared it
    batch: int = 0  # the batch (count of Syncs) it was prepared in


@dataclass(frozen=True, slots=True)
class _Effect:
    """What one statement of a simple Query does to the names, once it succeeds."""

    prepares: str | None = None
    prepared: Prepared | None = None
    deallocates: str | None = None
    spent: bool = False  # the same text runs what it prepares


@dataclass(frozen=True, slots=True)
class Hold:
    """A human must decide: `reasons` why, `sql` as people read it."""

    frame: pgwire.Frame
    reasons: tuple[str, ...]
    sql: str
    params: list[str | None] | None = None
    plan: _Plan | None = None


@dataclass(frozen=True, slots=True)
class Fatal:
    sqlstate: str
    message: str


ClientDecision = Action | Hold | Fatal
ServerDecision = Action | bytes


@dataclass(frozen=True, slots=True)
class _Plan:
    """What letting a Query/Parse/Bind/FunctionCall through does to the gate's state."""

    kind: Kind
    sql: str
    effects: tuple[_Effect | None, ...] = ()
    consumes: tuple[str, ...] = ()  # names whose approval cover this run uses
    name: str | None = None  # Parse: the statement's name; Bind: the statement bound
    prepared: Prepared | None = None  # Parse: what it prepares
    portal: str = ""  # Bind
    params: list[str | None] | None = None  # Bind
    poisons: tuple[str, ...] = ()  # names whose statements the gate could not be sure of


def deny_statement(message: str, sqlstate: str = "42501") -> str:
    """A DO block that makes the server itself raise `message` with `sqlstate`."""
    text = message.replace("'", "''").replace("$", "")
    return (
        f"DO $bastion$ BEGIN RAISE EXCEPTION USING ERRCODE = '{sqlstate}', MESSAGE = "
        f"'{text}'; END $bastion$"
    )


_UNSEEN: Any = object()


class StatementGate:
    """The gate's state for one PostgreSQL session (see the module docstring)."""

    def __init__(
        self,
        rules: Sequence[sqlclass.StatementRule],
        *,
        redact: bool,
        now: Callable[[], float],
        on_done: Callable[[Pending], None],
    ) -> None:
        self.rule_names = tuple(rules)
        self._ruleset = sqlclass.compile_rules(self.rule_names, sees_execute=True)
        self.redact = redact
        self._now = now
        self._on_done = on_done
        self.settings = pgtext.Settings()
        self.pending: deque[Pending] = deque()
        self.prepared: dict[str, Prepared] = {}
        self._portals: dict[str, tuple[str, list[str | None]]] = {}
        self._verdicts: dict[str, str] = {}  # by portal: the verdict of the Bind that made it
        self._discard_until_sync = False
        self._batch = 0
        self._cache: dict[str, tuple[str, ...] | None] = {}
        self._replacement: bytes | None = None

    # -- what the relay asks ----------------------------------------------------------

    @property
    def on(self) -> bool:
        """False with `statements = []`: nothing is held."""
        return bool(self.rule_names)

    @property
    def in_flight(self) -> bool:
        return bool(self.pending)

    def startup_parameters(self, parameters: Sequence[pgwire.ParameterStatus]) -> None:
        for status in parameters:
            self.settings = self.settings.with_parameter(status.name, status.value)

    def tighten(self, rules: Sequence[sqlclass.StatementRule], redact: bool) -> None:
        """Hold also what `rules` hold (a reloaded, stricter policy)."""
        merged = tuple(dict.fromkeys(self.rule_names + tuple(rules)))
        if merged != self.rule_names:
            self.rule_names = merged
            self._ruleset = sqlclass.compile_rules(merged, sees_execute=True)
            self._cache.clear()
        self.redact = self.redact or redact

    # -- the agent's frames ---------------------------------------------------------------

    def client(self, frame: pgwire.Frame) -> ClientDecision:
        kind = frame[0]
        if self._discard_until_sync:
            if kind != b"S":
                return DROP
            self._discard_until_sync = False
        if kind == b"Q":
            return self._query(frame)
        if kind == b"P":
            return self._parse(frame)
        if kind == b"B":
            return self._bind(frame)
        if kind == b"E":
            self._execute(frame)
        elif kind == b"S":
            self._batch += 1
            self.pending.append(Pending(Kind.SYNC))
        elif kind == b"C":
            self._close(frame)
        elif kind == b"F":
            return self._function_call(frame)
        elif kind == b"X":
            return TERMINATE
        elif kind == b"p":
            return Fatal("08P01", "protocol violation: an authentication message after startup")
        return FORWARD  # Describe, Flush, CopyData/Done/Fail: no SQL of their own

    def approved(self, hold: Hold, verdict: str) -> bytes:
        """The held frame may run once; its bytes, to send."""
        assert hold.plan is not None
        self._let_through(hold.plan, verdict, approved=True)
        return hold.frame[1]

    def refused(self, hold: Hold, verdict: str, message: str, sqlstate: str = "42501") -> bytes:
        """The held frame must not run; the bytes to send instead (the DO refusal)."""
        assert hold.plan is not None
        if hold.plan.kind in (Kind.QUERY, Kind.FUNCTION):
            entry = Pending(Kind.DENIED_QUERY, sql=hold.sql[:SQL_LIMIT], started=self._now())
        else:
            # The client's messages up to its Sync are dropped; its Sync is forwarded and
            # answers the batch. The DO's own ReadyForQuery is swallowed (or, if the server
            # was skipping to Sync after an earlier error, it ignores the DO).
            self._discard_until_sync = True
            entry = Pending(Kind.DENIED_BATCH, sql=hold.sql[:SQL_LIMIT], started=self._now())
        entry.verdict = verdict
        self.pending.append(entry)
        return pgwire.encode(pgwire.Query(deny_statement(message, sqlstate)))

    # -- simple Query and Parse ------------------------------------------------------------

    def _query(self, frame: pgwire.Frame) -> ClientDecision:
        raw = _cstring(frame[1])
        if self.on and raw.isascii() and b"\\" not in raw:
            # The usual simple query (pgbench's, every driver's): its reading is the same
            # in every encoding and setting, and it names no prepared statement.
            text = raw.decode("ascii")
            if not _names_prepared(text):
                reasons = self._check(text, False)
                if reasons:
                    return Hold(frame, reasons, text, plan=_Plan(Kind.QUERY, text))
                entry = Pending(Kind.QUERY, sql=text[:SQL_LIMIT], started=self._now())
                self.pending.append(entry)
                return FORWARD
        if not self.on:
            self._let_through(
                _Plan(Kind.QUERY, pgtext.shown(raw, self.settings)), "allowed", approved=False
            )
            return FORWARD
        judged = self._judge(raw)
        if judged is WAIT:
            return WAIT
        assert isinstance(judged, _Judged)
        plan = _Plan(
            Kind.QUERY, judged.sql, judged.effects, judged.consumes, poisons=judged.poisons
        )
        if judged.reasons:
            return Hold(frame, judged.reasons, judged.sql, plan=plan)
        self._let_through(plan, "allowed", approved=False)
        return FORWARD

    def _parse(self, frame: pgwire.Frame) -> ClientDecision:
        parse = cast(pgwire.Parse, pgwire.decode_frontend(frame))
        raw = parse.query.encode("utf-8", "surrogateescape")  # pgwire's decoding, undone
        if not self.on:  # nothing held; the name is kept for the query log
            self.prepared[parse.name] = Prepared(pgtext.shown(raw, self.settings), None)
            return FORWARD
        judged = self._judge(raw)
        if judged is WAIT:
            return WAIT
        assert isinstance(judged, _Judged)
        prepared = Prepared(judged.sql, judged.reasons or None, batch=self._batch)
        plan = _Plan(
            Kind.PARSE, judged.sql, (), judged.consumes, name=parse.name, prepared=prepared,
            poisons=judged.poisons,
        )  # fmt: skip
        if judged.reasons:
            return Hold(frame, judged.reasons, judged.sql, plan=plan)
        self._let_through(plan, "allowed", approved=False)
        return FORWARD

    def _judge(self, raw: bytes) -> _Judged | Action:
        depends = not raw.isascii() or b"\\" in raw
        uncertain = False
        if depends and self.pending:
            if any(_cycle(p.kind) for p in self.pending):
                return WAIT  # the server answers those without us: then the settings are known
            uncertain = True  # work of this unfinished batch: can't be waited for
        try:
            reading = pgtext.read_sql(raw, self.settings, uncertain=uncertain)
        except pgtext.Unreadable as exc:
            shown = pgtext.shown(raw, self.settings)
            return _Judged((f"unreadable: {exc}",), shown)
        reasons: list[str] = []
        effects: tuple[_Effect | None, ...] = ()
        consumes: tuple[str, ...] = ()
        poisons: list[str] = []
        for index, text in enumerate(reading.texts):
            if _names_prepared(text):
                ops = sqlclass.statement_ops(text, self._ruleset)
                if isinstance(ops, sqlclass.NeedsApproval):
                    reasons += ops.reasons
                    continue
                more, text_effects, text_consumes = self._resolve(ops, reading.shown)
                reasons += more
                if index == 0 and len(reading.texts) == 1:
                    effects, consumes = text_effects, text_consumes
                else:  # not sure which reading the server makes: trust none of its names
                    poisons += [op.prepares for op in ops if op.prepares is not None]
            else:
                reasons += self._check(text, uncertain or not self.settings.default)
        return _Judged(
            tuple(dict.fromkeys(reasons)), reading.shown, effects, consumes, tuple(poisons)
        )

    def _check(self, text: str, uncached: bool) -> tuple[str, ...]:
        if uncached:
            verdict = sqlclass.check_sql(text, self._ruleset)
            return verdict.reasons if verdict is not None else ()
        found = self._cache.get(text, _UNSEEN)
        if found is _UNSEEN:
            # Drivers send the same Parse text on every execute: classify it once.
            verdict = sqlclass.check_sql(text, self._ruleset)
            found = verdict.reasons if verdict is not None else None
            if len(self._cache) >= 256:
                self._cache.clear()
            self._cache[text] = found
        return found or ()

    def _resolve(
        self, ops: tuple[sqlclass.StatementOps, ...], shown: str
    ) -> tuple[list[str], tuple[_Effect | None, ...], tuple[str, ...]]:
        """Run the text's statements over a copy of the names: the reasons its EXECUTEs
        add, each statement's effect once it succeeds, and the covers its runs use."""
        names = dict(self.prepared)
        reasons: list[str] = []
        effects: list[_Effect | None] = []
        consumes: list[str] = []
        prepared_here: dict[str, int] = {}  # name -> index of its PREPARE in `effects`
        for op in ops:
            reasons += op.reasons
            for name in op.executes:
                reasons += self._execution_reasons(names, name, "EXECUTE")
                known = names.get(name)
                if name in prepared_here:  # run by the text that prepares it: no cover left
                    effect = effects[prepared_here[name]]
                    assert effect is not None
                    effects[prepared_here[name]] = replace(effect, spent=True)
                elif known is not None and known.reasons and known.covered:
                    consumes.append(name)
                    names[name] = replace(known, covered=False)
            effect = None
            if op.prepares is not None:
                prepared = Prepared(shown, op.reasons or None, batch=self._batch)
                names[op.prepares] = prepared
                prepared_here[op.prepares] = len(effects)
                effect = _Effect(prepares=op.prepares, prepared=prepared)
            elif op.deallocates is not None:
                if op.deallocates:
                    names.pop(op.deallocates, None)
                else:
                    names.clear()
                effect = _Effect(deallocates=op.deallocates)
            effects.append(effect)
        return reasons, tuple(effects), tuple(consumes)

    def _execution_reasons(self, names: dict[str, Prepared], name: str, how: str) -> list[str]:
        known = names.get(name)
        if known is None:
            return [f"{how} {name or '(unnamed)'}: a prepared statement the gate did not see made"]
        if known.reasons and not known.covered:
            if how != "EXECUTE":  # a Bind runs the statement its reasons already quote
                return list(known.reasons)
            return [f"{how} {name or '(unnamed)'}: {reason}" for reason in known.reasons]
        return []

    # -- Bind, Execute, Close, FunctionCall -------------------------------------------------

    def _bind(self, frame: pgwire.Frame) -> ClientDecision:
        bind = cast(pgwire.Bind, pgwire.decode_frontend(frame))
        params = [self._param(bind, i, v) for i, v in enumerate(bind.params)]
        known = self.prepared.get(bind.statement)
        sql = known.sql if known is not None else ""
        plan = _Plan(Kind.EXECUTE, sql, name=bind.statement, portal=bind.portal, params=params)
        if not self.on:
            self._let_through(plan, "allowed", approved=False)
            return FORWARD
        if known is not None and not known.confirmed and known.batch < self._batch:
            return WAIT  # prepared in an earlier batch the server has yet to answer
        reasons = self._execution_reasons(self.prepared, bind.statement, "Bind of")
        if reasons:
            return Hold(frame, tuple(reasons), sql, params=params, plan=plan)
        verdict = "allowed"
        if known is not None and known.reasons and known.covered:
            plan = replace(plan, consumes=(bind.statement,))
            verdict = known.approval or verdict
        self._let_through(plan, verdict, approved=False)
        return FORWARD

    def _execute(self, frame: pgwire.Frame) -> None:
        execute = cast(pgwire.Execute, pgwire.decode_frontend(frame))
        statement, params = self._portals.get(execute.portal, ("", []))
        known = self.prepared.get(statement)
        self.pending.append(
            Pending(
                Kind.EXECUTE,
                sql=known.sql[:SQL_LIMIT] if known is not None else "",
                params=params,
                started=self._now(),
                verdict=self._verdicts.get(execute.portal, "allowed"),
            )
        )

    def _close(self, frame: pgwire.Frame) -> None:
        close = cast(pgwire.Close, pgwire.decode_frontend(frame))
        if close.kind == "S" and self.on:
            self.pending.append(Pending(Kind.CLOSE, name=close.name))

    def _function_call(self, frame: pgwire.Frame) -> ClientDecision:
        body = frame[1]
        oid = int.from_bytes(body[5:9], "big") if len(body) >= 9 else -1
        name = LARGE_OBJECT_FUNCTIONS.get(oid)
        sql = f"-- fast-path function call: {name or 'function'} (OID {oid})"
        plan = _Plan(Kind.FUNCTION, sql)
        if self.on and name is None:
            reason = f"fast-path call of function OID {oid}: the gate can't see what it runs"
            return Hold(frame, (reason,), sql, plan=plan)
        self._let_through(plan, "allowed", approved=False)
        return FORWARD

    # -- letting a statement through ------------------------------------------------------

    def _let_through(self, plan: _Plan, verdict: str, *, approved: bool) -> None:
        for name in plan.consumes:
            known = self.prepared.get(name)
            if known is not None:
                self.prepared[name] = replace(known, covered=False)
        for name in plan.poisons:
            self.prepared[name] = Prepared(
                f"-- {name}: prepared in a text the gate could not be sure how the server read",
                ("prepared where the gate could not be sure how the server read it",),
            )
        if plan.kind is Kind.QUERY:
            effects = [_covered(e, verdict if approved else "") for e in plan.effects]
            for effect in effects:
                if effect is not None and effect.prepares is not None:
                    self._expect(effect.prepares, effect.prepared)
            entry = Pending(Kind.QUERY, sql=plan.sql[:SQL_LIMIT], started=self._now())
            entry.verdict, entry.effects = verdict, effects
            self.pending.append(entry)
        elif plan.kind is Kind.FUNCTION:
            entry = Pending(Kind.FUNCTION, sql=plan.sql, started=self._now(), verdict=verdict)
            self.pending.append(entry)
        elif plan.kind is Kind.PARSE:
            assert plan.name is not None and plan.prepared is not None
            covered = approved and bool(plan.prepared.reasons)
            prepared = replace(plan.prepared, covered=covered, approval=verdict if covered else "")
            if plan.name == "":
                # The server drops the unnamed statement before parsing a new one.
                self.prepared[""] = prepared
            else:
                self._expect(plan.name, prepared)
            self.pending.append(Pending(Kind.PARSE, name=plan.name, confirms=prepared))
        elif plan.kind is Kind.EXECUTE:  # a Bind
            assert plan.name is not None
            self._portals[plan.portal] = (plan.name, plan.params or [])
            self._verdicts[plan.portal] = verdict

    def _expect(self, name: str, prepared: Prepared | None) -> None:
        """`name` will hold `prepared` once the server confirms it; until then it is
        judged as strictly as anything it may hold (the old statement, if the server
        refuses to replace it)."""
        assert prepared is not None
        old = self.prepared.get(name)
        if old is not None:
            union = tuple(dict.fromkeys((old.reasons or ()) + (prepared.reasons or ())))
            self.prepared[name] = replace(
                prepared, reasons=union or None, covered=False, confirmed=False
            )
        else:
            self.prepared[name] = replace(prepared, confirmed=False)

    def _param(self, bind: pgwire.Bind, index: int, value: bytes | None) -> str | None:
        if value is None:
            return None
        if self.redact:
            return "<redacted>"
        formats = bind.param_formats
        binary = (formats[index] if len(formats) > 1 else formats[0] if formats else 0) == 1
        text = ("\\x" + value.hex()) if binary else pgtext.shown(value, self.settings)
        return text if len(text) <= PARAM_LIMIT else text[:PARAM_LIMIT] + "…"

    # -- the server's frames ----------------------------------------------------------------

    def server(self, frame: pgwire.Frame) -> ServerDecision:
        """Account for one backend message of a WATCHED type."""
        kind = frame[0]
        if kind == b"C":
            tag = pgwire.command_tag(frame)
            entry = self._head(Kind.QUERY, Kind.EXECUTE)
            if entry is not None:
                if entry.kind is Kind.QUERY and len(entry.tags) < len(entry.effects):
                    self._confirm(entry.effects[len(entry.tags)])
                entry.tags.append(tag)
                entry.rows += pgwire.tag_rows(tag) or 0
                if entry.kind is Kind.EXECUTE:
                    self._done(entry)
        elif kind in (b"I", b"s"):
            entry = self._head(Kind.EXECUTE)
            if entry is not None:
                self._done(entry)
        elif kind == b"1":
            entry = self._head(Kind.PARSE)
            if entry is not None:
                self.pending.popleft()
                if entry.name and entry.confirms is not None:
                    self.prepared[entry.name] = replace(entry.confirms, confirmed=True)
        elif kind == b"3":
            entry = self._head(Kind.CLOSE)
            if entry is not None:
                self.pending.popleft()
                self.prepared.pop(entry.name, None)
        elif kind == b"E":
            return self._error(frame)
        elif kind == b"S":
            status = cast(pgwire.ParameterStatus, pgwire.decode_backend(frame))
            self.settings = self.settings.with_parameter(status.name, status.value)
        elif kind == b"Z":
            return self._ready_for_query()
        return PASS

    def _confirm(self, effect: _Effect | None) -> None:
        if effect is None:
            return
        if effect.prepares is not None and effect.prepared is not None:
            self.prepared[effect.prepares] = replace(effect.prepared, confirmed=True)
        elif effect.deallocates is not None:
            if effect.deallocates:
                self.prepared.pop(effect.deallocates, None)
            else:
                self.prepared.clear()

    def _error(self, frame: pgwire.Frame) -> ServerDecision:
        error = cast(pgwire.ErrorResponse, pgwire.decode_backend(frame))
        entry = self._head(
            Kind.QUERY, Kind.EXECUTE, Kind.FUNCTION, Kind.DENIED_QUERY, Kind.DENIED_BATCH,
            Kind.PARSE, Kind.CLOSE,
        )  # fmt: skip
        if entry is None:
            return PASS
        entry.error = f"{error.sqlstate} {error.message}"
        if entry.kind is Kind.QUERY:
            self._poison_unconfirmed(entry.effects[len(entry.tags) :])
        elif entry.kind is Kind.PARSE:
            self.pending.popleft()
            self._refused_prepare(entry.name)
        elif entry.kind is Kind.CLOSE:
            self.pending.popleft()
        elif entry.kind is Kind.EXECUTE:
            self._done(entry)
        else:
            # A denied entry: the server ran the DO (it raised our refusal, or refused to
            # run anything in an aborted transaction: 25P02, the truth either way), so the
            # DO has a ReadyForQuery of its own. (Skipping to a Sync, it answers nothing.)
            entry.saw_marker = True
            if error.message.startswith("[bastion]"):
                # Our refusal, without the PL/pgSQL context of the DO that raised it.
                fields = {k: v for k, v in error.fields.items() if k in "SVCM"}
                return pgwire.encode(pgwire.ErrorResponse(fields))
        return PASS

    def _poison_unconfirmed(self, effects: Sequence[_Effect | None]) -> None:
        for effect in effects:
            if effect is not None and effect.prepares is not None:
                self._refused_prepare(effect.prepares)

    def _refused_prepare(self, name: str) -> None:
        """The server did not prepare `name` as the gate expected: if it holds a statement
        still, it is one the gate did not see. Held until a confirmed DEALLOCATE or
        PREPARE tells the gate what it is."""
        known = self.prepared.get(name)
        if known is not None and not known.confirmed and name:
            self.prepared[name] = replace(
                known,
                reasons=(known.reasons or ())
                + (f"{name}: the server refused to prepare it; it may hold another statement",),
                covered=False,
                confirmed=True,
            )

    def _head(self, *kinds: Kind) -> Pending | None:
        return self.pending[0] if self.pending and self.pending[0].kind in kinds else None

    def _ready_for_query(self) -> ServerDecision:
        # What is left before the batch's end was skipped by the server after an error.
        while self.pending and not _cycle(self.pending[0].kind):
            skipped = self.pending.popleft()
            if skipped.kind is Kind.EXECUTE:
                skipped.error = skipped.error or "not executed (an earlier statement failed)"
                self._on_done(skipped)
            elif skipped.kind is Kind.PARSE:
                self._refused_prepare(skipped.name)
        if not self.pending:
            return PASS
        entry = self.pending.popleft()
        if entry.kind is Kind.QUERY:
            self._poison_unconfirmed(entry.effects[len(entry.tags) :])
        if entry.kind is Kind.DENIED_BATCH:
            self._on_done(entry)
            if entry.saw_marker:
                return SWALLOW  # the DO's own answer; the client's Sync gets the next one
            # The server skipped the DO: this answers the client's Sync.
            if self.pending and self.pending[0].kind is Kind.SYNC:
                self.pending.popleft()
            return PASS
        if entry.kind is not Kind.SYNC:
            self._on_done(entry)
        return PASS

    def _done(self, entry: Pending) -> None:
        with contextlib.suppress(ValueError):
            self.pending.remove(entry)
        self._on_done(entry)


@dataclass(frozen=True, slots=True)
class _Judged:
    reasons: tuple[str, ...]
    sql: str
    effects: tuple[_Effect | None, ...] = ()
    consumes: tuple[str, ...] = ()
    poisons: tuple[str, ...] = ()


def _covered(effect: _Effect | None, approval: str) -> _Effect | None:
    """A PREPARE in a text approved (`approval`, its verdict): the approval covers one
    execution, unless the text ran it already."""
    if effect is None or effect.prepared is None or effect.prepares is None:
        return effect
    covered = bool(approval) and bool(effect.prepared.reasons) and not effect.spent
    prepared = replace(effect.prepared, covered=covered, approval=approval if covered else "")
    return replace(effect, prepared=prepared)


def _names_prepared(text: str) -> bool:
    """Could `text` prepare, run or drop a prepared statement? (A loop of `in` over the
    lowered text: several times cheaper than a case-blind regular expression.)"""
    lowered = text.lower()
    for word in sqlclass.PREPARED_WORDS:  # noqa: SIM110 (not any(): a generator costs more)
        if word in lowered:
            return True
    return False


def _cycle(kind: Kind) -> bool:
    """Is an entry of `kind` answered by a ReadyForQuery of its own? (Identity tests:
    hashing an Enum member runs Python code, and this is on every answer's path.)"""
    return (
        kind is Kind.QUERY
        or kind is Kind.SYNC
        or kind is Kind.FUNCTION
        or (kind is Kind.DENIED_QUERY or kind is Kind.DENIED_BATCH)
    )


def _cstring(raw: bytes) -> bytes:
    """A Query frame's text, without its header and NUL."""
    end = raw.find(b"\0", 5)
    return raw[5:end] if end >= 0 else raw[5:]
