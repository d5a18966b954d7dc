"""Both state-store backends as test fixtures: SQLite in a temp file, PostgreSQL on the
session's real server (a fresh database per test, created from template0).

`Backend.open()` opens the store under test; `Backend.sql()` runs SQL straight on the
database (to count rows, tamper with them, or fake an old schema), outside bastion.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bastion.models import (
    AccessRequest,
    Agent,
    Grant,
    SslMode,
    Target,
    TargetKind,
)
from bastion.store import SchemaPolicy, Store
from bastion.store.postgres import PostgresStore
from bastion.store.sqlite import SqliteStore
from tests.peers import LOOPBACK, Postgres

NOW = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)
STORE_ROLE = "bastion_store"
STORE_PASSWORD = "store-secret"


class Backend:
    name = ""
    integrity_error: type[Exception] = Exception

    def open(self, schema: SchemaPolicy = "check") -> Store:
        raise NotImplementedError

    def sql(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def count(self, table: str) -> int:
        return int(self.sql(f"SELECT count(*) FROM {table}")[0][0])


class SqliteBackend(Backend):
    name = "sqlite"
    integrity_error = sqlite3.IntegrityError

    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self, schema: SchemaPolicy = "check") -> Store:
        return SqliteStore(self.path, migrate=schema != "any")

    def sql(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.path) as db:
            return db.execute(statement, params).fetchall()


class PostgresBackend(Backend):
    name = "postgres"
    integrity_error = psycopg.IntegrityError

    def __init__(self, url: str) -> None:
        self.url = url

    def open(self, schema: SchemaPolicy = "check") -> Store:
        return PostgresStore(self.url, schema=schema)

    def sql(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(statement.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description else []


def set_back_to_version_4(backend: Backend) -> None:
    """Undo migrations 6 and 5 by hand: the store an older bastion left."""
    for statement in (
        "DROP INDEX web_tokens_expires",
        "DROP TABLE web_tokens",
        "DROP TABLE web_users",
        "DELETE FROM schema_version WHERE version = 6",
        "DROP INDEX sessions_node",
        "DROP TABLE nodes",
        "DELETE FROM schema_version WHERE version = 5",
    ):
        backend.sql(statement)


def store_url(server: Postgres, database: str, password: str = STORE_PASSWORD) -> str:
    return f"postgresql://{STORE_ROLE}:{password}@{LOOPBACK}:{server.port}/{database}"


@pytest.fixture(scope="session")
def store_server(postgres: Postgres) -> Postgres:
    """The session's PostgreSQL, with the role the bastion store logs in as."""
    postgres.create_role(STORE_ROLE, STORE_PASSWORD)
    return postgres


def fresh_database(server: Postgres) -> str:
    name = f"store_{secrets.token_hex(4)}"
    server.psql(
        f'CREATE DATABASE :"name" OWNER {STORE_ROLE} TEMPLATE template0', variables={"name": name}
    )
    return name


def drop_database(server: Postgres, name: str) -> None:
    server.psql('DROP DATABASE :"name" WITH (FORCE)', variables={"name": name})


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield SqliteBackend(tmp_path / "state.db")
        return
    server: Postgres = request.getfixturevalue("store_server")
    name = fresh_database(server)
    try:
        pg = PostgresBackend(store_url(server, name))
        pg.open("upgrade").close()  # what `bastion migrate` does on a new database
        yield pg
    finally:
        drop_database(server, name)


# -- values to store ------------------------------------------------------------------


def ssh_target(name: str = "prod-web") -> Target:
    return Target(
        name=name,
        kind=TargetKind.SSH,
        host="127.0.0.1",
        port=2201,
        user="deploy",
        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKwlZjjP9d7SpKOwoMyhjdNOekr0ZssYnyHzMCwEcOqi",
        created_at=NOW,
        created_by="alice",
    )


def pg_target(name: str = "prod-db") -> Target:
    return Target(
        name=name,
        kind=TargetKind.POSTGRES,
        host="127.0.0.1",
        port=5432,
        user="app",
        database="appdb",
        sslmode=SslMode.VERIFY_FULL,
        sslrootcert="/etc/ssl/root.crt",
        created_at=NOW,
        created_by="alice",
    )


def grant(grant_id: str, serial: int, *, task: str = "hotfix-1422", start: datetime = NOW) -> Grant:
    return Grant(
        id=grant_id,
        agent="chatgpt-agent",
        task=task,
        reason="fix the outage",
        targets=("prod-web", "prod-db"),
        valid_after=start - timedelta(seconds=60),
        valid_before=start + timedelta(minutes=30),
        created_at=start,
        created_by="alice",
        serial=serial,
        key_id=f"grant={grant_id} agent=chatgpt-agent task={task}",
        key_fingerprint="SHA256:ZE7iIQYZpddXpUZefIVntveAHYU7spqUOowvGq+42cU",
        permit_pty=True,
        permit_port_forwarding=True,
        source_addresses=("10.0.0.0/8",),
        force_command="uptime",
    )


def enrolled(name: str = "chatgpt-agent", fingerprint: str = "SHA256:abc") -> Agent:
    return Agent(
        name=name,
        public_key=ssh_target().host_key or "",
        key_fingerprint=fingerprint,
        may_request=("prod-db", "replica-db"),
        max_ttl=timedelta(hours=1),
        created_at=NOW,
        created_by="alice",
    )


def access_request(request_id: str = "r-1", task: str = "hotfix-1422") -> AccessRequest:
    return AccessRequest(
        id=request_id,
        agent="chatgpt-agent",
        key_fingerprint="SHA256:abc",
        targets=("prod-db",),
        task=task,
        reason="fix failing migration",
        ttl=timedelta(minutes=30),
        client="127.0.0.1:50000",
        node="node-a",
        requested_at=NOW,
        expires_at=NOW + timedelta(minutes=10),
    )
