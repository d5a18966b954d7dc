"""Which SQL statements need a human's approval before the PostgreSQL relay forwards them.

Responsible for: reading SQL text with PostgreSQL's own grammar (pglast wraps libpg_query, the
server's parser; regular expressions never decide), and matching every statement the text
would run against `StatementRule`s. The answer is a value, `Allowed(kinds)` or
`NeedsApproval(reasons)`: this module decides, the relay enforces. `classify_sql` never
raises; `check_sql` gives the relay the same verdict on rules compiled once per session
(`compile_rules`), without naming the statements' kinds. `statement_kind` names
statements for the query log, after PostgreSQL's command tags ("SELECT", "DROP TABLE").

Not responsible for: sessions, approvals, rewriting SQL, or what the database would permit.
It is a tripwire for well-meaning agents, not a sandbox: what runs inside functions and
procedures (`SELECT f()`, `CALL p()`, triggers, rules, `dblink_exec`) is not seen.

Rules, by name, as `bastion.toml` spells them. Default (`DEFAULT_RULES`):
  drop                  DROP of any object (TABLE, INDEX, SCHEMA, DATABASE, ROLE, OWNED, ...)
  truncate              TRUNCATE, in a transaction or not
  delete-without-where  DELETE with no WHERE clause (`WHERE true` counts as a WHERE: only the
                        absence is detected); MERGE with any DELETE action (its ON
                        condition bounds nothing: `ON true` matches every row)
  update-without-where  UPDATE with no WHERE clause (likewise); MERGE with an UPDATE action
                        that has no condition of its own (`WHEN MATCHED AND ... THEN UPDATE`)
  alter-drop            ALTER subcommands spelled DROP: ALTER TABLE/FOREIGN TABLE/TYPE ... DROP
                        COLUMN|ATTRIBUTE|CONSTRAINT, ALTER COLUMN ... DROP DEFAULT|NOT NULL|
                        EXPRESSION|IDENTITY; ALTER DOMAIN, EXTENSION, OPERATOR FAMILY,
                        PUBLICATION, SUBSCRIPTION, TEXT SEARCH CONFIGURATION, GROUP ... DROP;
                        ... OPTIONS (DROP name)
  copy-program          COPY ... TO PROGRAM or FROM PROGRAM (a shell command on the server)
Opt-in:
  grant, revoke         GRANT / REVOKE of privileges or roles, ALTER DEFAULT PRIVILEGES
  vacuum-full           VACUUM FULL (an exclusive lock while each table is rewritten)
  ddl                   any DDL: the statements PostgreSQL logs under `log_statement = 'ddl'`
                        (CREATE, ALTER, DROP, COMMENT, SECURITY LABEL, GRANT, REVOKE, CLUSTER,
                        REFRESH MATERIALIZED VIEW, SELECT INTO, CREATE TABLE AS, ...)
  delete, update, merge any DELETE / UPDATE / MERGE, with a WHERE or not
  create-extension      CREATE EXTENSION
  copy-file             COPY to or from a file on the database server

What a statement runs is looked into: data-modifying WITH queries at any depth, `INSERT ...
SELECT`, `COPY (query) TO`, `CREATE TABLE ... AS`, `PREPARE x AS <statement>`, `CREATE
SCHEMA` elements, and `EXPLAIN ANALYZE <statement>` (ANALYZE executes it; plain EXPLAIN
does not, so its statement is skipped). What a statement only defines is not: the actions
of CREATE RULE and `BEGIN ATOMIC` function bodies run later, when fired or called, and
string function bodies are opaque anyway (the `ddl` rule catches the definitions).

It fails closed, whatever the rules. Text that does not parse (`unparseable: <pglast's
message>`), text with a NUL character or that is not UTF-8, text over `MAX_SQL_BYTES`
(`too long`, which bounds parse time), DO blocks (`DO block: can't see inside`) and
SQL-level EXECUTE, whose prepared statement is not in the text, need approval. EXECUTE is
rare: a prepared statement's text was classified when it was prepared (PREPARE, or a
protocol-level Parse, which the relay classifies itself), so a relay that tracks names
could allow it; this module cannot know. An empty text (or only comments) is `Allowed(())`.

In a text with several statements, every statement is classified: one that needs approval
makes the whole text need approval. Reasons read `<what matched>: <statement>`, e.g.
`DROP TABLE: DROP TABLE users`, with the statement's whitespace collapsed and cut at
`REASON_STATEMENT_CHARS` characters; approvals bind to the full text, not to reasons.

Cost: parsing is cheap, decoding libpg_query's parse tree into Python is not. A rule can only
match where its keywords are written (a DELETE statement has the word "delete" in its text;
keywords cannot be quoted or escaped), so a text holding none of the active rules' keywords
skips the decode (and `check_sql`, with no kinds to name and no "do" in the text, skips
building the tree: it only asks the parser whether the text parses), and statements whose
rules could only match at the top are not walked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from pglast import ast as _pg_ast
from pglast import parser as _pg_parser

MAX_SQL_BYTES = 1024 * 1024  # UTF-8 bytes; longer text is refused unparsed
REASON_STATEMENT_CHARS = 200

_Fields = dict[str, Any]
# (node type, its fields, the kind of the top-level statement) -> what matched, or None
_Matcher = Callable[[str, _Fields, str], str | None]


@dataclass(frozen=True)
class Allowed:
    """Every statement was understood and none matched a rule."""

    kinds: tuple[str, ...]  # one per statement, for the query log: ("SELECT",)


@dataclass(frozen=True)
class NeedsApproval:
    reasons: tuple[str, ...]  # ("DROP TABLE: DROP TABLE users",)


@dataclass(frozen=True)
class StatementRule:
    """One rule by name (see the module docstring); `parse_rule` reads it from config."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in _RULES:
            known = ", ".join(_RULES)
            raise ValueError(f"unknown statement rule {self.name!r}: use one of {known}")


def parse_rule(text: str) -> StatementRule:
    """`"delete-without-where"` -> StatementRule; ValueError names the known rules."""
    return StatementRule(text.strip().lower())


# --- the rules -----------------------------------------------------------------------------


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Statement nodes PostgreSQL does not log as DDL (utility.c, GetCommandLogLevel), and nodes
# named *Stmt that are parts of other statements. Every other *Stmt node is DDL, so a node
# type new to a later pglast counts as DDL until it is listed here.
_NOT_DDL = _names(
    """SelectStmt InsertStmt UpdateStmt DeleteStmt MergeStmt TruncateStmt CopyStmt ExplainStmt
    PrepareStmt ExecuteStmt DeallocateStmt TransactionStmt DeclareCursorStmt FetchStmt
    ClosePortalStmt DoStmt CallStmt NotifyStmt ListenStmt UnlistenStmt LoadStmt VacuumStmt
    VariableSetStmt VariableShowStmt DiscardStmt LockStmt ConstraintsSetStmt CheckPointStmt
    ReindexStmt RawStmt PLAssignStmt ReturnStmt SetOperationStmt ReplicaIdentityStmt"""
)
_STATEMENT_TYPES = frozenset(
    name
    for name, value in vars(_pg_ast).items()
    if name.endswith("Stmt") and isinstance(value, type) and issubclass(value, _pg_ast.Node)
)
_DDL = (_STATEMENT_TYPES - _NOT_DDL) | {"SelectStmt"}  # SelectStmt: SELECT INTO


def _kind_of(t: str, f: _Fields, _: str) -> str | None:
    return _kind(t, f)


def _without_where(t: str, f: _Fields, _: str) -> str | None:
    return None if "whereClause" in f else f"{_kind(t, f)} without WHERE"


_MERGE_WHEN = {
    "MERGE_WHEN_MATCHED": "WHEN MATCHED",
    "MERGE_WHEN_NOT_MATCHED_BY_SOURCE": "WHEN NOT MATCHED BY SOURCE",
    "MERGE_WHEN_NOT_MATCHED_BY_TARGET": "WHEN NOT MATCHED",
}


def _merge_actions(command: str, unbounded_only: bool) -> _Matcher:
    """A MERGE's DELETE (or UPDATE) actions. Its join condition bounds nothing the way a
    WHERE does (`ON true`, or a source that is the table itself, matches every row), so
    every DELETE action counts as unbounded, and an UPDATE action unless it has a
    condition of its own (`WHEN MATCHED AND ... THEN UPDATE`, like `UPDATE ... WHERE`)."""
    verb = command.removeprefix("CMD_")

    def match(t: str, f: _Fields, _: str) -> str | None:
        for clause in f.get("mergeWhenClauses", ()):
            _, when = _typed(clause)
            if when.get("commandType") != command:
                continue
            if unbounded_only and command == "CMD_UPDATE" and "condition" in when:
                continue
            which = _MERGE_WHEN.get(when.get("matchKind", ""), "WHEN MATCHED")
            return f"MERGE ... {which} THEN {verb}"
        return None

    return match


def _either(merge: _Matcher, other: _Matcher) -> _Matcher:
    return lambda t, f, kind: merge(t, f, kind) if t == "MergeStmt" else other(t, f, kind)


_ALTER_TABLE_DROPS = {
    "AT_DropColumn": "DROP COLUMN",
    "AT_DropConstraint": "DROP CONSTRAINT",
    "AT_DropNotNull": "DROP NOT NULL",
    "AT_DropExpression": "DROP EXPRESSION",
    "AT_DropIdentity": "DROP IDENTITY",
}
_DOMAIN_DROPS = {"X": "DROP CONSTRAINT", "N": "DROP NOT NULL", "T": "DROP DEFAULT"}


def _alter_drop(t: str, f: _Fields, kind: str) -> str | None:
    what: str | None = None
    if t == "AlterTableCmd":
        subtype = f.get("subtype", "")
        what = _ALTER_TABLE_DROPS.get(subtype)
        if subtype == "AT_ColumnDefault" and "def" not in f:
            what = "DROP DEFAULT"
        if what == "DROP COLUMN" and kind == "ALTER TYPE":
            what = "DROP ATTRIBUTE"
    elif t == "DefElem" and f.get("defaction") == "DEFELEM_DROP":
        what = f"OPTIONS (DROP {f.get('defname', '')})"
    elif t == "AlterDomainStmt" and not (f.get("subtype") == "T" and "def" in f):
        what = _DOMAIN_DROPS.get(f.get("subtype", ""))
    elif t == "AlterSubscriptionStmt":
        dropping = f.get("kind") == "ALTER_SUBSCRIPTION_DROP_PUBLICATION"
        what = "DROP PUBLICATION" if dropping else None
    elif t == "AlterTSConfigurationStmt":
        what = "DROP MAPPING" if f.get("kind") == "ALTER_TSCONFIG_DROP_MAPPING" else None
    elif t == "AlterRoleStmt":  # ALTER GROUP g DROP USER u
        what = "DROP USER" if f.get("action") == -1 else None
        kind = "ALTER GROUP"
    elif (
        (t == "AlterExtensionContentsStmt" and f.get("action") == -1)
        or (t == "AlterOpFamilyStmt" and f.get("isDrop"))
        or (t == "AlterPublicationStmt" and f.get("action") == "AP_DropObjects")
    ):
        what = "DROP"
    return None if what is None else f"{kind} ... {what}"


def _copy(program: bool) -> _Matcher:
    def match(t: str, f: _Fields, _: str) -> str | None:
        if bool(f.get("is_program")) != program or (not program and "filename" not in f):
            return None
        where = "PROGRAM" if program else "a server file"
        return f"COPY ... {'FROM' if f.get('is_from') else 'TO'} {where}"

    return match


def _grant(is_grant: bool) -> _Matcher:
    def match(t: str, f: _Fields, _: str) -> str | None:
        # ALTER DEFAULT PRIVILEGES embeds its GrantStmt by value, untyped.
        grant = f.get("action", {}) if t == "AlterDefaultPrivilegesStmt" else f
        return _kind(t, f) if bool(grant.get("is_grant")) == is_grant else None

    return match


def _vacuum_full(t: str, f: _Fields, _: str) -> str | None:
    full = f.get("is_vacuumcmd") and _option_set(f.get("options", ()), "full")
    return "VACUUM FULL" if full else None


def _ddl(t: str, f: _Fields, _: str) -> str | None:
    if t == "SelectStmt" and "intoClause" not in f:
        return None
    return f"DDL ({_kind(t, f)})"


def _always(label: str) -> _Matcher:
    return lambda t, f, kind: label


class _Rule(NamedTuple):
    types: frozenset[str]  # the node types `match` inspects
    keywords: tuple[str, ...] | None  # one is in the text of whatever matches; None: unknown
    match: _Matcher


_GRANTS = _names("GrantStmt GrantRoleStmt AlterDefaultPrivilegesStmt")
# MERGE's DELETE and UPDATE actions count as DELETE and UPDATE statements.
_ANY_DELETE = _Rule(
    _names("DeleteStmt MergeStmt"),
    ("delete",),
    _either(_merge_actions("CMD_DELETE", False), _kind_of),
)
_ANY_UPDATE = _Rule(
    _names("UpdateStmt MergeStmt"),
    ("update",),
    _either(_merge_actions("CMD_UPDATE", False), _kind_of),
)
_RULES: dict[str, _Rule] = {
    "drop": _Rule(
        _names("""DropStmt DropdbStmt DropRoleStmt DropTableSpaceStmt DropOwnedStmt
        DropUserMappingStmt DropSubscriptionStmt"""),
        ("drop",),
        _kind_of,
    ),
    "truncate": _Rule(_names("TruncateStmt"), ("truncate",), _always("TRUNCATE")),
    "delete-without-where": _ANY_DELETE._replace(
        match=_either(_merge_actions("CMD_DELETE", True), _without_where)
    ),
    "update-without-where": _ANY_UPDATE._replace(
        match=_either(_merge_actions("CMD_UPDATE", True), _without_where)
    ),
    "alter-drop": _Rule(
        _names("""AlterTableCmd DefElem AlterDomainStmt AlterExtensionContentsStmt
        AlterOpFamilyStmt AlterPublicationStmt AlterSubscriptionStmt AlterTSConfigurationStmt
        AlterRoleStmt"""),
        ("drop",),
        _alter_drop,
    ),
    "copy-program": _Rule(_names("CopyStmt"), ("program",), _copy(program=True)),
    "grant": _Rule(_GRANTS, ("grant",), _grant(is_grant=True)),
    "revoke": _Rule(_GRANTS, ("revoke",), _grant(is_grant=False)),
    "vacuum-full": _Rule(_names("VacuumStmt"), ("vacuum",), _vacuum_full),
    "ddl": _Rule(_DDL, None, _ddl),
    "delete": _ANY_DELETE,
    "update": _ANY_UPDATE,
    "merge": _Rule(_names("MergeStmt"), ("merge",), _kind_of),
    "create-extension": _Rule(_names("CreateExtensionStmt"), ("extension",), _kind_of),
    "copy-file": _Rule(_names("CopyStmt"), ("copy",), _copy(program=False)),
}
# Always on, whatever the rules. DO is found in the parse tree, not by keyword: "do" is in
# too many words ("window", "double") for the keyword pre-check to skip much.
_DO = _Rule(_names("DoStmt"), (), _always("DO block: can't see inside"))
_EXECUTE = _Rule(
    _names("ExecuteStmt"), ("execute",), _always("EXECUTE: can't see the prepared statement")
)

DEFAULT_RULES: tuple[StatementRule, ...] = tuple(
    StatementRule(name)
    for name in (
        "drop",
        "truncate",
        "delete-without-where",
        "update-without-where",
        "alter-drop",
        "copy-program",
    )
)


class _Compiled(NamedTuple):
    matchers: dict[str, tuple[_Matcher, ...]]  # by node type: one dict lookup a node
    keywords: tuple[str, ...] | None  # None: every text needs the full classification


@lru_cache(maxsize=64)
def _compile(rules: tuple[StatementRule, ...], sees_execute: bool = False) -> _Compiled:
    index: dict[str, list[_Matcher]] = {}
    keywords: set[str] | None = set()
    always = (_DO,) if sees_execute else (_DO, _EXECUTE)
    for rule in (*always, *(_RULES[r.name] for r in dict.fromkeys(rules))):
        for node_type in rule.types:
            index.setdefault(node_type, []).append(rule.match)
        if keywords is not None and rule.keywords is not None:
            keywords.update(rule.keywords)
        else:
            keywords = None
    words = None if keywords is None else tuple(sorted(keywords))
    return _Compiled({t: tuple(ms) for t, ms in index.items()}, words)


# --- classifying ---------------------------------------------------------------------------


Ruleset = _Compiled  # `StatementRule`s made ready for matching (`compile_rules`)


def compile_rules(
    rules: Sequence[StatementRule] = DEFAULT_RULES, *, sees_execute: bool = False
) -> Ruleset:
    """`sees_execute`: the caller tracks prepared statements by name itself (the relay's
    gate, with `statement_ops`), so SQL EXECUTE is not held for being unseeable."""
    return _compile(tuple(rules), sees_execute)


def classify_sql(
    sql: str, rules: Sequence[StatementRule] = DEFAULT_RULES
) -> Allowed | NeedsApproval:
    """Does running `sql` (a simple Query, or a Parse's text) need approval?"""
    return _classify(sql, _compile(tuple(rules)), True)


def check_sql(sql: str, ruleset: Ruleset) -> NeedsApproval | None:
    """`classify_sql`'s verdict for the relay, which has no use for the statements' kinds:
    None when `sql` may run as it is. Naming the kinds cost a sixth of the check."""
    verdict = _classify(sql, ruleset, False)
    return verdict if isinstance(verdict, NeedsApproval) else None


_UNNAMED = Allowed(())
# Texts up to this many characters may be checked without building their tree. Building it
# can fail where parsing did not ("stack depth limit exceeded"), but only past 16,000
# levels of nesting, which take at least 32 KB of text (`1+1+1...`): well clear of this.
_TREELESS_MAX = 4096


def _classify(sql: str, compiled: _Compiled, with_kinds: bool) -> Allowed | NeedsApproval:
    keywords = compiled.keywords
    # (A text over the limit is refused by `_parse` before `lowered` is used: not copied.)
    lowered = sql.lower() if len(sql) <= MAX_SQL_BYTES else ""
    plain = keywords is not None
    for word in keywords or ():  # a loop, not any(): a generator costs more than the scan
        if word in lowered:
            plain = False
            break
    try:
        if plain and not with_kinds and "do" not in lowered and len(sql) <= _TREELESS_MAX:
            # No rule can match and there is no tree to name kinds from: all that is left
            # to know is whether the text parses (a DO block would have the word "do").
            _parse(sql, tree=False)
            return _UNNAMED
        raw, tree_json = _parse(sql)
    except _Unreadable as exc:
        return NeedsApproval((str(exc),))
    try:
        if plain and '"DoStmt":' not in tree_json:
            return Allowed(_kinds(tree_json, lowered)) if with_kinds else _UNNAMED
        stmts = _statements(tree_json)
        tops = [_typed(entry["stmt"]) for entry in stmts]
        walk = _nested_match_possible(tree_json, [t for t, _ in tops], compiled.matchers)
        reasons: list[str] = []
        for entry, (top_type, top_fields) in zip(stmts, tops, strict=True):
            kind = _kind(top_type, top_fields)
            nodes = _walk(top_type, top_fields) if walk else [(top_type, top_fields)]
            found = [
                label
                for node_type, fields in nodes
                for match in compiled.matchers.get(node_type, ())
                if (label := match(node_type, fields, kind)) is not None
            ]
            text = _statement_text(raw, entry) if found else ""
            reasons.extend(f"{label}: {text}" for label in found)
        if reasons:
            return NeedsApproval(tuple(dict.fromkeys(reasons)))
        return Allowed(tuple(_kind(t, f) for t, f in tops))
    except _Unreadable as exc:
        return NeedsApproval((str(exc),))
    except Exception as exc:  # a classifier bug must fail closed, not break the relay
        return NeedsApproval((f"unclassifiable: {type(exc).__name__}: {exc}",))


@dataclass(frozen=True)
class StatementOps:
    """One statement of a text, for a caller that tracks prepared statements by name:
    what needs approval in it, and what it does to the session's prepared statements."""

    reasons: tuple[str, ...]  # what needs approval (EXECUTE excepted: see `executes`)
    prepares: str | None = None  # PREPARE name AS ...
    executes: tuple[str, ...] = ()  # EXECUTE name, wherever it runs now (EXPLAIN ANALYZE, CTAS)
    deallocates: str | None = None  # DEALLOCATE name; "" is DEALLOCATE ALL or DISCARD ALL


# Words one of which a text holds if any statement of it touches prepared statements.
PREPARED_WORDS = ("prepare", "execute", "deallocate", "discard")


def statement_ops(sql: str, ruleset: Ruleset) -> tuple[StatementOps, ...] | NeedsApproval:
    """Each statement of `sql`, in order (`ruleset` compiled with `sees_execute`); a
    NeedsApproval when the text can't be read at all."""
    try:
        raw, tree_json = _parse(sql)
        found: list[StatementOps] = []
        for entry in _statements(tree_json):
            top_type, top_fields = _typed(entry["stmt"])
            kind = _kind(top_type, top_fields)
            reasons: list[str] = []
            executes: list[str] = []
            for node_type, fields in _walk(top_type, top_fields):
                if node_type == "ExecuteStmt":
                    executes.append(str(fields.get("name", "")))
                for match in ruleset.matchers.get(node_type, ()):
                    label = match(node_type, fields, kind)
                    if label is not None:
                        reasons.append(label)
            text = _statement_text(raw, entry) if reasons else ""
            deallocates: str | None = None
            if top_type == "DeallocateStmt":
                deallocates = "" if top_fields.get("isall") else str(top_fields.get("name", ""))
            elif top_type == "DiscardStmt" and top_fields.get("target") == "DISCARD_ALL":
                deallocates = ""
            found.append(
                StatementOps(
                    tuple(dict.fromkeys(f"{label}: {text}" for label in reasons)),
                    str(top_fields.get("name", "")) if top_type == "PrepareStmt" else None,
                    tuple(executes),
                    deallocates,
                )
            )
        return tuple(found)
    except _Unreadable as exc:
        return NeedsApproval((str(exc),))
    except Exception as exc:  # a classifier bug must fail closed
        return NeedsApproval((f"unclassifiable: {type(exc).__name__}: {exc}",))


def statement_kind(sql: str) -> str:
    """Command-tag-like kinds for the query log: "SELECT", "SELECT; DROP TABLE", "EMPTY"."""
    try:
        _, tree_json = _parse(sql)
        kinds = _kinds(tree_json, sql.lower())
    except Exception:
        return "UNPARSEABLE"
    return "; ".join(kinds) if kinds else "EMPTY"


# --- parsing -------------------------------------------------------------------------------


class _Unreadable(Exception):
    """Internal: the text cannot be classified; its message is the reason."""


def _parse(sql: str, tree: bool = True) -> tuple[bytes, str]:
    """-> (the text as UTF-8, libpg_query's parse tree as JSON, or "" without `tree`)."""
    if len(sql) > MAX_SQL_BYTES:  # characters <= bytes: refuse before encoding a huge text
        raise _Unreadable(f"too long: over {MAX_SQL_BYTES} bytes")
    if "\0" in sql:  # libpg_query would stop reading at the NUL
        raise _Unreadable("unparseable: contains a NUL character")
    try:
        raw = sql.encode("utf-8")
    except UnicodeEncodeError:
        raise _Unreadable("unparseable: not valid UTF-8 text") from None
    if len(raw) > MAX_SQL_BYTES:
        raise _Unreadable(f"too long: {len(raw)} bytes, over {MAX_SQL_BYTES}")
    try:
        if not tree:  # the same parser, without building the tree: half the cost
            _pg_parser.split(sql)
            return raw, ""
        # JSON rather than pglast's Python node objects: about ten times cheaper to build.
        return raw, _pg_parser.parse_sql_json(sql)
    except _pg_parser.ParseError as exc:
        raise _Unreadable(f"unparseable: {exc}") from None


def _statements(tree_json: str) -> list[_Fields]:
    try:
        stmts: list[_Fields] = json.loads(tree_json).get("stmts", [])
    except RecursionError:
        raise _Unreadable("unparseable: nested too deeply") from None
    return stmts


def _typed(node: _Fields) -> tuple[str, _Fields]:
    """`{"DropStmt": {...}}` -> ("DropStmt", {...})."""
    ((node_type, fields),) = node.items()
    return node_type, fields


# Pre-checks on libpg_query's JSON, which is compact. Inside JSON strings every quote is
# escaped, so a string literal in the SQL can add matches (more work), never hide a node.
_NODE_TYPE = re.compile(r'"([A-Z]\w*)":\s*\{')  # a typed node: {"DeleteStmt":{...}}
_TOP_TYPE = re.compile(r'\{"stmt":\{"([A-Z]\w*)":')  # only RawStmt has a field "stmt"


def _kinds(tree_json: str, lowered: str) -> tuple[str, ...]:
    """The statements' kinds, decoding the tree only when a kind depends on a field."""
    tops = _TOP_TYPE.findall(tree_json)
    field_kinds = _FIELD_KINDS if "into" in lowered else _FIELD_KINDS_BUT_SELECT
    if (tops or '"stmts":' not in tree_json) and field_kinds.isdisjoint(tops):
        return tuple(_kind(t, {}) for t in tops)
    return tuple(_kind(*_typed(entry["stmt"])) for entry in _statements(tree_json))


def _nested_match_possible(tree_json: str, top_types: Sequence[str], index: Iterable[str]) -> bool:
    """Could a rule match below the top-level statements? Walking every node of a statement
    costs several times the parse, and most statements hold no node any rule inspects."""
    inspected = set(_NODE_TYPE.findall(tree_json)).intersection(index)
    if '"intoClause":' not in tree_json:  # the `ddl` rule's SelectStmt: only SELECT INTO
        inspected.discard("SelectStmt")
    return any(tree_json.count(f'"{t}":') > top_types.count(t) for t in inspected)


def _walk(top_type: str, top_fields: _Fields) -> Iterator[tuple[str, _Fields]]:
    """Every typed node of a statement in source order, minus the parts that don't run now.

    Iterative, so a deeply nested statement cannot exhaust Python's stack. A node is a dict
    with one capitalised key (node type names are capitalised, field names are not); structs
    embedded by value (`relation`, `withClause`) are plain dicts that are walked through.
    """
    stack: list[Any] = [{top_type: top_fields}]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(reversed(value))
            continue
        children: list[Any] = []
        for key, child in value.items():
            if isinstance(child, dict):
                if key[:1].isupper():
                    yield key, child
                    hidden = _not_run_now(key, child)
                    if hidden:
                        child = {k: v for k, v in child.items() if k not in hidden}
                children.append(child)
            elif isinstance(child, list):
                children.append(child)
        stack.extend(reversed(children))


def _not_run_now(node_type: str, fields: _Fields) -> tuple[str, ...]:
    if node_type == "ExplainStmt" and not _option_set(fields.get("options", ()), "analyze"):
        return ("query",)
    if node_type == "RuleStmt":
        return ("actions",)
    if node_type == "CreateFunctionStmt":
        return ("sql_body",)
    return ()


def _option_set(options: Sequence[Any], name: str) -> bool:
    """Is option `name` on in `(ANALYZE, COSTS off)`? Values PostgreSQL would refuse count as
    on, and so does any occurrence (the server takes the last): both err toward approval."""
    return any(
        _truthy(fields)
        for option in options
        for node_type, fields in [_typed(option)]
        if node_type == "DefElem" and fields.get("defname") == name
    )


def _truthy(defelem: _Fields) -> bool:
    arg = defelem.get("arg")
    if arg is None:
        return True
    arg_type, value = _typed(arg)
    if arg_type == "Integer":
        return bool(value.get("ival", 0) != 0)
    if arg_type == "Boolean":
        return bool(value.get("boolval", False))
    if arg_type == "String":
        return str(value.get("sval", "")).lower() not in ("false", "off")
    return True


def _statement_text(raw: bytes, entry: _Fields) -> str:
    start = entry.get("stmt_location", 0)  # byte offsets into the UTF-8 text
    length = entry.get("stmt_len", 0)  # 0: to the end
    chunk = raw[start : start + length] if length else raw[start:]
    text = " ".join(chunk.decode("utf-8", errors="replace").split())
    if len(text) > REASON_STATEMENT_CHARS:
        text = text[: REASON_STATEMENT_CHARS - 1] + "…"
    return text


# --- statement kinds (after PostgreSQL's CreateCommandTag) --------------------------------

_KINDS = {
    "CreateStmt": "CREATE TABLE", "IndexStmt": "CREATE INDEX", "ViewStmt": "CREATE VIEW",
    "CreatedbStmt": "CREATE DATABASE", "DropdbStmt": "DROP DATABASE",
    "AlterDatabaseSetStmt": "ALTER DATABASE", "AlterDatabaseRefreshCollStmt": "ALTER DATABASE",
    "CreateSeqStmt": "CREATE SEQUENCE", "AlterSeqStmt": "ALTER SEQUENCE",
    "CreatePLangStmt": "CREATE LANGUAGE", "CreateAmStmt": "CREATE ACCESS METHOD",
    "CreateTrigStmt": "CREATE TRIGGER", "CreateEventTrigStmt": "CREATE EVENT TRIGGER",
    "AlterEventTrigStmt": "ALTER EVENT TRIGGER", "RuleStmt": "CREATE RULE",
    "CreateFdwStmt": "CREATE FOREIGN DATA WRAPPER", "AlterFdwStmt": "ALTER FOREIGN DATA WRAPPER",
    "CreateForeignServerStmt": "CREATE SERVER", "AlterForeignServerStmt": "ALTER SERVER",
    "CreateTableSpaceStmt": "CREATE TABLESPACE", "DropTableSpaceStmt": "DROP TABLESPACE",
    "AlterTableSpaceOptionsStmt": "ALTER TABLESPACE",
    "AlterExtensionContentsStmt": "ALTER EXTENSION",
    "AlterTSDictionaryStmt": "ALTER TEXT SEARCH DICTIONARY",
    "AlterTSConfigurationStmt": "ALTER TEXT SEARCH CONFIGURATION",
    "CreateOpClassStmt": "CREATE OPERATOR CLASS", "CreateOpFamilyStmt": "CREATE OPERATOR FAMILY",
    "AlterOpFamilyStmt": "ALTER OPERATOR FAMILY", "CreateStatsStmt": "CREATE STATISTICS",
    "AlterStatsStmt": "ALTER STATISTICS", "AlterRoleSetStmt": "ALTER ROLE",
    "CompositeTypeStmt": "CREATE TYPE", "CreateEnumStmt": "CREATE TYPE",
    "CreateRangeStmt": "CREATE TYPE", "AlterEnumStmt": "ALTER TYPE",
    "RefreshMatViewStmt": "REFRESH MATERIALIZED VIEW", "SecLabelStmt": "SECURITY LABEL",
    "CheckPointStmt": "CHECKPOINT", "LockStmt": "LOCK TABLE", "TruncateStmt": "TRUNCATE TABLE",
    "ConstraintsSetStmt": "SET CONSTRAINTS", "VariableShowStmt": "SHOW",
    "DeclareCursorStmt": "DECLARE CURSOR",
}  # fmt: skip
_OBJECT_NAMES = {
    "MATVIEW": "MATERIALIZED VIEW", "FDW": "FOREIGN DATA WRAPPER", "FOREIGN_SERVER": "SERVER",
    "TSCONFIGURATION": "TEXT SEARCH CONFIGURATION", "TSDICTIONARY": "TEXT SEARCH DICTIONARY",
    "TSPARSER": "TEXT SEARCH PARSER", "TSTEMPLATE": "TEXT SEARCH TEMPLATE",
    "OPCLASS": "OPERATOR CLASS", "OPFAMILY": "OPERATOR FAMILY", "STATISTIC_EXT": "STATISTICS",
    "LARGEOBJECT": "LARGE OBJECT", "COLUMN": "TABLE", "TABCONSTRAINT": "TABLE",
    "ATTRIBUTE": "TYPE", "DOMCONSTRAINT": "DOMAIN",
}  # fmt: skip
_TRANSACTIONS = {
    "START": "START TRANSACTION", "ROLLBACK_TO": "ROLLBACK", "PREPARE": "PREPARE TRANSACTION",
    "COMMIT_PREPARED": "COMMIT PREPARED", "ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}  # fmt: skip
# The object type field of statements whose kind is "<verb> <object type>".
_OBJECT_FIELDS = {
    "DropStmt": ("DROP", "removeType"), "AlterTableStmt": ("ALTER", "objtype"),
    "AlterTableMoveAllStmt": ("ALTER", "objtype"), "RenameStmt": ("ALTER", "renameType"),
    "AlterObjectSchemaStmt": ("ALTER", "objectType"), "AlterOwnerStmt": ("ALTER", "objectType"),
    "AlterObjectDependsStmt": ("ALTER", "objectType"), "AlterFunctionStmt": ("ALTER", "objtype"),
    "DefineStmt": ("CREATE", "kind"),
}  # fmt: skip
_FIELD_KINDS = frozenset(_OBJECT_FIELDS) | _names(
    """SelectStmt CreateTableAsStmt GrantStmt GrantRoleStmt TransactionStmt VariableSetStmt
    VacuumStmt CreateFunctionStmt FetchStmt ClosePortalStmt DeallocateStmt DiscardStmt"""
)
_FIELD_KINDS_BUT_SELECT = _FIELD_KINDS - {"SelectStmt"}  # no "into": no SELECT INTO
_WORDS = re.compile(r"[A-Z][a-z]*")


def _object_name(objtype: str) -> str:
    name = objtype.removeprefix("OBJECT_")
    return _OBJECT_NAMES.get(name, name.replace("_", " "))


def _kind(t: str, f: _Fields) -> str:
    if t in _KINDS:
        return _KINDS[t]
    if t in _OBJECT_FIELDS:
        verb, field = _OBJECT_FIELDS[t]
        return f"{verb} {_object_name(f.get(field, 'OBJECT_TABLE'))}"
    if t == "SelectStmt":
        return "SELECT INTO" if "intoClause" in f else "SELECT"
    if t == "CreateTableAsStmt":
        if f.get("is_select_into"):
            return "SELECT INTO"
        return (
            "CREATE MATERIALIZED VIEW"
            if f.get("objtype") == "OBJECT_MATVIEW"
            else "CREATE TABLE AS"
        )
    if t in ("GrantStmt", "GrantRoleStmt"):
        verb = "GRANT" if f.get("is_grant") else "REVOKE"
        return f"{verb} ROLE" if t == "GrantRoleStmt" else verb
    if t == "TransactionStmt":
        which = str(f.get("kind", "TRANS_STMT_BEGIN")).removeprefix("TRANS_STMT_")
        return _TRANSACTIONS.get(which, which)
    if t == "VariableSetStmt":
        return "RESET" if f.get("kind", "").startswith("VAR_RESET") else "SET"
    if t == "VacuumStmt":
        return "VACUUM" if f.get("is_vacuumcmd") else "ANALYZE"
    if t == "CreateFunctionStmt":
        return "CREATE PROCEDURE" if f.get("is_procedure") else "CREATE FUNCTION"
    if t == "FetchStmt":
        return "MOVE" if f.get("ismove") else "FETCH"
    if t == "ClosePortalStmt":
        return "CLOSE CURSOR" if f.get("portalname") else "CLOSE CURSOR ALL"
    if t == "DeallocateStmt":
        return "DEALLOCATE" if f.get("name") else "DEALLOCATE ALL"
    if t == "DiscardStmt":
        return "DISCARD " + str(f.get("target", "DISCARD_ALL")).removeprefix("DISCARD_")
    return " ".join(_WORDS.findall(t.removesuffix("Stmt"))).upper()
