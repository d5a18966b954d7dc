"""PostgreSQL through `bastion serve`: the real `ssh -L`, a real PostgreSQL 15, real clients.

The agent opens `ssh -N -L PORT:prod-db:5432 prod-db@bastion` with its grant's certificate
and points `psql`, psycopg 3 or `pgbench` at 127.0.0.1:PORT, with whatever user name and no
password: the bastion logs in upstream as the registered role (`app`). What the tests look
at is what the agent sees (results, notices, errors and their SQLSTATEs), what the server
sees (pg_stat_activity as the superuser), and what the operator sees (session records,
approvals, the query log in the recording).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import errors

from tests.integration import pg_helpers as pg
from tests.integration.conftest import Server, Spawned, cli, drain_slowly, serving, wait_until
from tests.peers import Postgres


@pytest.fixture(scope="module")
def alt_db(postgres: Postgres) -> Iterator[str]:
    """A second database owned by `app`, in the target's `databases` allow-list."""
    name = f"altdb_{os.urandom(3).hex()}"
    postgres.create_database(name, owner=pg.APP_USER)
    yield name
    postgres.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def pg_gateway(
    postgres: Postgres, alt_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("pg-gateway")
    with serving(pg.make_pg_home(base, postgres, alt_db), base) as server:
        yield server


@pytest.fixture
def tunnel(pg_gateway: Server) -> pg.Tunnel:
    """A fresh grant for prod-db and its tunnel (the ssh is stopped after the test)."""
    return pg.open_tunnel(pg_gateway, pg.issue(pg_gateway))


@pytest.fixture
def table(postgres: Postgres) -> Iterator[str]:
    """A fresh table `t_<hex>(id int, v text)` owned by app, with rows 1..3; dropped after."""
    with pg.scratch_table(postgres) as name:
        yield name


def rows_of(postgres: Postgres, sql: str) -> list[str]:
    """What the superuser sees, directly on the server (not through the bastion)."""
    return [line for line in postgres.psql(sql, db=pg.APP_DB).splitlines() if line]


def table_exists(postgres: Postgres, name: str) -> bool:
    return rows_of(postgres, f"SELECT to_regclass('public.{name}') IS NOT NULL") == ["t"]


# -- psql: who the agent is on the database -------------------------------------------------


def test_psql_runs_as_the_registered_role_without_a_password(
    pg_gateway: Server, tunnel: pg.Tunnel
) -> None:
    result = pg.psql(
        tunnel.port,
        "select current_user, current_database(), current_setting('application_name')",
        user="mallory",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "app|appdb|psql (bastion: bot)\n"
    assert result.stderr == ""


def test_database_outside_the_allow_list_is_refused_as_postgresql_would(
    tunnel: pg.Tunnel, alt_db: str
) -> None:
    """Never another database than the one asked for (`pg_restore -d app2` must not write
    into the registered one): FATAL 3D000, naming the databases allowed."""
    result = pg.psql(tunnel.port, "select current_user, current_database()", db="postgres")

    assert result.returncode == 2
    assert result.stdout == ""
    assert (
        "FATAL:  [bastion] database 'postgres' is not allowed through target prod-db"
        f" (allowed: appdb, {alt_db})"
    ) in result.stderr
    with pytest.raises(psycopg.OperationalError, match="database 'postgres' is not allowed"):
        pg.connect(tunnel.port, dbname="postgres")


def test_database_in_the_allow_list_is_used(tunnel: pg.Tunnel, alt_db: str) -> None:
    result = pg.psql(tunnel.port, "select current_user, current_database()", db=alt_db)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"app|{alt_db}\n"
    assert result.stderr == ""


def test_session_record_of_a_psql_connection(pg_gateway: Server, tunnel: pg.Tunnel) -> None:
    result = pg.psql(tunnel.port, "select 42")
    assert (result.returncode, result.stdout) == (0, "42\n"), result.stderr

    tunnel.stop()
    [record] = pg_gateway.ended_sessions(tunnel.grant)
    assert record["kind"] == "forward"
    assert record["target"] == pg.TARGET
    assert record["agent"] == "bot"
    assert record["end_reason"] == "client-closed"
    assert record["command"].startswith(f"-L {pg.TARGET}:5432 -> 127.0.0.1:")
    assert record["bytes_up"] > 0
    assert record["bytes_down"] > 0


# -- psycopg 3 --------------------------------------------------------------------------------


def test_psycopg_simple_and_extended_queries(tunnel: pg.Tunnel) -> None:
    with pg.connection(tunnel.port, autocommit=True) as conn:
        assert conn.info.parameter_status("server_version") is not None
        # Simple query protocol (no parameters), with two statements in one Query.
        cur = conn.execute("select current_user; select 'two', 2")
        assert cur.fetchall() == [("app",)]
        assert cur.nextset()
        assert cur.fetchall() == [("two", 2)]
        # Extended protocol: parameters, and a prepared statement used twice.
        assert conn.execute("select %s::int + %s::int", [2, 3]).fetchone() == (5,)
        query = "select %s::text || '!' as shout"
        for word in ("a", "bb"):
            assert conn.execute(query, [word], prepare=True).fetchone() == (word + "!",)
        prepared = conn.execute(
            "select statement from pg_prepared_statements where from_sql is false"
        ).fetchall()
        assert ("select $1::text || '!' as shout",) in prepared
        # The extended protocol without parameters (binary results force it).
        assert conn.execute("select 'b'::text", binary=True).fetchone() == ("b",)


def test_psycopg_binary_parameters_round_trip(tunnel: pg.Tunnel) -> None:
    blob = bytes(range(256)) * 4 + os.urandom(1 << 20)
    with pg.connection(tunnel.port, autocommit=True) as conn:
        echoed = conn.execute("select %b::bytea, length(%b::bytea)", [blob, blob], binary=True)
        assert echoed.fetchone() == (blob, len(blob))
        conn.execute("create temp table blobs (id int, b bytea)")
        conn.execute("insert into blobs values (%b, %b)", [1, blob])
        assert conn.execute("select b from blobs where id = 1").fetchone() == (blob,)
        assert conn.execute("select b from blobs", binary=True).fetchone() == (blob,)


def test_psycopg_copy_out_and_in(tunnel: pg.Tunnel, table: str, postgres: Postgres) -> None:
    with pg.connection(tunnel.port, autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY (select i, 'row ' || i from generate_series(1, 100000) i) TO STDOUT"
        ) as copy:
            data = b"".join(bytes(block) for block in copy)
        assert cur.rowcount == 100_000
        lines = data.decode().splitlines()
        assert len(lines) == 100_000
        assert lines[0] == "1\trow 1"
        assert lines[-1] == "100000\trow 100000"

        with cur.copy(f"COPY {table} (id, v) FROM STDIN") as copy:
            for i in range(100, 10_100):
                copy.write_row((i, f"in {i}"))
        assert cur.rowcount == 10_000
        # The connection is usable after both.
        assert conn.execute(f"select count(*) from {table}").fetchone() == (10_003,)

    assert rows_of(postgres, f"select count(*), min(id), max(id) from {table} where id >= 100") == [
        "10000|100|10099"
    ]
    assert rows_of(postgres, f"select v from {table} where id = 5000") == ["in 5000"]


def test_psycopg_transactions_commit_and_rollback(tunnel: pg.Tunnel, table: str) -> None:
    with (
        pg.connection(tunnel.port) as writer,
        pg.connection(tunnel.port, autocommit=True) as reader,
    ):

        def ids() -> list[int]:
            return [r[0] for r in reader.execute(f"select id from {table} order by id")]

        writer.execute(f"insert into {table} values (50, 'committed')")
        assert writer.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert ids() == [1, 2, 3]  # not committed yet
        writer.commit()
        assert writer.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert ids() == [1, 2, 3, 50]

        writer.execute(f"insert into {table} values (51, 'rolled back')")
        assert 51 in [r[0] for r in writer.execute(f"select id from {table}")]
        writer.rollback()
        assert ids() == [1, 2, 3, 50]
        with writer.transaction():
            writer.execute(f"update {table} set v = 'in a block' where id = 1")
        assert reader.execute(f"select v from {table} where id = 1").fetchone() == ("in a block",)


def test_psycopg_server_side_cursor(tunnel: pg.Tunnel) -> None:
    with pg.connection(tunnel.port) as conn:
        with conn.cursor(name="big_scan") as cur:
            cur.itersize = 1000
            cur.execute("select i from generate_series(1, 20000) i")
            first = cur.fetchmany(10)
            assert [r[0] for r in first] == list(range(1, 11))
            assert conn.execute("select name from pg_cursors").fetchall() == [("big_scan",)]
            rest = sum(r[0] for r in cur)
        assert sum(range(1, 11)) + rest == sum(range(1, 20001))
        conn.commit()


def test_psycopg_listen_notify(tunnel: pg.Tunnel) -> None:
    channel = f"ch_{os.urandom(3).hex()}"
    with (
        pg.connection(tunnel.port, autocommit=True) as listener,
        pg.connection(tunnel.port, autocommit=True) as notifier,
    ):
        listener.execute(f"LISTEN {channel}")
        notifier.execute("select pg_notify(%s, %s)", [channel, "hello"])
        notifier.execute(f"NOTIFY {channel}, 'again'")
        got = list(listener.notifies(timeout=5, stop_after=2))
    assert [(n.channel, n.payload) for n in got] == [(channel, "hello"), (channel, "again")]


# -- pgbench ----------------------------------------------------------------------------------


def test_pgbench_through_the_tunnel(pg_gateway: Server, postgres: Postgres) -> None:
    """`pgbench -i` drops and creates its tables, which need approval under the default
    rules: it runs against `bench-db`, the same database registered a second time with
    `statements = []` (no approvals), so initialisation goes through the tunnel too."""
    tunnel = pg.open_tunnel(pg_gateway, pg.issue(pg_gateway, pg.BENCH_TARGET), pg.BENCH_TARGET)
    common = ["-h", pg.LOOPBACK, "-p", str(tunnel.port), "-U", "bench-agent"]
    try:
        init = subprocess.run(
            [pg.PGBENCH, "-i", "-s", "1", *common, pg.APP_DB],
            capture_output=True, text=True, timeout=120, env=pg.client_env(),
        )  # fmt: skip
        assert init.returncode == 0, init.stderr
        assert "done in" in init.stderr
        assert rows_of(postgres, "select count(*) from pgbench_accounts") == ["100000"]

        for extra in (["-T", "3"], ["-T", "2", "-M", "prepared"]):
            run = subprocess.run(
                [pg.PGBENCH, "-S", "-c", "2", *extra, *common, pg.APP_DB],
                capture_output=True, text=True, timeout=60, env=pg.client_env(),
            )  # fmt: skip
            assert run.returncode == 0, run.stderr
            processed = re.search(r"number of transactions actually processed: (\d+)", run.stdout)
            assert processed and int(processed.group(1)) > 100, run.stdout
            assert "number of failed transactions: 0 (0.000%)" in run.stdout
            assert "error" not in run.stderr.lower(), run.stderr
    finally:
        postgres.psql(
            "DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, pgbench_history,"
            " pgbench_tellers",
            db=pg.APP_DB,
        )


# -- approvals ----------------------------------------------------------------------------


def deny(server: Server, approval_id: str, reason: str) -> None:
    cli(server.home, "approvals", "deny", approval_id, "--reason", reason, actor="alice")


def approve(server: Server, approval_id: str) -> None:
    cli(server.home, "approvals", "approve", approval_id, actor="alice")


def refused(approval_id: str, why: str) -> str:
    return f"[bastion] statement refused ({approval_id}): {why}"


def test_drop_waits_for_approval_then_runs(
    pg_gateway: Server, tunnel: pg.Tunnel, table: str, postgres: Postgres
) -> None:
    sql = f"DROP TABLE {table}"
    client = pg.spawn_psql(tunnel.port, sql)

    notice = client.wait_stderr(pg.APPROVAL_NOTICE)
    approval_id = notice.group(1)
    assert notice.group(2) == f"{pg.APPROVAL_TIMEOUT_S}s"
    # While it waits: nothing ran, psql waits, a human sees what is asked.
    time.sleep(0.3)
    assert client.running()
    assert table_exists(postgres, table)
    pending = pg.pending_approval(pg_gateway, tunnel.grant)
    assert pending["id"] == approval_id
    assert (pending["kind"], pending["state"], pending["text"]) == ("statement", "pending", sql)
    assert pending["reasons"] == [f"DROP TABLE: {sql}"]
    assert pending["session"] == pg_gateway.active_session(tunnel.grant)["id"]

    decided = pg_gateway.run_cli("approvals", "approve", approval_id, actor="alice")

    assert decided.returncode == 0, decided.stderr
    assert client.wait(10) == 0, client.stderr
    assert client.stdout == "DROP TABLE\n"
    assert client.stderr == (
        f"NOTICE:  [bastion] approval required, request {approval_id};"
        f" waiting up to {pg.APPROVAL_TIMEOUT_S}s\n"
        f"NOTICE:  [bastion] approved by alice ({approval_id})\n"
    )
    assert not table_exists(postgres, table)
    record = pg.approval_record(pg_gateway, approval_id)
    assert (record["state"], record["decided_by"]) == ("approved", "alice")


def test_denied_drop_returns_42501_and_the_next_query_works(
    pg_gateway: Server, tunnel: pg.Tunnel, table: str, postgres: Postgres
) -> None:
    with pg.connection(tunnel.port, autocommit=True) as conn, ThreadPoolExecutor(1) as pool:
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        waiting = pool.submit(conn.execute, f"DROP TABLE {table}")
        approval_id = pg.pending_approval(pg_gateway, tunnel.grant)["id"]
        deny(pg_gateway, approval_id, "not on a Friday")

        with pytest.raises(errors.InsufficientPrivilege) as caught:
            waiting.result(timeout=10)
        assert caught.value.sqlstate == "42501"
        assert caught.value.diag.message_primary == refused(
            approval_id, "denied by alice: not on a Friday"
        )
        assert caught.value.diag.severity == "ERROR"
        assert notices == [
            f"[bastion] approval required, request {approval_id};"
            f" waiting up to {pg.APPROVAL_TIMEOUT_S}s"
        ]
        assert conn.execute(f"select count(*) from {table}").fetchone() == (3,)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    assert table_exists(postgres, table)
    assert pg.approval_record(pg_gateway, approval_id)["state"] == "denied"


@pytest.mark.parametrize(
    "merge",
    [
        "MERGE INTO {t} USING {t} s ON true WHEN MATCHED THEN DELETE",
        "MERGE INTO {t} USING (SELECT 1) s ON true WHEN MATCHED THEN UPDATE SET v = 'gone'",
    ],
    ids=["delete", "update"],
)
def test_a_merge_that_empties_or_rewrites_a_table_waits_for_approval(
    pg_gateway: Server, tunnel: pg.Tunnel, table: str, postgres: Postgres, merge: str
) -> None:
    """PostgreSQL 15 runs these as written; denied, the table is as it was."""
    with pg.connection(tunnel.port, autocommit=True) as conn, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(conn.execute, merge.format(t=table))
        approval = pg.pending_approval(pg_gateway, tunnel.grant)
        assert approval["reasons"][0].startswith("MERGE ... WHEN MATCHED THEN ")
        deny(pg_gateway, approval["id"], "not today")
        with pytest.raises(errors.InsufficientPrivilege):
            waiting.result(timeout=10)
    assert rows_of(postgres, f"SELECT count(*) FROM {table} WHERE v LIKE 'v%'") == ["3"]


def test_unanswered_approval_times_out_with_42501(
    pg_gateway: Server, tunnel: pg.Tunnel, table: str, postgres: Postgres
) -> None:
    with pg.connection(tunnel.port, autocommit=True) as conn:
        started = time.monotonic()
        with pytest.raises(errors.InsufficientPrivilege) as caught:
            conn.execute(f"TRUNCATE {table}")
        waited = time.monotonic() - started
        assert conn.execute(f"select count(*) from {table}").fetchone() == (3,)

    message = caught.value.diag.message_primary or ""
    assert re.fullmatch(
        rf"\[bastion\] statement refused \((a-[0-9a-f]+)\): approval timed out after"
        rf" {pg.APPROVAL_TIMEOUT_S}s",
        message,
    ), message
    assert "timed out" in message
    assert pg.APPROVAL_TIMEOUT_S - 0.5 <= waited <= pg.APPROVAL_TIMEOUT_S + 3
    approval_id = message.split("(")[1].split(")")[0]
    assert pg.approval_record(pg_gateway, approval_id)["state"] == "expired"
    assert rows_of(postgres, f"select count(*) from {table}") == ["3"]


def test_refused_statement_aborts_the_transaction_consistently(
    pg_gateway: Server, tunnel: pg.Tunnel, table: str, postgres: Postgres
) -> None:
    with pg.connection(tunnel.port) as conn, ThreadPoolExecutor(1) as pool:
        conn.execute(f"insert into {table} values (99, 'in the transaction')")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        waiting = pool.submit(conn.execute, f"DROP TABLE {table}")
        deny(pg_gateway, pg.pending_approval(pg_gateway, tunnel.grant)["id"], "no")
        with pytest.raises(errors.InsufficientPrivilege):
            waiting.result(timeout=10)

        # The server aborted the transaction, and the client knows it.
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction) as aborted:
            conn.execute(f"select count(*) from {table}")
        assert "current transaction is aborted" in str(aborted.value)
        conn.rollback()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute(f"select id from {table} order by id").fetchall() == [
            (1,),
            (2,),
            (3,),
        ]
    assert rows_of(postgres, f"select count(*) from {table} where id = 99") == ["0"]


def test_refused_multi_statement_query_runs_none_of_it(
    pg_gateway: Server, tunnel: pg.Tunnel, table: str, postgres: Postgres
) -> None:
    """`BEGIN; INSERT ...; DROP TABLE t` as one simple Query: the worst statement decides,
    and a refusal refuses the whole text (the INSERT does not run either)."""
    sql = f"BEGIN; INSERT INTO {table} VALUES (99, 'x'); DROP TABLE {table}"
    client = pg.spawn_psql(tunnel.port, sql)
    approval_id = client.wait_stderr(pg.APPROVAL_NOTICE).group(1)
    assert pg.pending_approval(pg_gateway, tunnel.grant)["text"] == sql
    deny(pg_gateway, approval_id, "one thing at a time")

    assert client.wait(10) == 1
    error = f"ERROR:  {refused(approval_id, 'denied by alice: one thing at a time')}\n"
    assert error in client.stderr
    assert rows_of(postgres, f"select count(*) from {table}") == ["3"]
    after = pg.psql(tunnel.port, f"select count(*) from {table}")
    assert (after.returncode, after.stdout) == (0, "3\n"), after.stderr


@pytest.mark.parametrize(
    ("how", "sql", "params", "kwargs"),
    [
        ("prepared", "DELETE FROM {t}", None, {"prepare": True}),
        ("binary, no parameters", "DELETE FROM {t}", None, {"binary": True}),
        ("with a parameter", "UPDATE {t} SET v = %s", ["x"], {}),
    ],
)
def test_refused_extended_query_returns_42501_and_the_connection_stays_usable(
    pg_gateway: Server,
    tunnel: pg.Tunnel,
    table: str,
    postgres: Postgres,
    how: str,
    sql: str,
    params: list[str] | None,
    kwargs: dict[str, bool],
) -> None:
    with pg.connection(tunnel.port, autocommit=True) as conn, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(conn.execute, sql.format(t=table), params, **kwargs)
        pending = pg.pending_approval(pg_gateway, tunnel.grant)
        assert pending["text"] == sql.format(t=table).replace("%s", "$1")
        deny(pg_gateway, pending["id"], f"refused ({how})")
        with pytest.raises(errors.InsufficientPrivilege) as caught:
            waiting.result(timeout=10)
        assert caught.value.diag.message_primary == refused(
            pending["id"], f"denied by alice: refused ({how})"
        )
        # The protocol is back in step: simple, extended and prepared queries all work.
        assert conn.execute(f"select count(*) from {table}").fetchone() == (3,)
        assert conn.execute(f"select v from {table} where id = %s", [2]).fetchone() == ("v2",)
        for _ in range(2):
            assert conn.execute("select %s::int * 2", [21], prepare=True).fetchone() == (42,)
    assert rows_of(postgres, f"select v from {table} order by id") == ["v1", "v2", "v3"]


def test_approved_extended_query_runs(
    pg_gateway: Server, tunnel: pg.Tunnel, table: str, postgres: Postgres
) -> None:
    with pg.connection(tunnel.port, autocommit=True) as conn, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(conn.execute, f"DELETE FROM {table}", prepare=True)
        approve(pg_gateway, pg.pending_approval(pg_gateway, tunnel.grant)["id"])
        assert waiting.result(timeout=10).rowcount == 3
        assert conn.execute(f"select count(*) from {table}").fetchone() == (0,)
    assert rows_of(postgres, f"select count(*) from {table}") == ["0"]


def test_an_approval_covers_one_run_of_a_prepared_statement(
    pg_gateway: Server, tunnel: pg.Tunnel, table: str, postgres: Postgres
) -> None:
    # psycopg prepares the statement once (a named Parse) and, the second time, only
    # binds and executes it: running it again is a new destructive act, approved anew.
    sql = f"DELETE FROM {table}"
    refill = f"INSERT INTO {table} SELECT i, 'w' || i FROM generate_series(1, 5) i"
    with pg.connection(tunnel.port, autocommit=True) as conn, ThreadPoolExecutor(1) as pool:
        first = pool.submit(conn.execute, sql, prepare=True)
        first_id = pg.pending_approval(pg_gateway, tunnel.grant)["id"]
        approve(pg_gateway, first_id)
        assert first.result(timeout=10).rowcount == 3
        conn.execute(refill)

        second = pool.submit(conn.execute, sql, prepare=True)
        pending = pg.pending_approval(pg_gateway, tunnel.grant)
        assert pending["id"] != first_id
        assert (pending["text"], pending["reasons"]) == (sql, [f"DELETE without WHERE: {sql}"])
        time.sleep(0.3)
        assert not second.done()  # it waits; the rows are still there
        assert rows_of(postgres, f"select count(*) from {table}") == ["5"]

        approve(pg_gateway, pending["id"])
        assert second.result(timeout=10).rowcount == 5
        prepared = conn.execute(
            "select count(*) from pg_prepared_statements where statement = %s", [sql]
        ).fetchone()
        assert prepared == (1,)  # one prepared statement, run twice
    assert rows_of(postgres, f"select count(*) from {table}") == ["0"]
    # The query log has each run under the approval that let it through.
    tunnel.stop()
    [session] = pg_gateway.ended_sessions(tunnel.grant)
    runs = [e for e in pg.statements(pg.query_log(pg_gateway, session["id"])) if e["sql"] == sql]
    assert [(e["verdict"], e["rows"]) for e in runs] == [
        (f"approved {first_id} by alice", 3),
        (f"approved {pending['id']} by alice", 5),
    ]


def test_running_an_approved_prepared_statement_again_can_be_denied(
    pg_gateway: Server, tunnel: pg.Tunnel, table: str, postgres: Postgres
) -> None:
    sql = f"DELETE FROM {table}"
    with pg.connection(tunnel.port, autocommit=True) as conn, ThreadPoolExecutor(1) as pool:
        first = pool.submit(conn.execute, sql, prepare=True)
        approve(pg_gateway, pg.pending_approval(pg_gateway, tunnel.grant)["id"])
        assert first.result(timeout=10).rowcount == 3
        conn.execute(f"INSERT INTO {table} VALUES (7, 'kept')")

        second = pool.submit(conn.execute, sql, prepare=True)
        second_id = pg.pending_approval(pg_gateway, tunnel.grant)["id"]
        deny(pg_gateway, second_id, "once was enough")

        with pytest.raises(psycopg.errors.InsufficientPrivilege) as refusal:
            second.result(timeout=10)
        assert str(refusal.value) == refused(second_id, "denied by alice: once was enough")
        # The session goes on, the statement is still prepared, and nothing was deleted.
        assert conn.execute(f"select v from {table}").fetchall() == [("kept",)]
    assert rows_of(postgres, f"select v from {table}") == ["kept"]


def test_refused_statement_in_a_pipeline(
    pg_gateway: Server, tunnel: pg.Tunnel, table: str, postgres: Postgres
) -> None:
    """SELECT, INSERT, a DELETE without WHERE (refused), SELECT, in one psycopg pipeline
    (one Sync at the end): the first SELECT's result arrives; the DELETE fails with 42501;
    the SELECT after it has no result (skipped, as after any error in a pipeline); the
    INSERT is rolled back with the batch's implicit transaction, as a server error would
    do; and the connection is usable afterwards."""
    with pg.connection(tunnel.port, autocommit=True) as conn, ThreadPoolExecutor(1) as pool:
        count, insert, delete, after = (conn.cursor() for _ in range(4))
        outcome: dict[str, object] = {}

        def batch() -> None:
            try:
                with conn.pipeline():
                    count.execute(f"select count(*) from {table}")
                    insert.execute(f"insert into {table} values (%s, 'pipelined')", [99])
                    delete.execute(f"delete from {table}")
                    after.execute("select 'after'")
            except psycopg.Error as exc:
                outcome["error"] = exc

        running = pool.submit(batch)
        pending = pg.pending_approval(pg_gateway, tunnel.grant)
        assert pending["text"] == f"delete from {table}"
        deny(pg_gateway, pending["id"], "pipeline")
        running.result(timeout=10)

        error = outcome.get("error")
        assert isinstance(error, errors.InsufficientPrivilege), outcome
        assert error.diag.message_primary == refused(pending["id"], "denied by alice: pipeline")
        assert count.fetchone() == (3,)
        with pytest.raises(psycopg.ProgrammingError, match="no result available"):
            after.fetchone()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("select 'usable'").fetchone() == ("usable",)
        assert conn.execute(f"select count(*) from {table}", prepare=True).fetchone() == (3,)
    assert rows_of(postgres, f"select id from {table} order by id") == ["1", "2", "3"]


def test_refused_statement_in_a_pipeline_after_an_earlier_error(
    pg_gateway: Server, tunnel: pg.Tunnel, table: str
) -> None:
    """The server is already skipping to Sync (division by zero) when the refused DELETE
    comes: the agent sees the first error only, and exactly one ReadyForQuery."""
    with pg.connection(tunnel.port, autocommit=True) as conn, ThreadPoolExecutor(1) as pool:
        outcome: dict[str, object] = {}

        def batch() -> None:
            try:
                with conn.pipeline():
                    conn.execute("select 1/0")
                    conn.execute(f"delete from {table}")
                    conn.execute("select 'after'")
            except psycopg.Error as exc:
                outcome["error"] = exc

        running = pool.submit(batch)
        deny(pg_gateway, pg.pending_approval(pg_gateway, tunnel.grant)["id"], "pipeline")
        running.result(timeout=10)

        assert isinstance(outcome.get("error"), errors.DivisionByZero), outcome
        assert conn.execute("select 'usable'").fetchone() == ("usable",)
        assert conn.execute(f"select count(*) from {table}").fetchone() == (3,)


@pytest.mark.parametrize(
    "refused_by",
    [
        "the server",
        "the bastion",
    ],
)
def test_extended_query_error_before_the_sync(
    pg_gateway: Server, tunnel: pg.Tunnel, table: str, refused_by: str
) -> None:
    """Parse/Bind/Execute/Flush, then wait (no Sync yet): the error arrives, and nothing else
    until the client sends Sync, which gets exactly one ReadyForQuery. The same whether
    the server raised the error (division by zero, at execution) or the bastion refused
    the statement."""
    msg = pg.pgwire
    raw = pg.RawPg(tunnel.port)
    try:
        by_server = "select 1/(random() * 0)::int"  # fails at execution, not at planning
        sql = by_server if refused_by == "the server" else f"DELETE FROM {table}"
        raw.send(msg.Parse("", sql), msg.Bind("", ""), msg.Execute(), msg.Flush())
        if refused_by == "the bastion":
            deny(pg_gateway, pg.pending_approval(pg_gateway, tunnel.grant)["id"], "flush")

        got = raw.read_until(msg.ErrorResponse, timeout=10)
        before = [type(m) for m in got[:-1] if not isinstance(m, msg.NoticeResponse)]
        if refused_by == "the server":
            assert (before, got[-1].sqlstate) == ([msg.ParseComplete, msg.BindComplete], "22012")
        else:
            assert (before, got[-1].sqlstate) == ([], "42501")
        assert raw.read_for(0.5) == []  # no ReadyForQuery before the Sync
        raw.send(msg.Sync())
        assert raw.read_until_ready(timeout=3) == [msg.ReadyForQuery("I")]
        answer = raw.send_and_read(msg.Query("select 'usable'"))
        assert [m.values() for m in answer if isinstance(m, msg.DataRow)] == [(b"usable",)]
    finally:
        raw.close()


def test_client_leaving_while_waiting_expires_the_request(
    pg_gateway: Server, tunnel: pg.Tunnel, table: str, postgres: Postgres
) -> None:
    client = pg.spawn_psql(tunnel.port, f"DROP TABLE {table}")
    approval_id = client.wait_stderr(pg.APPROVAL_NOTICE).group(1)

    client.stop()  # SIGTERM: psql dies without a word to the server

    def expired() -> dict[str, object] | None:
        record = pg.approval_record(pg_gateway, approval_id)
        return record if record["state"] != "pending" else None

    record = wait_until(expired, timeout=5)
    assert (record["state"], record["decision_reason"]) == (
        "expired",
        "the session ended while waiting",
    )
    assert table_exists(postgres, table)


def test_ctrl_c_while_waiting_for_approval_abandons_the_statement(
    pg_gateway: Server, tunnel: pg.Tunnel, table: str, postgres: Postgres
) -> None:
    client = pg.spawn_psql(tunnel.port, f"DROP TABLE {table}")
    approval_id = client.wait_stderr(pg.APPROVAL_NOTICE).group(1)

    os.kill(client.pid, signal.SIGINT)
    deadline = time.monotonic() + 2
    while client.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    # What a human sees next: nothing left to approve.
    late = pg_gateway.run_cli("approvals", "approve", approval_id, actor="alice")

    client.wait(10)
    assert "canceling statement due to user request" in client.stderr, client.stderr
    assert late.returncode != 0, late.stdout
    assert pg.approval_record(pg_gateway, approval_id)["state"] == "expired"
    assert table_exists(postgres, table)


def test_an_approval_is_bound_to_its_statement(
    pg_gateway: Server, tunnel: pg.Tunnel, postgres: Postgres
) -> None:
    names = [f"t_{os.urandom(4).hex()}" for _ in range(2)]
    for name in names:
        postgres.psql(f"SET ROLE {pg.APP_USER}; CREATE TABLE {name} (id int)", db=pg.APP_DB)
    try:
        first = pg.spawn_psql(tunnel.port, f"DROP TABLE {names[0]}")
        first_id = first.wait_stderr(pg.APPROVAL_NOTICE).group(1)
        second = pg.spawn_psql(tunnel.port, f"DROP TABLE {names[1]}")
        second_id = second.wait_stderr(pg.APPROVAL_NOTICE).group(1)
        assert first_id != second_id

        approve(pg_gateway, second_id)

        assert second.wait(10) == 0, second.stderr
        assert not table_exists(postgres, names[1])
        time.sleep(0.5)  # the gateway polls decisions every 0.2 s
        assert first.running()
        assert table_exists(postgres, names[0])
        [still] = pg.pending_approvals(pg_gateway, tunnel.grant)
        assert (still["id"], still["text"]) == (first_id, f"DROP TABLE {names[0]}")

        approve(pg_gateway, first_id)
        assert first.wait(10) == 0, first.stderr
        assert not table_exists(postgres, names[0])
    finally:
        for name in names:
            postgres.psql(f"DROP TABLE IF EXISTS {name}", db=pg.APP_DB)


# -- cancels ------------------------------------------------------------------------------


def unique_sleep(seconds: int = 60) -> str:
    """`select pg_sleep(60.0123)`: a query text unique enough to find in pg_stat_activity."""
    return f"select pg_sleep({seconds}.{int.from_bytes(os.urandom(2), 'big'):05d})"


def test_ctrl_c_in_psql_cancels_the_running_query(
    pg_gateway: Server, tunnel: pg.Tunnel, postgres: Postgres
) -> None:
    sql = unique_sleep()
    client = pg.spawn_psql(tunnel.port, sql)
    try:
        wait_until(lambda: pg.active_backends(postgres, sql))

        interrupted = time.monotonic()
        os.kill(client.pid, signal.SIGINT)
        status = client.wait(5)
        took = time.monotonic() - interrupted

        assert status == 1
        assert "ERROR:  canceling statement due to user request" in client.stderr
        assert took < 2.0
        assert pg.active_backends(postgres, sql) == []
    finally:
        pg.terminate_backends(postgres, sql)
    # psql's cancel came as a forward of its own, and was passed on.
    cancel = wait_until(
        lambda: [
            s
            for s in pg.forward_sessions(pg_gateway, tunnel.grant)
            if s["detail"] == "cancel request forwarded"
        ]
    )
    assert cancel[0]["end_reason"] == "exit"


def test_cancel_request_only_works_within_the_same_grant(
    pg_gateway: Server, tunnel: pg.Tunnel, postgres: Postgres
) -> None:
    """The BackendKeyData the agent gets has the server's real PID (so pg_backend_pid(),
    pg_stat_activity and notifications agree) and the bastion's own secret; quoting it
    through another grant's tunnel cancels nothing; through its own grant's tunnel it
    cancels."""
    other = pg.open_tunnel(pg_gateway, pg.issue(pg_gateway, agent="other-bot"))
    raw = pg.RawPg(tunnel.port)
    try:
        assert raw.key is not None and len(raw.key.key) == 4
        [row] = [m for m in raw.send_and_read(pg.pgwire.Query("select pg_backend_pid()"))
                 if isinstance(m, pg.pgwire.DataRow)]  # fmt: skip
        assert int(row.values()[0] or b"0") == raw.key.pid  # the real backend's PID

        # Through the other grant's tunnel: nothing happens, the query runs to its end.
        short = unique_sleep(2)
        raw.send(pg.pgwire.Query(short))
        wait_until(lambda: pg.active_backends(postgres, short))
        assert pg.send_cancel_request(other.port, raw.key.pid, raw.key.key) == b""
        answer = raw.read_until_ready(timeout=10)
        assert pg.errors_of(answer) == []
        assert [m.tag for m in answer if isinstance(m, pg.pgwire.CommandComplete)] == ["SELECT 1"]

        # Through its own grant's tunnel (a new connection, as psql does): cancelled.
        long = unique_sleep()
        raw.send(pg.pgwire.Query(long))
        wait_until(lambda: pg.active_backends(postgres, long))
        assert pg.send_cancel_request(tunnel.port, raw.key.pid, raw.key.key) == b""
        [error] = pg.errors_of(raw.read_until_ready(timeout=5))
        assert (error.sqlstate, error.message) == (
            "57014",
            "canceling statement due to user request",
        )
    finally:
        raw.close()
        pg.terminate_backends(postgres, "pg_sleep(")

    [refused_cancel] = wait_until(lambda: pg_gateway.ended_sessions(other.grant))
    assert refused_cancel["end_reason"] == "denied"
    assert refused_cancel["detail"] == "cancel request for an unknown backend"


# -- the end of a grant during a query -------------------------------------------------------

GRANT_TTL = "4s"
BACKEND_GONE_WITHIN = 2.0  # seconds after the client saw the FATAL


@dataclass
class ForcedEnd:
    grant: pg.Grant
    sql: str
    client: Spawned  # psql running `select pg_sleep(60.xxx)` when the grant ended
    tunnel: Spawned
    backend_left: list[str]  # its backend, if still running BACKEND_GONE_WITHIN later
    records: list[dict[str, object]]


def forced_end(
    server: Server, postgres: Postgres, grant: pg.Grant, end: Callable[[], object]
) -> ForcedEnd:
    """psql runs a long query through `grant`'s tunnel when `end()` ends the grant."""
    tunnel = pg.open_tunnel(server, grant)
    sql = unique_sleep()
    client = pg.spawn_psql(tunnel.port, sql)
    try:
        wait_until(lambda: pg.active_backends(postgres, sql))
        end()
        client.wait(timeout=15)
        deadline = time.monotonic() + BACKEND_GONE_WITHIN
        while pg.active_backends(postgres, sql) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = pg.active_backends(postgres, sql)
        tunnel.ssh.wait(timeout=10)
        return ForcedEnd(grant, sql, client, tunnel.ssh, left, server.ended_sessions(grant))
    finally:
        client.stop()
        tunnel.stop()
        pg.terminate_backends(postgres, sql)


@pytest.fixture(scope="module")
def expiry(pg_gateway: Server, postgres: Postgres) -> ForcedEnd:
    grant = pg.issue(pg_gateway, ttl=GRANT_TTL)
    return forced_end(pg_gateway, postgres, grant, lambda: None)  # the TTL ends it


@pytest.fixture(scope="module")
def revocation(pg_gateway: Server, postgres: Postgres) -> ForcedEnd:
    grant = pg.issue(pg_gateway)

    def revoke() -> None:
        done = pg_gateway.run_cli("grant", "revoke", grant.id, "--reason", "incident 7",
                                  actor="alice")  # fmt: skip
        assert done.returncode == 0, done.stderr

    return forced_end(pg_gateway, postgres, grant, revoke)


def test_expiry_during_a_query_gives_a_fatal_error_naming_the_grant(expiry: ForcedEnd) -> None:
    grant = expiry.grant
    stamp = datetime.fromtimestamp(grant.valid_before, UTC).strftime("%H:%M:%SZ")
    assert expiry.client.proc.returncode == 2  # psql: the connection was lost
    assert expiry.client.stderr.startswith(
        f"FATAL:  [bastion] grant {grant.id} (task {grant.task}) expired at {stamp}"
        " - session closed; ask a human for a new grant to continue\n"
    ), expiry.client.stderr
    exited_at = expiry.client.exited_at
    assert exited_at is not None and exited_at - grant.valid_before < 1.5
    [record] = expiry.records
    assert record["end_reason"] == "expired"


def test_expiry_during_a_query_ends_the_backend_query(expiry: ForcedEnd) -> None:
    assert expiry.backend_left == []


def test_revocation_during_a_query_gives_a_fatal_error(revocation: ForcedEnd) -> None:
    grant = revocation.grant
    assert revocation.client.proc.returncode == 2
    assert revocation.client.stderr.startswith(
        f"FATAL:  [bastion] grant {grant.id} (task {grant.task}) revoked by alice: incident 7"
        " - session closed; ask a human for a new grant to continue\n"
    ), revocation.client.stderr
    [record] = revocation.records
    assert record["end_reason"] == "revoked"


def test_revocation_during_a_query_ends_the_backend_query(revocation: ForcedEnd) -> None:
    assert revocation.backend_left == []


# -- the target refuses the bastion's login -----------------------------------------------------


def test_wrong_password_registered_for_the_target(pg_gateway: Server) -> None:
    grant = pg.issue(pg_gateway, pg.BAD_TARGET)
    tunnel = pg.open_tunnel(pg_gateway, grant, pg.BAD_TARGET)
    seq = pg_gateway.audit_seq()

    result = pg.psql(tunnel.port, "select 1")

    assert result.returncode == 2
    assert result.stdout == ""
    assert (
        f"FATAL:  target {pg.BAD_TARGET} refused the bastion's login 'app':"
        ' password authentication failed for user "app"\n'
    ) in result.stderr, result.stderr
    assert "not-the-password" not in result.stderr
    tunnel.stop()
    [record] = pg_gateway.ended_sessions(grant)
    assert record["end_reason"] == "target-error"
    assert "refused the bastion's login 'app'" in str(record["detail"])
    [event] = pg_gateway.audit("target.unreachable", after=seq)
    assert event["details"]["grant"] == grant.id


# -- the query log ---------------------------------------------------------------------------


def test_query_log_in_the_recording(pg_gateway: Server, tunnel: pg.Tunnel, table: str) -> None:
    with pg.connection(tunnel.port, autocommit=True) as conn, ThreadPoolExecutor(1) as pool:
        conn.execute(f"select id from {table} order by id").fetchall()
        conn.execute(f"insert into {table} values (%t, %t)", [10, "ten"])
        conn.execute("select %b::bytea", [b"\x00\x01\xff"], binary=True)
        conn.execute("select pg_sleep(0.2)")
        with pytest.raises(errors.DivisionByZero):
            conn.execute("select 1/0")
        waiting = pool.submit(conn.execute, f"DROP TABLE {table}")
        denied_id = pg.pending_approval(pg_gateway, tunnel.grant)["id"]
        deny(pg_gateway, denied_id, "keep it")
        with pytest.raises(errors.InsufficientPrivilege):
            waiting.result(timeout=10)
        waiting = pool.submit(conn.execute, f"DELETE FROM {table}")
        approved_id = pg.pending_approval(pg_gateway, tunnel.grant)["id"]
        approve(pg_gateway, approved_id)
        assert waiting.result(timeout=10).rowcount == 4
    tunnel.stop()
    [session] = pg_gateway.ended_sessions(tunnel.grant)

    log = pg.query_log(pg_gateway, session["id"])

    assert log[0] == {"event": "connected", "database": "appdb", "user": "app"}
    by_sql = {entry["sql"]: entry for entry in pg.statements(log)}
    select = by_sql[f"select id from {table} order by id"]
    assert (select["rows"], select["tags"], select["error"]) == (3, ["SELECT 3"], None)
    assert select["verdict"] == "allowed"
    assert select["params"] is None  # a simple Query
    insert = by_sql[f"insert into {table} values ($1, $2)"]
    assert (insert["params"], insert["rows"], insert["tags"]) == (["10", "ten"], 1, ["INSERT 0 1"])
    assert by_sql["select $1::bytea"]["params"] == ["\\x0001ff"]
    assert by_sql["select pg_sleep(0.2)"]["duration_ms"] >= 200
    assert all(0 <= entry["duration_ms"] < 10_000 for entry in pg.statements(log))
    assert by_sql["select 1/0"]["error"] == "22012 division by zero"
    drop = by_sql[f"DROP TABLE {table}"]
    assert drop["verdict"] == f"denied {denied_id}"
    assert drop["error"] == f"42501 {refused(denied_id, 'denied by alice: keep it')}"
    delete = by_sql[f"DELETE FROM {table}"]
    assert delete["verdict"] == f"approved {approved_id} by alice"
    assert (delete["rows"], delete["tags"], delete["error"]) == (4, ["DELETE 4"], None)
    events = [entry for entry in log if entry.get("event") == "approval requested"]
    assert [e["approval"] for e in events] == [denied_id, approved_id]
    # The order of the log is the order of the statements.
    order = [entry["sql"] for entry in pg.statements(log)]
    assert order.index(select["sql"]) < order.index(insert["sql"]) < order.index(drop["sql"])


def test_query_log_redacts_parameters_when_the_target_says_so(pg_gateway: Server) -> None:
    grant = pg.issue(pg_gateway, pg.REDACTED_TARGET)
    tunnel = pg.open_tunnel(pg_gateway, grant, pg.REDACTED_TARGET)
    with pg.connection(tunnel.port, autocommit=True) as conn:
        assert conn.execute("select %t::text || %t::text", ["secret-", "value"]).fetchone() == (
            "secret-value",
        )
        conn.execute("select %s::int", [None])
    tunnel.stop()
    [session] = pg_gateway.ended_sessions(grant)

    log = pg.query_log(pg_gateway, session["id"])

    by_sql = {entry["sql"]: entry for entry in pg.statements(log)}
    assert by_sql["select $1::text || $2::text"]["params"] == ["<redacted>", "<redacted>"]
    assert by_sql["select $1::int"]["params"] == [None]  # NULL is not a value to hide
    recording = (pg_gateway.home / "recordings").rglob("*")
    assert not any(b"secret-" in p.read_bytes() for p in recording if p.is_file())


# -- the target's side: its end of stream, and a slow agent ------------------------------------


def test_the_target_ending_the_backend_ends_the_session(
    pg_gateway: Server, tunnel: pg.Tunnel
) -> None:
    result = pg.psql(tunnel.port, "SELECT pg_terminate_backend(pg_backend_pid())")

    assert result.returncode != 0
    assert "terminating connection due to administrator command" in result.stderr
    [record] = pg_gateway.ended_sessions(tunnel.grant)
    assert (record["end_reason"], record["detail"]) == ("exit", "the target closed the connection")
    assert pg.psql(tunnel.port, "select 1").stdout == "1\n"  # the tunnel still serves


def test_a_slow_reader_of_a_large_copy_does_not_fill_the_bastion(
    pg_gateway: Server, tunnel: pg.Tunnel
) -> None:
    rows, width = 100_000, 1000  # 100 MB of COPY output
    sql = f"COPY (SELECT repeat('x', {width}) FROM generate_series(1, {rows})) TO STDOUT"
    assert pg_gateway.proc is not None
    argv = pg.psql_argv(tunnel.port, "-At", "-c", sql)

    growth, received = drain_slowly(pg_gateway.proc.pid, argv, env=pg.client_env())

    assert received == rows * (width + 1)
    assert growth < 16 << 20, f"the bastion grew by {growth / (1 << 20):.1f} MiB"
