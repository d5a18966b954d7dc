"""bastion.sqlclass: tables of statements each way, rules, limits, kinds, then properties."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import parser as pg_parser

from bastion import sqlclass
from bastion.sqlclass import (
    DEFAULT_RULES,
    MAX_SQL_BYTES,
    REASON_STATEMENT_CHARS,
    Allowed,
    NeedsApproval,
    StatementRule,
    classify_sql,
    parse_rule,
    statement_kind,
)

ALL_RULES = tuple(sqlclass._RULES)
OPT_IN = tuple(parse_rule(name) for name in ALL_RULES if StatementRule(name) not in DEFAULT_RULES)

# (SQL, its kinds): allowed by the default rules.
ALLOWED = [
    ("SELECT 1", ("SELECT",)),
    ("select * from users where id = 1", ("SELECT",)),
    ("SELECT 'DROP TABLE users; DELETE FROM t'", ("SELECT",)),
    ('SELECT "drop table x" FROM "delete from t"', ("SELECT",)),
    ("SELECT $$; DROP TABLE t; $$, $tag$ TRUNCATE t $tag$", ("SELECT",)),
    ("SELECT 1 -- DROP TABLE t", ("SELECT",)),
    ("/* DROP TABLE t; */ SELECT 1", ("SELECT",)),
    ("/* nested /* DROP TABLE t; */ still a comment */ SELECT 1", ("SELECT",)),
    ("SELECT E'it\\'s; DROP TABLE t'", ("SELECT",)),
    ("SELECT * FROM t FOR UPDATE", ("SELECT",)),
    ("SELECT droplet, deleted_at, updater FROM truncated", ("SELECT",)),
    ("VALUES (1), (2)", ("SELECT",)),
    ("WITH x AS (SELECT 1) SELECT * FROM x", ("SELECT",)),
    ("INSERT INTO t (a, b) VALUES (1, 'x')", ("INSERT",)),
    ("INSERT INTO t SELECT * FROM u", ("INSERT",)),
    ("INSERT INTO t VALUES (1) ON CONFLICT (a) DO UPDATE SET b = 2", ("INSERT",)),
    ("UPDATE t SET a = 1 WHERE id = 2", ("UPDATE",)),
    ("UPDATE t SET a = 1 FROM u WHERE t.id = u.id", ("UPDATE",)),
    ("DELETE FROM t WHERE id = 1", ("DELETE",)),
    ("DELETE FROM t WHERE true", ("DELETE",)),  # a WHERE, however wide: only absence counts
    ("DELETE FROM t WHERE CURRENT OF c", ("DELETE",)),
    ("DELETE FROM t USING u WHERE t.id = u.id", ("DELETE",)),
    ("WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d", ("SELECT",)),
    ("CREATE TABLE t (a int PRIMARY KEY, b text)", ("CREATE TABLE",)),
    ("CREATE INDEX i ON t (a)", ("CREATE INDEX",)),
    ("ALTER TABLE t ADD COLUMN c int", ("ALTER TABLE",)),
    ("ALTER TABLE t ALTER COLUMN c SET DEFAULT 0", ("ALTER TABLE",)),
    ("ALTER TABLE t ALTER COLUMN c SET DEFAULT NULL", ("ALTER TABLE",)),
    ("ALTER TABLE t RENAME COLUMN a TO b", ("ALTER TABLE",)),
    ("ALTER DOMAIN d SET DEFAULT 1", ("ALTER DOMAIN",)),
    ("ALTER SERVER s OPTIONS (ADD host 'x', SET port '5')", ("ALTER SERVER",)),
    ("ALTER EXTENSION e ADD TABLE t", ("ALTER EXTENSION",)),
    ("ALTER GROUP g ADD USER u", ("ALTER ROLE",)),
    ("EXPLAIN DELETE FROM t", ("EXPLAIN",)),
    ("EXPLAIN (COSTS off) UPDATE t SET a = 1", ("EXPLAIN",)),
    ("EXPLAIN (ANALYZE false) DELETE FROM t", ("EXPLAIN",)),
    ("EXPLAIN (ANALYZE 0) DELETE FROM t", ("EXPLAIN",)),
    ("EXPLAIN (ANALYZE off, VERBOSE) DELETE FROM t", ("EXPLAIN",)),
    ("EXPLAIN ANALYZE SELECT * FROM t", ("EXPLAIN",)),
    ("EXPLAIN EXECUTE p", ("EXPLAIN",)),
    ("COPY t TO STDOUT", ("COPY",)),
    ("COPY t FROM STDIN WITH (FORMAT csv)", ("COPY",)),
    ("COPY (SELECT * FROM t) TO STDOUT", ("COPY",)),
    ("COPY t FROM '/tmp/data.csv'", ("COPY",)),  # a server file: the opt-in copy-file rule
    ("PREPARE p AS SELECT * FROM t WHERE id = $1", ("PREPARE",)),
    ("PREPARE p (int) AS DELETE FROM t WHERE id = $1", ("PREPARE",)),
    ("DEALLOCATE p", ("DEALLOCATE",)),
    ("DEALLOCATE ALL", ("DEALLOCATE ALL",)),
    ("CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM u", ("CREATE RULE",)),
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC DELETE FROM t; SELECT 1; END",
        ("CREATE FUNCTION",),
    ),
    ("CREATE FUNCTION f() RETURNS void AS $$ DROP TABLE t $$ LANGUAGE sql", ("CREATE FUNCTION",)),
    ("CALL p(1)", ("CALL",)),
    ("GRANT SELECT ON t TO u", ("GRANT",)),
    ("REVOKE SELECT ON t FROM u", ("REVOKE",)),
    ("GRANT r TO u", ("GRANT ROLE",)),
    ("VACUUM FULL t", ("VACUUM",)),
    ("VACUUM (ANALYZE) t", ("VACUUM",)),
    ("ANALYZE t", ("ANALYZE",)),
    ("CREATE EXTENSION pgcrypto", ("CREATE EXTENSION",)),
    ("MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (1)", ("MERGE",)),
    (
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED AND s.v <> t.v THEN UPDATE SET v = s.v"
        " WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)",
        ("MERGE",),
    ),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DO NOTHING", ("MERGE",)),
    ("SELECT * INTO t2 FROM t", ("SELECT INTO",)),
    ("CREATE TABLE t2 AS SELECT * FROM t", ("CREATE TABLE AS",)),
    ("CREATE MATERIALIZED VIEW v AS SELECT 1", ("CREATE MATERIALIZED VIEW",)),
    ("REFRESH MATERIALIZED VIEW v", ("REFRESH MATERIALIZED VIEW",)),
    ("BEGIN; UPDATE t SET a = 1 WHERE id = 1; COMMIT", ("BEGIN", "UPDATE", "COMMIT")),
    ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE", ("START TRANSACTION",)),
    ("SAVEPOINT s; ROLLBACK TO SAVEPOINT s; RELEASE s", ("SAVEPOINT", "ROLLBACK", "RELEASE")),
    ("SET search_path = app; RESET search_path; SHOW work_mem", ("SET", "RESET", "SHOW")),
    ("SET LOCAL statement_timeout = '5s'", ("SET",)),
    ("DISCARD ALL", ("DISCARD ALL",)),
    ("LISTEN ch; NOTIFY ch, 'x'; UNLISTEN *", ("LISTEN", "NOTIFY", "UNLISTEN")),
    ("DECLARE c CURSOR FOR SELECT 1; FETCH 10 FROM c; MOVE c; CLOSE c", None),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", ("LOCK TABLE",)),
    ("COMMENT ON TABLE t IS 'drop me'", ("COMMENT",)),
    ("CHECKPOINT", ("CHECKPOINT",)),
    ("SELECT 'é'; SELECT 'ü'", ("SELECT", "SELECT")),
    ("", ()),
    ("   ;  ; ", ()),
    ("-- only a comment", ()),
    ("/* only */ /* comments */", ()),
]

# (SQL, what matched): need approval under the default rules; each reason reads
# `<what matched>: <the SQL>`.
NEEDS_APPROVAL = [
    ("DROP TABLE users", ("DROP TABLE",)),
    ("drop table if exists a, b cascade", ("DROP TABLE",)),
    ("DROP INDEX CONCURRENTLY i", ("DROP INDEX",)),
    ("DROP SCHEMA s CASCADE", ("DROP SCHEMA",)),
    ("DROP DATABASE appdb", ("DROP DATABASE",)),
    ("DROP DATABASE appdb WITH (FORCE)", ("DROP DATABASE",)),
    ("DROP VIEW v", ("DROP VIEW",)),
    ("DROP MATERIALIZED VIEW v", ("DROP MATERIALIZED VIEW",)),
    ("DROP FUNCTION f(int)", ("DROP FUNCTION",)),
    ("DROP EXTENSION e", ("DROP EXTENSION",)),
    ("DROP ROLE r", ("DROP ROLE",)),
    ("DROP USER u", ("DROP ROLE",)),
    ("DROP OWNED BY u", ("DROP OWNED",)),
    ("DROP TABLESPACE ts", ("DROP TABLESPACE",)),
    ("DROP SEQUENCE s", ("DROP SEQUENCE",)),
    ("DROP TRIGGER tr ON t", ("DROP TRIGGER",)),
    ("DROP POLICY p ON t", ("DROP POLICY",)),
    ("DROP SUBSCRIPTION s", ("DROP SUBSCRIPTION",)),
    ("DROP USER MAPPING FOR u SERVER s", ("DROP USER MAPPING",)),
    ("DROP SERVER s", ("DROP SERVER",)),
    ("DROP TYPE ty", ("DROP TYPE",)),
    ("TRUNCATE t", ("TRUNCATE",)),
    ("TRUNCATE TABLE a, b RESTART IDENTITY CASCADE", ("TRUNCATE",)),
    ("DELETE FROM t", ("DELETE without WHERE",)),
    ("delete from only t", ("DELETE without WHERE",)),
    ("DELETE FROM t USING u", ("DELETE without WHERE",)),
    ("DELETE FROM t RETURNING *", ("DELETE without WHERE",)),
    ("UPDATE t SET x = 1", ("UPDATE without WHERE",)),
    ("UPDATE t SET x = 1 FROM u", ("UPDATE without WHERE",)),
    # MERGE's ON bounds nothing (ON true, or the table as its own source, matches every row):
    # any DELETE action, and an UPDATE action with no condition of its own, are unbounded.
    (
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        ("MERGE ... WHEN MATCHED THEN DELETE",),
    ),
    (
        "merge into t using t u on true when matched and t.a > 0 then delete",
        ("MERGE ... WHEN MATCHED THEN DELETE",),
    ),
    (
        "MERGE INTO t USING s ON true WHEN MATCHED THEN UPDATE SET v = 0",
        ("MERGE ... WHEN MATCHED THEN UPDATE",),
    ),
    (
        "MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (1)"
        " WHEN MATCHED THEN UPDATE SET v = s.v",
        ("MERGE ... WHEN MATCHED THEN UPDATE",),
    ),
    (
        "WITH s AS (SELECT id FROM t) MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        ("MERGE ... WHEN MATCHED THEN DELETE",),
    ),
    ("ALTER TABLE t DROP COLUMN c", ("ALTER TABLE ... DROP COLUMN",)),
    ("ALTER TABLE t DROP c", ("ALTER TABLE ... DROP COLUMN",)),
    ("ALTER TABLE IF EXISTS t DROP CONSTRAINT k", ("ALTER TABLE ... DROP CONSTRAINT",)),
    (
        "ALTER TABLE t ADD COLUMN a int, DROP COLUMN b, ALTER COLUMN c DROP DEFAULT",
        ("ALTER TABLE ... DROP COLUMN", "ALTER TABLE ... DROP DEFAULT"),
    ),
    ("ALTER TABLE t ALTER COLUMN c DROP NOT NULL", ("ALTER TABLE ... DROP NOT NULL",)),
    ("ALTER TABLE t ALTER c DROP EXPRESSION", ("ALTER TABLE ... DROP EXPRESSION",)),
    ("ALTER TABLE t ALTER c DROP IDENTITY", ("ALTER TABLE ... DROP IDENTITY",)),
    ("ALTER TABLE t ALTER c OPTIONS (DROP x)", ("ALTER TABLE ... OPTIONS (DROP x)",)),
    ("ALTER FOREIGN TABLE t DROP COLUMN c", ("ALTER FOREIGN TABLE ... DROP COLUMN",)),
    ("ALTER TYPE ty DROP ATTRIBUTE a", ("ALTER TYPE ... DROP ATTRIBUTE",)),
    ("ALTER DOMAIN d DROP CONSTRAINT k", ("ALTER DOMAIN ... DROP CONSTRAINT",)),
    ("ALTER DOMAIN d DROP NOT NULL", ("ALTER DOMAIN ... DROP NOT NULL",)),
    ("ALTER DOMAIN d DROP DEFAULT", ("ALTER DOMAIN ... DROP DEFAULT",)),
    ("ALTER EXTENSION e DROP TABLE t", ("ALTER EXTENSION ... DROP",)),
    (
        "ALTER OPERATOR FAMILY f USING btree DROP OPERATOR 1 (int, int)",
        ("ALTER OPERATOR FAMILY ... DROP",),
    ),
    ("ALTER PUBLICATION p DROP TABLE t", ("ALTER PUBLICATION ... DROP",)),
    ("ALTER SUBSCRIPTION s DROP PUBLICATION p", ("ALTER SUBSCRIPTION ... DROP PUBLICATION",)),
    (
        "ALTER TEXT SEARCH CONFIGURATION c DROP MAPPING FOR word",
        ("ALTER TEXT SEARCH CONFIGURATION ... DROP MAPPING",),
    ),
    ("ALTER GROUP g DROP USER u", ("ALTER GROUP ... DROP USER",)),
    ("ALTER SERVER s OPTIONS (DROP host)", ("ALTER SERVER ... OPTIONS (DROP host)",)),
    ("COPY t TO PROGRAM 'x'", ("COPY ... TO PROGRAM",)),
    ("COPY t FROM PROGRAM 'x'", ("COPY ... FROM PROGRAM",)),
    ("COPY (SELECT 1) TO PROGRAM 'gzip > /tmp/x'", ("COPY ... TO PROGRAM",)),
    ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", ("DELETE without WHERE",)),
    (
        "WITH a AS (SELECT 1), b AS (UPDATE t SET x = 1 RETURNING *) SELECT * FROM b",
        ("UPDATE without WHERE",),
    ),
    (
        "INSERT INTO z WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        ("DELETE without WHERE",),
    ),
    ("WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) DELETE FROM u", ("DELETE without WHERE",)),
    ("COPY (DELETE FROM t RETURNING *) TO STDOUT", ("DELETE without WHERE",)),
    (
        "CREATE TABLE x AS WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        ("DELETE without WHERE",),
    ),
    ("EXPLAIN ANALYZE DELETE FROM t", ("DELETE without WHERE",)),
    ("EXPLAIN (ANALYZE) UPDATE t SET a = 1", ("UPDATE without WHERE",)),
    ("EXPLAIN (ANALYZE true, BUFFERS) DELETE FROM t", ("DELETE without WHERE",)),
    ("EXPLAIN (ANALYZE off, ANALYZE) DELETE FROM t", ("DELETE without WHERE",)),
    ("EXPLAIN (ANALYZE 1) DELETE FROM t", ("DELETE without WHERE",)),
    ("EXPLAIN ANALYZE EXECUTE p", ("EXECUTE: can't see the prepared statement",)),
    ("PREPARE p AS DELETE FROM t", ("DELETE without WHERE",)),
    ("PREPARE p AS UPDATE t SET a = $1", ("UPDATE without WHERE",)),
    ("EXECUTE p", ("EXECUTE: can't see the prepared statement",)),
    ("EXECUTE p(1, 'x')", ("EXECUTE: can't see the prepared statement",)),
    ("CREATE TABLE t2 AS EXECUTE p", ("EXECUTE: can't see the prepared statement",)),
    ("DO $$ BEGIN PERFORM 1; END $$", ("DO block: can't see inside",)),
    ("DO LANGUAGE plpgsql $x$ BEGIN DROP TABLE t; END $x$", ("DO block: can't see inside",)),
]
# (SQL, the reasons in order): where a reason names one statement of several.
NEEDS_APPROVAL_IN_PART = [
    ("BEGIN; TRUNCATE t; ROLLBACK", ("TRUNCATE: TRUNCATE t",)),
    ("SELECT 1; DROP TABLE t", ("DROP TABLE: DROP TABLE t",)),
    ('select 1;/* ; */drop table "a;b" ;', ('DROP TABLE: drop table "a;b"',)),
    (
        "SELECT 'a;b'; DELETE FROM t; UPDATE u SET a = 1",
        ("DELETE without WHERE: DELETE FROM t", "UPDATE without WHERE: UPDATE u SET a = 1"),
    ),
    ("SELECT 'é'; DROP TABLE \"ü\"", ('DROP TABLE: DROP TABLE "ü"',)),
    (
        "DROP TABLE a;\n\n  DROP   TABLE\n b",
        ("DROP TABLE: DROP TABLE a", "DROP TABLE: DROP TABLE b"),
    ),
    ("DROP TABLE t; DROP TABLE t", ("DROP TABLE: DROP TABLE t",)),
    ("-- drop it\nDROP TABLE t", ("DROP TABLE: DROP TABLE t",)),
]

UNPARSEABLE = [
    "SELEC 1",
    "DROP TABLE",
    "SELECT 'unterminated",
    "SELECT $$ unterminated",
    "/* unterminated comment",
    "SELECT 1 \\gset",
    "\\d users",
    "DROP TABLE t; SELEC 1",
    "SELECT (SELECT 1",
]


@pytest.mark.parametrize(("sql", "kinds"), ALLOWED, ids=lambda v: repr(v)[:60])
def test_allowed(sql: str, kinds: tuple[str, ...] | None) -> None:
    result = classify_sql(sql)
    assert isinstance(result, Allowed), result
    if kinds is not None:
        assert result.kinds == kinds


@pytest.mark.parametrize(("sql", "labels"), NEEDS_APPROVAL, ids=lambda v: repr(v)[:60])
def test_needs_approval(sql: str, labels: tuple[str, ...]) -> None:
    assert classify_sql(sql) == NeedsApproval(tuple(f"{label}: {sql}" for label in labels))


@pytest.mark.parametrize(("sql", "reasons"), NEEDS_APPROVAL_IN_PART, ids=lambda v: repr(v)[:60])
def test_needs_approval_in_part(sql: str, reasons: tuple[str, ...]) -> None:
    assert classify_sql(sql) == NeedsApproval(reasons)


@pytest.mark.parametrize("sql", UNPARSEABLE)
def test_unparseable_fails_closed(sql: str) -> None:
    result = classify_sql(sql)
    assert isinstance(result, NeedsApproval)
    ((reason,),) = [result.reasons]
    assert reason.startswith("unparseable: ")
    assert statement_kind(sql) == "UNPARSEABLE"
    assert_relay_check_agrees(sql, DEFAULT_RULES)  # which may not build the tree


def test_unparseable_reason_is_pglasts_message() -> None:
    assert classify_sql("SELEC 1") == NeedsApproval(
        ('unparseable: syntax error at or near "SELEC", at index 0',)
    )
    # The relay's check asks the parser without building the tree: the same message.
    assert sqlclass.check_sql("SELEC 1", sqlclass.compile_rules()) == classify_sql("SELEC 1")


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT 1\0; DROP TABLE t", "unparseable: contains a NUL character"),
        ("SELECT '\ud800'", "unparseable: not valid UTF-8 text"),
        (
            "WITH d AS (DELETE FROM t) SELECT " + "(SELECT " * 1000 + "1" + ")" * 1000,
            "unparseable: nested too deeply",
        ),
        ("SELECT " + "(SELECT " * 5000 + "1" + ")" * 5000, "unparseable: memory exhausted"),
        ("SELECT 1" + " + 1" * 20000, "unparseable: stack depth limit exceeded"),
    ],
    ids=["nul", "surrogate", "deep-json", "deep-grammar", "deep-expression"],
)
def test_unreadable_text_fails_closed(sql: str, reason: str) -> None:
    result = classify_sql(sql)
    assert isinstance(result, NeedsApproval)
    assert len(result.reasons) == 1 and result.reasons[0].startswith(reason)
    assert_relay_check_agrees(sql, DEFAULT_RULES)


NESTINGS = {  # (before, opening, middle, closing): ways to nest deeply in few characters
    "operators": ("SELECT 1", "+1", "", ""),
    "casts": ("SELECT 1", "::int", "", ""),
    "tests": ("SELECT 1", " IS NULL", "", ""),
    "prefix": ("SELECT ", "- ", "1", ""),
    "calls": ("SELECT ", "f(", "1", ")"),
    "subqueries": ("SELECT ", "(SELECT ", "1", ")"),
}


@pytest.mark.parametrize("nesting", NESTINGS.values(), ids=list(NESTINGS))
def test_the_relay_check_agrees_on_the_deepest_text_it_checks_without_a_tree(
    nesting: tuple[str, str, str, str],
) -> None:
    """`check_sql` skips building the tree of short keyword-free texts; building it is
    where "stack depth limit exceeded" arises, so no such text may get that deep."""
    before, opening, middle, closing = nesting
    depth = (sqlclass._TREELESS_MAX - len(before) - len(middle)) // len(opening + closing)
    sql = before + opening * depth + middle + closing * depth
    assert len(sql) <= sqlclass._TREELESS_MAX
    assert_relay_check_agrees(sql, DEFAULT_RULES)
    try:
        pg_parser.parse_sql_json(sql)
    except pg_parser.ParseError as exc:  # the grammar's own limit, which both paths meet
        assert "stack depth" not in str(exc)


def test_too_long_is_refused_unparsed() -> None:
    by_chars = "SELECT 1;" + " " * MAX_SQL_BYTES
    assert classify_sql(by_chars) == NeedsApproval((f"too long: over {MAX_SQL_BYTES} bytes",))
    by_bytes = "SELECT 1; -- " + "é" * (MAX_SQL_BYTES // 2)  # fewer characters than bytes
    assert len(by_bytes) <= MAX_SQL_BYTES < len(by_bytes.encode())
    result = classify_sql(by_bytes)
    assert isinstance(result, NeedsApproval) and result.reasons[0].startswith("too long: ")
    assert statement_kind(by_chars) == "UNPARSEABLE"


def test_text_at_the_limit_is_classified() -> None:
    sql = "SELECT 1;" + " " * (MAX_SQL_BYTES - 9)
    assert len(sql.encode()) == MAX_SQL_BYTES
    assert classify_sql(sql) == Allowed(("SELECT",))


def test_reason_statement_is_collapsed_and_cut() -> None:
    long_list = ", ".join(f"table_{i}" for i in range(100))
    result = classify_sql(f"DROP TABLE\n\t{long_list}")
    assert isinstance(result, NeedsApproval)
    ((reason,),) = [result.reasons]
    text = reason.removeprefix("DROP TABLE: ")
    assert text.startswith("DROP TABLE table_0, table_1,")
    assert len(text) == REASON_STATEMENT_CHARS and text.endswith("…")


# --- rules ---------------------------------------------------------------------------------


def rules(*names: str) -> tuple[StatementRule, ...]:
    return tuple(parse_rule(name) for name in names)


# (rule, SQL that it flags, the expected reasons, SQL that it does not flag)
OPT_IN_CASES = [
    (
        "grant",
        "GRANT SELECT ON t TO u",
        ("GRANT: GRANT SELECT ON t TO u",),
        "REVOKE SELECT ON t FROM u",
    ),
    ("grant", "GRANT admin TO u", ("GRANT ROLE: GRANT admin TO u",), "REVOKE admin FROM u"),
    (
        "grant",
        "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO u",
        ("ALTER DEFAULT PRIVILEGES: ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO u",),
        "ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM u",
    ),
    (
        "grant",
        "CREATE SCHEMA s CREATE TABLE x (a int) GRANT SELECT ON x TO u",
        ("GRANT: CREATE SCHEMA s CREATE TABLE x (a int) GRANT SELECT ON x TO u",),
        "CREATE SCHEMA s CREATE TABLE x (a int)",
    ),
    (
        "revoke",
        "REVOKE ALL ON t FROM PUBLIC",
        ("REVOKE: REVOKE ALL ON t FROM PUBLIC",),
        "GRANT SELECT ON t TO u",
    ),
    ("revoke", "REVOKE admin FROM u", ("REVOKE ROLE: REVOKE admin FROM u",), "GRANT admin TO u"),
    (
        "revoke",
        "ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM u",
        ("ALTER DEFAULT PRIVILEGES: ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM u",),
        "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO u",
    ),
    ("vacuum-full", "VACUUM FULL t", ("VACUUM FULL: VACUUM FULL t",), "VACUUM t"),
    (
        "vacuum-full",
        "VACUUM (FULL, VERBOSE)",
        ("VACUUM FULL: VACUUM (FULL, VERBOSE)",),
        "VACUUM (FULL false) t",
    ),
    ("vacuum-full", "vacuum (full on) t", ("VACUUM FULL: vacuum (full on) t",), "ANALYZE t"),
    (
        "ddl",
        "CREATE TABLE t (a int)",
        ("DDL (CREATE TABLE): CREATE TABLE t (a int)",),
        "INSERT INTO t VALUES (1)",
    ),
    (
        "ddl",
        "ALTER TABLE t ADD COLUMN b int",
        ("DDL (ALTER TABLE): ALTER TABLE t ADD COLUMN b int",),
        "SELECT 1",
    ),
    (
        "ddl",
        "CREATE VIEW v AS SELECT 1",
        ("DDL (CREATE VIEW): CREATE VIEW v AS SELECT 1",),
        "TRUNCATE t",
    ),
    (
        "ddl",
        "COMMENT ON TABLE t IS 'x'",
        ("DDL (COMMENT): COMMENT ON TABLE t IS 'x'",),
        "SET search_path = x",
    ),
    (
        "ddl",
        "CREATE INDEX i ON t (a)",
        ("DDL (CREATE INDEX): CREATE INDEX i ON t (a)",),
        "REINDEX TABLE t",
    ),
    (
        "ddl",
        "SELECT * INTO x FROM t",
        ("DDL (SELECT INTO): SELECT * INTO x FROM t",),
        "SELECT * FROM t WHERE a IN (SELECT 1)",
    ),
    (
        "ddl",
        "CREATE TABLE x AS SELECT 1",
        ("DDL (CREATE TABLE AS): CREATE TABLE x AS SELECT 1",),
        "EXPLAIN CREATE TABLE x AS SELECT 1",
    ),
    (
        "ddl",
        "EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1",
        ("DDL (CREATE TABLE AS): EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1",),
        "VACUUM FULL t",
    ),
    ("ddl", "GRANT SELECT ON t TO u", ("DDL (GRANT): GRANT SELECT ON t TO u",), "LOCK TABLE t"),
    ("ddl", "CREATE EXTENSION x", ("DDL (CREATE EXTENSION): CREATE EXTENSION x",), "LISTEN x"),
    (
        "ddl",
        "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
        ("DDL (CREATE FUNCTION): CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",),
        "CALL p()",
    ),
    (
        "ddl",
        "REFRESH MATERIALIZED VIEW v",
        ("DDL (REFRESH MATERIALIZED VIEW): REFRESH MATERIALIZED VIEW v",),
        "CHECKPOINT",
    ),
    (
        "ddl",
        "ALTER SYSTEM SET work_mem = '1GB'",
        ("DDL (ALTER SYSTEM): ALTER SYSTEM SET work_mem = '1GB'",),
        "SET work_mem = '1GB'",
    ),
    ("ddl", "CLUSTER t USING i", ("DDL (CLUSTER): CLUSTER t USING i",), "COPY t TO STDOUT"),
    ("delete", "DELETE FROM t WHERE id = 1", ("DELETE: DELETE FROM t WHERE id = 1",), "SELECT 1"),
    (
        "delete",
        "WITH d AS (DELETE FROM t WHERE a = 1 RETURNING 1) SELECT 1",
        ("DELETE: WITH d AS (DELETE FROM t WHERE a = 1 RETURNING 1) SELECT 1",),
        "EXPLAIN DELETE FROM t",
    ),
    (
        "update",
        "UPDATE t SET a = 1 WHERE id = 1",
        ("UPDATE: UPDATE t SET a = 1 WHERE id = 1",),
        "SELECT * FROM t FOR UPDATE",
    ),
    (
        "merge",
        "MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (1)",
        ("MERGE: MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (1)",),
        "SELECT 1",
    ),
    (
        "update",
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED AND s.v > 0 THEN UPDATE SET v = 1",
        (
            "MERGE ... WHEN MATCHED THEN UPDATE: "
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED AND s.v > 0 THEN UPDATE SET v = 1",
        ),
        "MERGE INTO t USING s ON t.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (1)",
    ),
    (
        "create-extension",
        "CREATE EXTENSION IF NOT EXISTS plpython3u",
        ("CREATE EXTENSION: CREATE EXTENSION IF NOT EXISTS plpython3u",),
        "ALTER EXTENSION x UPDATE",
    ),
    (
        "copy-file",
        "COPY t FROM '/etc/passwd'",
        ("COPY ... FROM a server file: COPY t FROM '/etc/passwd'",),
        "COPY t FROM STDIN",
    ),
    (
        "copy-file",
        "COPY t TO '/tmp/x'",
        ("COPY ... TO a server file: COPY t TO '/tmp/x'",),
        "COPY t TO PROGRAM 'x'",
    ),
]


@pytest.mark.parametrize(
    ("rule", "flagged", "reasons", "passed"), OPT_IN_CASES, ids=lambda v: repr(v)[:50]
)
def test_opt_in_rules(rule: str, flagged: str, reasons: tuple[str, ...], passed: str) -> None:
    assert isinstance(classify_sql(flagged), Allowed), "an opt-in rule's case is allowed by default"
    assert classify_sql(flagged, rules(rule)) == NeedsApproval(reasons)
    assert isinstance(classify_sql(passed, rules(rule)), Allowed)


def test_the_update_rule_does_not_count_on_conflict_do_update() -> None:
    # INSERT ... ON CONFLICT DO UPDATE is an INSERT with an OnConflictClause, not an UpdateStmt.
    assert isinstance(
        classify_sql("INSERT INTO t VALUES (1) ON CONFLICT DO UPDATE SET a = 2", rules("update")),
        Allowed,
    )


def test_rules_replace_the_defaults() -> None:
    assert isinstance(classify_sql("DROP TABLE t", rules("grant")), Allowed)
    assert isinstance(classify_sql("DROP TABLE t", ()), Allowed)
    both = classify_sql("DROP TABLE t; GRANT SELECT ON t TO u", (*DEFAULT_RULES, *rules("grant")))
    assert both == NeedsApproval(("DROP TABLE: DROP TABLE t", "GRANT: GRANT SELECT ON t TO u"))


@pytest.mark.parametrize("sql", ["DO $$ BEGIN END $$", "EXECUTE p", "SELEC 1", "SELECT 1\0"])
def test_fail_closed_whatever_the_rules(sql: str) -> None:
    assert isinstance(classify_sql(sql, ()), NeedsApproval)


def test_several_rules_on_one_statement() -> None:
    result = classify_sql("DROP VIEW v", rules("ddl", "drop"))
    assert result == NeedsApproval(("DDL (DROP VIEW): DROP VIEW v", "DROP VIEW: DROP VIEW v"))


def test_default_rules() -> None:
    assert [rule.name for rule in DEFAULT_RULES] == [
        "drop",
        "truncate",
        "delete-without-where",
        "update-without-where",
        "alter-drop",
        "copy-program",
    ]


def test_every_rule_is_documented() -> None:
    doc = sqlclass.__doc__ or ""
    for name in ALL_RULES:
        assert any(name in line.split() or f"{name}," in line for line in doc.splitlines()), name


@pytest.mark.parametrize("text", ["drop", " DROP ", "Delete-Without-Where", "vacuum-full\n"])
def test_parse_rule(text: str) -> None:
    assert parse_rule(text).name == text.strip().lower()


@pytest.mark.parametrize(
    "text", ["", "  ", "drop table", "delete_without_where", "dropp", "ddl,drop"]
)
def test_parse_rule_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"unknown statement rule .*: use one of drop, truncate, "):
        parse_rule(text)


def test_statement_rule_checks_its_name() -> None:
    with pytest.raises(ValueError, match="unknown statement rule 'nope'"):
        StatementRule("nope")


# PostgreSQL's own list (src/backend/tcop/utility.c, GetCommandLogLevel -> LOGSTMT_DDL), the
# oracle for the `ddl` rule. SelectStmt is DDL only with INTO.
PG_LOGSTMT_DDL_NAMES = """
    CreateSchemaStmt CreateStmt CreateForeignTableStmt CreateTableSpaceStmt DropTableSpaceStmt
    AlterTableSpaceOptionsStmt CreateExtensionStmt AlterExtensionStmt AlterExtensionContentsStmt
    CreateFdwStmt AlterFdwStmt CreateForeignServerStmt AlterForeignServerStmt
    CreateUserMappingStmt AlterUserMappingStmt DropUserMappingStmt ImportForeignSchemaStmt
    DropStmt CommentStmt SecLabelStmt RenameStmt AlterObjectDependsStmt AlterObjectSchemaStmt
    AlterOwnerStmt AlterOperatorStmt AlterTypeStmt AlterTableMoveAllStmt AlterTableStmt
    AlterDomainStmt GrantStmt GrantRoleStmt AlterDefaultPrivilegesStmt DefineStmt
    CompositeTypeStmt CreateEnumStmt CreateRangeStmt AlterEnumStmt ViewStmt CreateFunctionStmt
    AlterFunctionStmt IndexStmt RuleStmt CreateSeqStmt AlterSeqStmt CreatedbStmt
    AlterDatabaseStmt AlterDatabaseRefreshCollStmt AlterDatabaseSetStmt DropdbStmt ClusterStmt
    CreateTableAsStmt RefreshMatViewStmt AlterSystemStmt CreateTrigStmt CreateEventTrigStmt
    AlterEventTrigStmt CreatePLangStmt CreateDomainStmt CreateRoleStmt AlterRoleStmt
    AlterRoleSetStmt DropRoleStmt DropOwnedStmt ReassignOwnedStmt CreateConversionStmt
    CreateCastStmt CreateOpClassStmt CreateOpFamilyStmt CreateTransformStmt AlterOpFamilyStmt
    CreatePolicyStmt AlterPolicyStmt AlterTSDictionaryStmt AlterTSConfigurationStmt CreateAmStmt
    CreatePublicationStmt AlterPublicationStmt CreateSubscriptionStmt AlterSubscriptionStmt
    DropSubscriptionStmt CreateStatsStmt AlterStatsStmt AlterCollationStmt"""


def test_ddl_is_what_postgresql_logs_as_ddl() -> None:
    assert sqlclass._DDL - {"SelectStmt"} == set(PG_LOGSTMT_DDL_NAMES.split())


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("DROP TABLE t", "DROP TABLE"),
        ("DROP MATERIALIZED VIEW v", "DROP MATERIALIZED VIEW"),
        ("DROP FOREIGN DATA WRAPPER w", "DROP FOREIGN DATA WRAPPER"),
        ("DROP TEXT SEARCH CONFIGURATION c", "DROP TEXT SEARCH CONFIGURATION"),
        ("DROP OPERATOR CLASS c USING btree", "DROP OPERATOR CLASS"),
        ("DROP STATISTICS s", "DROP STATISTICS"),
        ("DROP ACCESS METHOD a", "DROP ACCESS METHOD"),
        ("DROP EVENT TRIGGER e", "DROP EVENT TRIGGER"),
        ("CREATE TABLE t (a int)", "CREATE TABLE"),
        ("CREATE FOREIGN TABLE t (a int) SERVER s", "CREATE FOREIGN TABLE"),
        ("CREATE SCHEMA s", "CREATE SCHEMA"),
        ("CREATE ROLE r", "CREATE ROLE"),
        ("CREATE PROCEDURE p() LANGUAGE sql AS 'select 1'", "CREATE PROCEDURE"),
        ("CREATE AGGREGATE a (int) (sfunc = f, stype = int)", "CREATE AGGREGATE"),
        ("CREATE TYPE ty AS (a int)", "CREATE TYPE"),
        ("CREATE TYPE e AS ENUM ('a')", "CREATE TYPE"),
        ("CREATE DOMAIN d AS int", "CREATE DOMAIN"),
        ("CREATE TABLESPACE ts LOCATION '/x'", "CREATE TABLESPACE"),
        ("ALTER TABLE t OWNER TO u", "ALTER TABLE"),
        ("ALTER FUNCTION f() OWNER TO u", "ALTER FUNCTION"),
        ("ALTER INDEX i RENAME TO j", "ALTER INDEX"),
        ("ALTER TABLE t SET SCHEMA s", "ALTER TABLE"),
        ("ALTER SEQUENCE s RESTART", "ALTER SEQUENCE"),
        ("ALTER ROLE r SET work_mem = 1", "ALTER ROLE"),
        ("ALTER DATABASE d SET work_mem = 1", "ALTER DATABASE"),
        ("ALTER SYSTEM RESET ALL", "ALTER SYSTEM"),
        ("IMPORT FOREIGN SCHEMA s FROM SERVER f INTO l", "IMPORT FOREIGN SCHEMA"),
        ("SECURITY LABEL ON TABLE t IS 'x'", "SECURITY LABEL"),
        ("REASSIGN OWNED BY a TO b", "REASSIGN OWNED"),
        ("CREATE TRIGGER tr AFTER INSERT ON t EXECUTE FUNCTION f()", "CREATE TRIGGER"),
        ("COMMIT PREPARED 'x'", "COMMIT PREPARED"),
        ("PREPARE TRANSACTION 'x'", "PREPARE TRANSACTION"),
        ("ROLLBACK", "ROLLBACK"),
        ("DISCARD TEMP", "DISCARD TEMP"),
        ("FETCH 10 FROM c", "FETCH"),
        ("MOVE c", "MOVE"),
        ("CLOSE c", "CLOSE CURSOR"),
        ("CLOSE ALL", "CLOSE CURSOR ALL"),
        ("DECLARE c CURSOR FOR SELECT 1", "DECLARE CURSOR"),
        ("REINDEX TABLE t", "REINDEX"),
        ("CLUSTER t", "CLUSTER"),
        ("LOAD 'x'", "LOAD"),
        ("SET CONSTRAINTS ALL DEFERRED", "SET CONSTRAINTS"),
        ("TRUNCATE t", "TRUNCATE TABLE"),
        ("DO $$ BEGIN END $$", "DO"),
        ("EXECUTE p", "EXECUTE"),
        ("SELECT * INTO x FROM t", "SELECT INTO"),
        ("SELECT 'into'", "SELECT"),
        ("SELECT 1; DROP TABLE t", "SELECT; DROP TABLE"),
        ("", "EMPTY"),
        ("-- nothing", "EMPTY"),
        ("SELEC 1", "UNPARSEABLE"),
    ],
)
def test_statement_kind(sql: str, kind: str) -> None:
    assert statement_kind(sql) == kind


# --- properties -----------------------------------------------------------------------------


@contextmanager
def without_shortcuts() -> Iterator[None]:
    """Every text decoded and every statement walked: the slow path the shortcuts skip."""
    compile_rules = sqlclass._compile

    def compile_without_keywords(rules: tuple[StatementRule, ...]) -> sqlclass._Compiled:
        return compile_rules(rules)._replace(keywords=None)

    with (
        mock.patch.object(sqlclass, "_compile", compile_without_keywords),
        mock.patch.object(sqlclass, "_nested_match_possible", lambda *args: True),
        mock.patch.object(sqlclass, "_FIELD_KINDS_BUT_SELECT", sqlclass._STATEMENT_TYPES),
        mock.patch.object(sqlclass, "_FIELD_KINDS", sqlclass._STATEMENT_TYPES),
    ):
        yield


def slow_classify(sql: str, rule_set: tuple[StatementRule, ...]) -> Allowed | NeedsApproval:
    with without_shortcuts():
        return classify_sql(sql, rule_set)


def slow_statement_kind(sql: str) -> str:
    with without_shortcuts():
        return statement_kind(sql)


EVERY_EXAMPLE = (
    [sql for sql, _ in ALLOWED]
    + [sql for sql, _ in NEEDS_APPROVAL + NEEDS_APPROVAL_IN_PART]
    + [sql for case in OPT_IN_CASES for sql in (case[1], case[3])]
)
RULE_SETS = [DEFAULT_RULES, rules(*ALL_RULES), (), *((rule,) for rule in OPT_IN)]


@pytest.mark.parametrize("sql", EVERY_EXAMPLE, ids=lambda v: repr(v)[:50])
def test_shortcuts_never_change_the_answer(sql: str) -> None:
    for rule_set in RULE_SETS:
        assert classify_sql(sql, rule_set) == slow_classify(sql, rule_set), rule_set
        assert_relay_check_agrees(sql, rule_set)
    assert statement_kind(sql) == slow_statement_kind(sql)


def assert_relay_check_agrees(sql: str, rule_set: tuple[StatementRule, ...]) -> None:
    """The relay's `check_sql` gives `classify_sql`'s verdict, without the kinds."""
    verdict = classify_sql(sql, rule_set)
    checked = sqlclass.check_sql(sql, sqlclass.compile_rules(rule_set))
    assert checked == (verdict if isinstance(verdict, NeedsApproval) else None), rule_set


IDENTIFIER = st.one_of(
    st.from_regex(r"t_[a-z0-9_]{0,6}", fullmatch=True),
    st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="\0"), min_size=1, max_size=8
    ).map(lambda s: '"' + s.replace('"', '""') + '"'),
)
WORDS = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=20
) | st.sampled_from(
    ["DROP TABLE t; ", "DELETE FROM t;", "'; TRUNCATE t; --", "$$", "*/", "/*", "\n"]
)
LITERAL = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    WORDS.map(lambda s: "'" + s.replace("'", "''") + "'"),
    WORDS.filter(lambda s: "$q$" not in s and not s.endswith("$")).map(lambda s: f"$q${s}$q$"),
    IDENTIFIER,
)
COMMENT = st.one_of(
    st.just(" "),
    st.just("\n"),
    WORDS.filter(lambda s: "\n" not in s and "\r" not in s).map(lambda s: f" --{s}\n"),
    WORDS.filter(
        lambda s: "*/" not in s and "/*" not in s and not s.endswith("/") and not s.startswith("*")
    ).map(lambda s: f"/*{s}*/"),
)
BENIGN = [
    "SELECT {e}",
    "SELECT {e}, {e} FROM {i} WHERE {i} = {e}",
    "INSERT INTO {i} VALUES ({e}, {e})",
    "UPDATE {i} SET {i} = {e} WHERE {i} = {e}",
    "DELETE FROM {i} WHERE {i} = {e}",
    "CREATE TABLE {i} ({i} int)",
    "EXPLAIN DELETE FROM {i}",
    "EXPLAIN (ANALYZE false) UPDATE {i} SET {i} = {e}",
    "SET {i} = {e}",
    "BEGIN",
    "COMMIT",
    "COPY {i} TO STDOUT",
    "VALUES ({e})",
    "WITH {i} AS (SELECT {e}) SELECT * FROM {i}",
    "SELECT * FROM {i} FOR UPDATE",
    "PREPARE {i} AS SELECT {e}",
]
DESTRUCTIVE = [
    "DROP TABLE {i}",
    "DROP INDEX {i}",
    "TRUNCATE {i}",
    "DELETE FROM {i}",
    "UPDATE {i} SET {i} = {e}",
    "ALTER TABLE {i} DROP COLUMN {i}",
    "COPY {i} TO PROGRAM {s}",
    "COPY {i} FROM PROGRAM {s}",
    "WITH {i} AS (DELETE FROM {i} RETURNING *) SELECT {e}",
    "EXPLAIN ANALYZE UPDATE {i} SET {i} = {e}",
    "PREPARE {i} AS DELETE FROM {i}",
    "DO {s}",
    "EXECUTE {i}",
]


@st.composite
def statement(draw: st.DrawFn, templates: list[str]) -> str:
    template = draw(st.sampled_from(templates))
    out = []
    for part in template.split(" "):
        for key, strategy in (("{e}", LITERAL), ("{i}", IDENTIFIER)):
            while key in part:
                part = part.replace(key, draw(strategy), 1)
        if "{s}" in part:
            part = part.replace(
                "{s}",
                "$q$"
                + draw(WORDS.filter(lambda s: "$q$" not in s and not s.endswith("$")))
                + "$q$",
            )
        out.append(part)
    return draw(COMMENT).join(out)


def script(*statements: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    separator = st.tuples(COMMENT, st.just(";"), COMMENT).map("".join)
    return st.tuples(st.lists(st.one_of(*statements), min_size=1, max_size=4), separator).map(
        lambda pair: pair[1].join(pair[0])
    )


def parses(sql: str) -> bool:
    try:
        pg_parser.parse_sql_json(sql)
    except pg_parser.ParseError:
        return False
    return True


@settings(max_examples=300)
@given(script(statement(BENIGN)))
def test_generated_benign_statements_are_allowed(sql: str) -> None:
    result = classify_sql(sql)
    if parses(sql):  # a generated identifier may still be a reserved word
        assert isinstance(result, Allowed), (sql, result)
        assert len(result.kinds) >= 1


@settings(max_examples=300)
@given(
    st.lists(statement(BENIGN), max_size=3),
    statement(DESTRUCTIVE),
    st.lists(statement(BENIGN), max_size=3),
)
def test_a_destructive_statement_anywhere_needs_approval(
    before: list[str], destructive: str, after: list[str]
) -> None:
    sql = ";\n".join([*before, destructive, *after])
    result = classify_sql(sql)
    assert isinstance(result, NeedsApproval), (sql, result)
    if parses(sql):
        assert not any(r.startswith("unparseable") for r in result.reasons), (sql, result)


@settings(max_examples=300)
@given(
    st.one_of(script(statement(BENIGN), statement(DESTRUCTIVE)), st.text(max_size=200)),
    st.sampled_from(RULE_SETS),
)
def test_shortcuts_never_change_the_answer_generated(
    sql: str, rule_set: tuple[StatementRule, ...]
) -> None:
    assert classify_sql(sql, rule_set) == slow_classify(sql, rule_set)
    assert_relay_check_agrees(sql, rule_set)
    assert statement_kind(sql) == slow_statement_kind(sql)


@given(st.one_of(st.text(max_size=500), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_never_raises(sql: str) -> None:
    for rule_set in (DEFAULT_RULES, rules(*ALL_RULES)):
        result = classify_sql(sql, rule_set)
        assert isinstance(result, Allowed | NeedsApproval)
        if isinstance(result, NeedsApproval):
            assert result.reasons and all(isinstance(r, str) and r for r in result.reasons)
            assert not any(r.startswith("unclassifiable") for r in result.reasons), result
    assert isinstance(statement_kind(sql), str)


@settings(max_examples=300)
@given(st.one_of(script(statement(BENIGN), statement(DESTRUCTIVE)), st.text(max_size=100)))
def test_appending_a_drop_needs_approval(sql: str) -> None:
    if parses(sql):
        # The newline ends a trailing `--` comment, which would otherwise swallow the DROP.
        result = classify_sql(sql + "\n; DROP TABLE x")
        assert isinstance(result, NeedsApproval)
        assert any(
            r.startswith("DROP TABLE: ") or r.startswith("unparseable") for r in result.reasons
        )
