"""PostgreSQL clients people use, through the bastion's `ssh -N -L` forward (issue #18).

Each test opens the agent's tunnel (`pg_helpers.open_tunnel`: the real `ssh -L` with the
grant's certificate) to a real PostgreSQL 15 and runs one client against it with no
password: `pg_dump` and `pg_restore` (a custom-format dump restored into another database;
with `--clean` its DROPs wait for approval, one each), asyncpg, SQLAlchemy on psycopg 3,
and node's `pg`. `psql`, psycopg 3 and `pgbench` are covered in `test_postgres.py`. The
README's "Clients" section lists the exact flags these tests use.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy import orm

from tests.integration import pg_helpers as pg
from tests.integration.conftest import Server, Spawned, cli, serving, wait_until
from tests.peers import PG_BIN, Postgres

NODE_DIR = Path(__file__).resolve().parents[1] / "clients" / "node"
PG_DUMP = str(PG_BIN / "pg_dump")
PG_RESTORE = str(PG_BIN / "pg_restore")


@pytest.fixture(scope="module")
def alt_db(postgres: Postgres) -> Iterator[str]:
    """A second database owned by `app`, in prod-db's `databases` allow-list: where
    pg_restore restores to."""
    name = f"restoredb_{os.urandom(3).hex()}"
    postgres.create_database(name, owner=pg.APP_USER)
    yield name
    postgres.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def make_home(base: Path, postgres: Postgres, alt_db: str) -> Path:
    """A home with one PostgreSQL target, prod-db (the default statement rules), whose
    allow-list has appdb and `alt_db`."""
    home = base / "home"
    cli(home, "init")
    (home / "bastion.toml").write_text(
        f'[approvals]\ntimeout = "{pg.APPROVAL_TIMEOUT_S}s"\n\n'
        f'[targets.{pg.TARGET}]\ndatabases = ["{pg.APP_DB}", "{alt_db}"]\n'
    )
    cli(
        home,
        *("target", "add-postgres", pg.TARGET, "--host", pg.LOOPBACK, "--port", str(postgres.port)),
        *("--database", pg.APP_DB, "--user", pg.APP_USER, "--password-env", "PW"),
        env={"PW": pg.APP_PASSWORD},
    )
    return home


@pytest.fixture(scope="module")
def pg_gateway(
    postgres: Postgres, alt_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("pg-clients")
    with serving(make_home(base, postgres, alt_db), base) as server:
        yield server


@pytest.fixture
def tunnel(pg_gateway: Server) -> pg.Tunnel:
    """A fresh grant for prod-db (default statement rules) and its tunnel."""
    return pg.open_tunnel(pg_gateway, pg.issue(pg_gateway))


@pytest.fixture
def table(postgres: Postgres) -> Iterator[str]:
    """A fresh table `t_<hex>(id int, v text)` owned by app, with rows 1..3; dropped after."""
    with pg.scratch_table(postgres) as name:
        yield name


def rows_of(postgres: Postgres, sql: str, db: str = pg.APP_DB) -> list[str]:
    """What the superuser sees, directly on the server (not through the bastion)."""
    return [line for line in postgres.psql(sql, db=db).splitlines() if line]


def run(argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=pg.client_env(),
        stdin=subprocess.DEVNULL,
    )


# -- pg_dump and pg_restore ------------------------------------------------------------------


@pytest.fixture
def schema(postgres: Postgres, alt_db: str) -> Iterator[str]:
    """A schema in appdb owned by app: a table with a serial key, a foreign key, an index,
    a view, 1000 rows. Dropped after, in appdb and in the restore database."""
    name = f"s_{os.urandom(4).hex()}"
    postgres.psql(
        f"SET ROLE {pg.APP_USER}; CREATE SCHEMA {name};"
        f" CREATE TABLE {name}.kinds (id serial PRIMARY KEY, label text NOT NULL UNIQUE);"
        f" CREATE TABLE {name}.items (id serial PRIMARY KEY,"
        f"   kind int REFERENCES {name}.kinds, payload jsonb, at timestamptz DEFAULT now());"
        f" CREATE INDEX ON {name}.items (kind);"
        f" CREATE VIEW {name}.counts AS SELECT kind, count(*) AS n FROM {name}.items GROUP BY kind;"
        f" INSERT INTO {name}.kinds (label) VALUES ('a'), ('b');"
        f" INSERT INTO {name}.items (kind, payload)"
        f"   SELECT 1 + i % 2, jsonb_build_object('i', i) FROM generate_series(1, 1000) i;",
        db=pg.APP_DB,
    )
    yield name
    for db in (pg.APP_DB, alt_db):
        postgres.psql(f"DROP SCHEMA IF EXISTS {name} CASCADE", db=db)


def test_pg_dump_and_pg_restore_into_another_database(
    pg_gateway: Server,
    tunnel: pg.Tunnel,
    schema: str,
    alt_db: str,
    postgres: Postgres,
    tmp_path: Path,
) -> None:
    dump = tmp_path / "app.dump"
    conn = ["-h", pg.LOOPBACK, "-p", str(tunnel.port), "-U", "dump-agent", "-w"]

    dumped = run([PG_DUMP, *conn, "-Fc", "-n", schema, "-f", str(dump), pg.APP_DB])
    assert dumped.returncode == 0, dumped.stderr
    assert dumped.stderr == ""
    listing = run([PG_RESTORE, "-l", str(dump)]).stdout
    assert f"TABLE DATA {schema} items" in listing

    # Into an empty database, no statement needs approval: it all goes straight through.
    restored = run([PG_RESTORE, *conn, "--no-owner", "--exit-on-error", "-d", alt_db, str(dump)])
    assert restored.returncode == 0, restored.stderr
    assert restored.stderr == ""
    for db in (pg.APP_DB, alt_db):
        assert rows_of(postgres, f"SELECT n FROM {schema}.counts ORDER BY kind", db=db) == [
            "500",
            "500",
        ]
    assert rows_of(postgres, f"SELECT last_value FROM {schema}.items_id_seq", db=alt_db) == ["1000"]
    assert pg.pending_approvals(pg_gateway, tunnel.grant) == []


def test_pg_restore_clean_waits_for_approval_of_each_drop(
    pg_gateway: Server,
    tunnel: pg.Tunnel,
    schema: str,
    alt_db: str,
    postgres: Postgres,
    tmp_path: Path,
) -> None:
    """`pg_restore --clean` drops each object before it re-creates it. Under the default
    statement rules each DROP (and `ALTER TABLE … DROP CONSTRAINT`) waits for a human, one
    approval each; `--verbose` is what makes pg_restore print the bastion's notices."""
    dump = tmp_path / "app.dump"
    conn = ["-h", pg.LOOPBACK, "-p", str(tunnel.port), "-U", "dump-agent", "-w"]
    assert run([PG_DUMP, *conn, "-Fc", "-n", schema, "-f", str(dump), pg.APP_DB]).returncode == 0
    first = run([PG_RESTORE, *conn, "--no-owner", "--exit-on-error", "-d", alt_db, str(dump)])
    assert first.returncode == 0, first.stderr
    postgres.psql(f"DELETE FROM {schema}.items WHERE id > 10", db=alt_db)

    restore = Spawned(
        ["env", "-i", *[f"{k}={v}" for k, v in pg.client_env().items()],
         PG_RESTORE, *conn, "--clean", "--if-exists", "--no-owner", "--exit-on-error",
         "--verbose", "-d", alt_db, str(dump)]
    )  # fmt: skip
    approved: list[dict[str, Any]] = []
    while restore.running() and len(approved) < 50:
        waiting = pg.pending_approvals(pg_gateway, tunnel.grant)
        for approval in waiting:
            cli(pg_gateway.home, "approvals", "approve", approval["id"], actor="alice")
            approved.append(approval)
        if not waiting:
            wait_until(
                lambda: not restore.running() or pg.pending_approvals(pg_gateway, tunnel.grant),
                timeout=10,
                interval=0.02,
            )
    assert restore.wait(20) == 0, restore.stderr

    texts = [a["text"].strip() for a in approved]
    assert f"DROP TABLE IF EXISTS {schema}.items;" in texts, texts
    assert f"DROP SCHEMA IF EXISTS {schema};" in texts, texts
    assert any("DROP CONSTRAINT IF EXISTS" in t for t in texts), texts
    assert all(a["state"] == "pending" and a["kind"] == "statement" for a in approved)
    # What the agent sees: one notice per wait, and the approval.
    assert restore.stderr.count("NOTICE:  [bastion] approval required, request a-") == len(approved)
    assert "NOTICE:  [bastion] approved by" in restore.stderr
    assert rows_of(postgres, f"SELECT count(*) FROM {schema}.items", db=alt_db) == ["1000"]


# -- asyncpg -------------------------------------------------------------------------------


def test_asyncpg(tunnel: pg.Tunnel, table: str, postgres: Postgres) -> None:
    async def run_client() -> dict[str, Any]:
        conn = await asyncpg.connect(
            host=pg.LOOPBACK,
            port=tunnel.port,
            user="asyncpg-agent",
            database=pg.APP_DB,
            passfile=pg.NO_PASSFILE,
            timeout=10,
        )
        try:
            out: dict[str, Any] = {}
            out["who"] = tuple(await conn.fetchrow("select current_user, current_database()"))
            out["sum"] = await conn.fetchval("select $1::int + $2::int", 2, 3)
            shout = await conn.prepare("select $1::text || '!'")
            out["shout"] = [await shout.fetchval(w) for w in ("a", "bb")]
            await conn.executemany(
                f"insert into {table} values ($1, $2)", [(i, f"many {i}") for i in range(10, 20)]
            )
            await conn.copy_records_to_table(
                table, records=[(i, f"copied {i}") for i in range(100, 1100)]
            )
            try:
                async with conn.transaction():
                    await conn.execute(f"insert into {table} values (9999, 'rolled back')")
                    raise RuntimeError("roll back")
            except RuntimeError:
                pass
            async with conn.transaction():
                cursor = conn.cursor(f"select id from {table} where id >= 100 order by id")
                out["streamed"] = sum([r["id"] async for r in cursor])
            try:
                await conn.execute("select 1/0")
            except asyncpg.DivisionByZeroError as exc:
                out["error"] = exc.sqlstate
            out["count"] = await conn.fetchval(f"select count(*) from {table}")
            return out
        finally:
            await conn.close()

    out = asyncio.run(run_client())

    assert out == {
        "who": ("app", pg.APP_DB),
        "sum": 5,
        "shout": ["a!", "bb!"],
        "streamed": sum(range(100, 1100)),
        "error": "22012",
        "count": 3 + 10 + 1000,
    }
    assert rows_of(postgres, f"select count(*) from {table} where id = 9999") == ["0"]


# -- SQLAlchemy on psycopg 3 ----------------------------------------------------------------


def test_sqlalchemy_with_psycopg(tunnel: pg.Tunnel, postgres: Postgres) -> None:
    name = f"sa_{os.urandom(4).hex()}"

    class Base(orm.DeclarativeBase):
        pass

    class Note(Base):
        __tablename__ = name
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        text: orm.Mapped[str]
        done: orm.Mapped[bool] = orm.mapped_column(default=False)

    engine = sa.create_engine(
        f"postgresql+psycopg://sqlalchemy-agent@{pg.LOOPBACK}:{tunnel.port}/{pg.APP_DB}",
        connect_args={"passfile": pg.NO_PASSFILE, "connect_timeout": 10},
    )
    try:
        Base.metadata.create_all(engine)  # CREATE TABLE needs no approval by default
        with orm.Session(engine) as session, session.begin():
            session.add_all([Note(text=f"note {i}") for i in range(5)])
        with orm.Session(engine) as session, session.begin():
            session.execute(sa.update(Note).where(Note.id <= 2).values(done=True))
            session.execute(sa.delete(Note).where(Note.id == 5))
        with engine.connect() as conn:
            done = conn.execute(sa.select(Note.id).where(Note.done).order_by(Note.id)).all()
            who = conn.execute(sa.text("select current_user")).scalar_one()
            count = conn.execute(sa.select(sa.func.count()).select_from(Note)).scalar_one()
    finally:
        engine.dispose()
        postgres.psql(f"DROP TABLE IF EXISTS {name}", db=pg.APP_DB)

    assert [r.id for r in done] == [1, 2]
    assert (who, count) == ("app", 4)


# -- node's pg ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_pg() -> Path:
    """tests/clients/node with its locked packages installed (`npm ci`, once)."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: scripts/test installs it")
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    wanted = lock["packages"]["node_modules/pg"]["version"]
    installed = NODE_DIR / "node_modules" / "pg" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != wanted:
        ci = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert ci.returncode == 0, ci.stderr
    return NODE_DIR


def test_node_pg(node_pg: Path, tunnel: pg.Tunnel, table: str, postgres: Postgres) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "PGHOST": pg.LOOPBACK,
        "PGPORT": str(tunnel.port),
        "PGUSER": "node-agent",
        "PGDATABASE": pg.APP_DB,
        "TABLE": table,
    }
    result = subprocess.run(
        ["node", str(node_pg / "client.js")],
        capture_output=True, text=True, timeout=60, env=env, cwd=node_pg,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "user": "app",
        "sum": 5,
        "shout": ["a!", "bb!"],
        "ids": [1, 2, 3, 11],
        "error": "22012",
        "after": 42,
    }
    assert rows_of(postgres, f"select v from {table} where id = 11") == ["committed"]
