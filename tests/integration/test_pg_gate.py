"""The statement gate against a hostile client, through the real gateway to PostgreSQL 15.

One test per way in which the gate and the server could read the session differently
(issue #19): the session's encoding and string settings, the fast path (FunctionCall),
prepared statements made one way and run another, `statements = []`, text that isn't the
session's encoding. Each checks on the server itself that nothing ran that a human did
not allow. (The generated corpus is `test_pg_gate_differential.py`.)
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bastion import pgwire
from tests.integration import pg_helpers as pg
from tests.integration.conftest import Server, cli, wait_until
from tests.peers import PG_BIN, Postgres


@pytest.fixture(scope="module")
def gateway(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("pg-gate")
    alt = f"gate_alt_{os.urandom(3).hex()}"
    postgres.create_database(alt, owner=pg.APP_USER)
    server = Server(pg.make_pg_home(base, postgres, alt), base)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        postgres.psql(f"DROP DATABASE IF EXISTS {alt} WITH (FORCE)")


@pytest.fixture
def tunnel(gateway: Server) -> Iterator[pg.Tunnel]:
    tunnel = pg.open_tunnel(gateway, pg.issue(gateway))
    yield tunnel
    tunnel.stop()


@pytest.fixture
def sentinel(postgres: Postgres) -> Iterator[str]:
    name = f"sentinel_{os.urandom(4).hex()}"
    postgres.psql(
        f"SET ROLE {pg.APP_USER}; CREATE TABLE {name} (id int);"
        f" INSERT INTO {name} SELECT generate_series(1, 3);",
        db=pg.APP_DB,
    )
    yield name
    postgres.psql(f"DROP TABLE IF EXISTS {name}", db=pg.APP_DB)


def count(postgres: Postgres, table: str) -> str:
    """Rows in `table` as the superuser sees them on the server, or 'gone'."""
    if postgres.psql(f"SELECT to_regclass('{table}') IS NULL", db=pg.APP_DB).strip() == "t":
        return "gone"
    return postgres.psql(f"SELECT count(*) FROM {table}", db=pg.APP_DB).strip()


class Raw(pg.RawPg):
    """RawPg with startup parameters of the client's choosing (client_encoding...)."""

    def __init__(self, port: int, **parameters: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.parser = pgwire.BackendParser()
        self.key = None
        params = {"user": "raw-agent", "database": pg.APP_DB, **parameters}
        self.startup = self.send_and_read(pgwire.StartupMessage(params))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)


def query_bytes(sql: bytes) -> bytes:
    return b"Q" + struct.pack("!i", 4 + len(sql) + 1) + sql + b"\0"


def held(server: Server, grant: pg.Grant) -> dict[str, object]:
    return pg.pending_approval(server, grant)


def deny(server: Server, approval_id: object) -> None:
    cli(server.home, "approvals", "deny", str(approval_id), "--reason", "no", actor="alice")


def approve(server: Server, approval_id: object) -> None:
    cli(server.home, "approvals", "approve", str(approval_id), actor="alice")


# -- one reading of every statement -------------------------------------------------------

# Valid UTF-8 (中 is E4 B8 AD), so a UTF-8 reader sees a backslash that, in an E'' string,
# escapes the quote and hides the DROP inside the literal. A GBK server reads E4B8 and
# AD5C as two characters: the backslash is gone, the quote ends the literal, the DROP runs.
HIDDEN = "select E'中\\'; drop table %s; --'".encode()


@pytest.mark.parametrize(
    ("setting", "attack"),
    [
        ("SET client_encoding = 'GBK'", HIDDEN),
        ("SET standard_conforming_strings = off", b"select 'a\\''; drop table %s; --'"),
    ],
    ids=["gbk", "standard-strings-off"],
)
def test_the_attacks_run_when_sent_straight_to_postgresql(
    postgres: Postgres, sentinel: str, setting: str, attack: bytes
) -> None:
    """The premise, checked against the real server with no bastion in between: each
    attack below does drop the table, so the gate's holding it is what saves it."""
    with psycopg.connect(
        host="127.0.0.1", port=postgres.port, user=pg.APP_USER, password=pg.APP_PASSWORD,
        dbname=pg.APP_DB, autocommit=True,
    ) as direct:  # fmt: skip
        direct.execute(setting)
        direct.pgconn.exec_(attack % sentinel.encode())  # these very bytes, as libpq sends
    assert count(postgres, sentinel) == "gone"


@pytest.mark.parametrize("how", ["startup", "set", "set-pipelined"])
def test_a_drop_hidden_by_the_sessions_encoding_waits_for_a_human(
    gateway: Server, tunnel: pg.Tunnel, sentinel: str, postgres: Postgres, how: str
) -> None:
    raw = Raw(tunnel.port, client_encoding="GBK") if how == "startup" else Raw(tunnel.port)
    try:
        attack = query_bytes(HIDDEN % sentinel.encode())
        if how == "set":
            raw.send_and_read(pgwire.Query("SET client_encoding = 'GBK'"))
            raw.send_raw(attack)
        elif how == "set-pipelined":  # both in one write: the gate must wait for the SET
            raw.send_raw(pgwire.encode(pgwire.Query("SET client_encoding = 'GBK'")) + attack)
        else:
            raw.send_raw(attack)
        approval = held(gateway, tunnel.grant)
        assert "DROP TABLE" in str(approval["reasons"]), approval
        deny(gateway, approval["id"])
        if how == "set-pipelined":
            assert pg.errors_of(raw.read_until_ready()) == []  # the SET's own answer
        answer = raw.read_until_ready()
        assert [e.sqlstate for e in pg.errors_of(answer)] == ["42501"]
    finally:
        raw.close()
    assert count(postgres, sentinel) == "3"


def test_a_backslash_with_standard_strings_off_waits_for_a_human(
    gateway: Server, tunnel: pg.Tunnel, sentinel: str, postgres: Postgres
) -> None:
    raw = Raw(tunnel.port)
    try:
        raw.send_raw(
            pgwire.encode(pgwire.Query("SET standard_conforming_strings = off"))
            # As the server reads it with standard strings off: 'a\'' is a literal, then a
            # DELETE. Read with them on: one literal, the DELETE inside it.
            + query_bytes(f"select 'a\\''; delete from {sentinel}; --'".encode())
        )
        approval = held(gateway, tunnel.grant)
        assert "standard_conforming_strings" in str(approval["reasons"])
        deny(gateway, approval["id"])
        raw.read_until_ready()
        raw.read_until_ready()
    finally:
        raw.close()
    assert count(postgres, sentinel) == "3"


def test_latin9_text_runs_as_the_server_reads_it(tunnel: pg.Tunnel) -> None:
    with pg.connection(tunnel.port, client_encoding="LATIN9", autocommit=True) as conn:
        assert conn.execute("select '€'").fetchone() == ("€",)  # no hang, no approval


# -- prepared statements, whichever way they were made -----------------------------------


def test_sql_prepare_then_protocol_execute_needs_an_approval_each_run(
    gateway: Server, tunnel: pg.Tunnel, sentinel: str, postgres: Postgres
) -> None:
    raw = Raw(tunnel.port)
    try:
        raw.send(pgwire.Query(f"PREPARE p AS DELETE FROM {sentinel}"))
        approve(gateway, held(gateway, tunnel.grant)["id"])
        raw.read_until_ready()
        run = (pgwire.Bind("", "p"), pgwire.Execute(""), pgwire.Sync())
        raw.send(*run)
        tags = [m.tag for m in raw.read_until_ready() if isinstance(m, pgwire.CommandComplete)]
        assert tags == ["DELETE 3"]  # the approval covered that one run
        postgres.psql(f"INSERT INTO {sentinel} SELECT generate_series(1, 3)", db=pg.APP_DB)
        raw.send(*run)
        deny(gateway, held(gateway, tunnel.grant)["id"])  # the next run waits again
        assert pg.errors_of(raw.read_until_ready())[0].sqlstate == "42501"
        raw.send(pgwire.Query("EXECUTE p"))  # and so does a run by SQL
        deny(gateway, held(gateway, tunnel.grant)["id"])
        assert pg.errors_of(raw.read_until_ready())[0].sqlstate == "42501"
    finally:
        raw.close()
    assert count(postgres, sentinel) == "3"


def test_pg_dump_runs_its_own_prepared_statements_without_a_human(
    gateway: Server, tunnel: pg.Tunnel, postgres: Postgres, tmp_path: Path
) -> None:
    # A column privilege makes pg_dump PREPARE getColumnACLs and EXECUTE it.
    schema = f"dump_{os.urandom(3).hex()}"
    postgres.psql(
        f"SET ROLE {pg.APP_USER}; CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (a int, b int);"
        f" GRANT SELECT (a) ON {schema}.t TO PUBLIC;",
        db=pg.APP_DB,
    )
    try:
        result = subprocess.run(
            [str(PG_BIN / "pg_dump"), "-h", "127.0.0.1", "-p", str(tunnel.port), "-U", "x",
             "-n", schema, "-f", str(tmp_path / "dump.sql"), pg.APP_DB],
            env=pg.client_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "GRANT SELECT(a)" in (tmp_path / "dump.sql").read_text()
        assert pg.pending_approvals(gateway, tunnel.grant) == []
    finally:
        postgres.psql(f"DROP SCHEMA {schema} CASCADE", db=pg.APP_DB)


# -- the fast path ---------------------------------------------------------------------------


def function_call(oid: int, *args: bytes) -> bytes:
    body = struct.pack("!Ih", oid, 0) + struct.pack("!h", len(args))
    for arg in args:
        body += struct.pack("!i", len(arg)) + arg
    body += struct.pack("!h", 0)
    return b"F" + struct.pack("!i", 4 + len(body)) + body


def test_a_fast_path_call_of_another_function_waits_for_a_human(
    gateway: Server, tunnel: pg.Tunnel, postgres: Postgres
) -> None:
    raw = Raw(tunnel.port)
    other = Raw(tunnel.port)
    try:
        [row] = [m for m in other.send_and_read(pgwire.Query("select pg_backend_pid()"))
                 if isinstance(m, pgwire.DataRow)]  # fmt: skip
        pid = int(row.values()[0] or b"0")
        # pg_terminate_backend(int4) is OID 2096: through the fast path, unseen by SQL rules.
        raw.send_raw(function_call(2096, str(pid).encode()))
        approval = held(gateway, tunnel.grant)
        assert "fast-path call of function OID 2096" in str(approval["reasons"])
        deny(gateway, approval["id"])
        assert pg.errors_of(raw.read_until_ready())[0].sqlstate == "42501"
        assert pg.errors_of(other.send_and_read(pgwire.Query("select 1"))) == []  # alive
    finally:
        raw.close()
        other.close()


def test_large_objects_through_the_fast_path_work(tunnel: pg.Tunnel, tmp_path: Path) -> None:
    source = tmp_path / "blob.bin"
    source.write_bytes(os.urandom(100_000))
    psql = [str(PG_BIN / "psql"), "-X", "-w", "-h", "127.0.0.1", "-p", str(tunnel.port),
            "-U", "x", "-d", pg.APP_DB, "-v", "ON_ERROR_STOP=1"]  # fmt: skip
    made = subprocess.run(
        [*psql, "-c", f"\\lo_import {source}"], env=pg.client_env(), capture_output=True,
        text=True, timeout=30,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    oid = made.stdout.split()[-1]
    back = tmp_path / "back.bin"
    got = subprocess.run(
        [*psql, "-c", f"\\lo_export {oid} {back}", "-c", f"\\lo_unlink {oid}"],
        env=pg.client_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert back.read_bytes() == source.read_bytes(), got.stderr


# -- statements = [] --------------------------------------------------------------------------


def test_no_statement_rules_means_no_gate(gateway: Server, postgres: Postgres) -> None:
    tunnel = pg.open_tunnel(gateway, pg.issue(gateway, pg.BENCH_TARGET), pg.BENCH_TARGET)
    try:
        with pg.connection(tunnel.port, autocommit=True) as conn:
            conn.execute("DO $$ BEGIN PERFORM 1; END $$")  # not held
            with pytest.raises(psycopg.errors.SyntaxError):  # the server's own 42601
                conn.execute("SELEC 1")
            with pytest.raises(psycopg.errors.InvalidSqlStatementName):  # 26000, not held
                conn.execute("EXECUTE nobody_prepared")
    finally:
        tunnel.stop()
    wait_until(lambda: True)
