"""`bastion migrate`, `bastion nodes list` and the PostgreSQL store through the CLI:
schema versions on both backends, refusals with one clear line (never the password)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.store.migrations import LATEST_VERSION
from tests.cli.conftest import KEY_MATERIAL, NOT_FOUND, STORE, assert_error, ok, run
from tests.peers import Postgres, free_port
from tests.store_backends import (
    STORE_PASSWORD,
    PostgresBackend,
    SqliteBackend,
    drop_database,
    fresh_database,
    set_back_to_version_4,
    store_url,
)


def test_migrate_sqlite(home: Path) -> None:
    where = home / "state.db"
    assert ok(home, "migrate").stdout == f"{where}: schema version {LATEST_VERSION}, up to date\n"
    set_back_to_version_4(SqliteBackend(where))
    assert ok(home, "migrate", "--dry-run").stdout == (
        f"{where}: schema version 4, would apply 5, 6 (to version 6)\n"
    )
    assert ok(home, "migrate").stdout == f"{where}: migrated schema from version 4 to 6\n"
    assert "up to date" in ok(home, "migrate", "--dry-run").stdout


def test_migrate_without_a_store(tmp_home: Path) -> None:
    assert_error(run(tmp_home, "migrate"), NOT_FOUND, "run `bastion init` first")


# -- PostgreSQL ------------------------------------------------------------------------


@pytest.fixture
def database(store_server: Postgres) -> Iterator[str]:
    name = fresh_database(store_server)
    yield name
    drop_database(store_server, name)


def pg_home(base: Path, url: str) -> Path:
    home = base / "home"
    home.mkdir(parents=True)
    (home / "bastion.toml").write_text(f'[store]\nurl = "{url}"\n')
    return home


def test_postgres_home_init_migrate_and_use(
    tmp_path: Path, store_server: Postgres, database: str
) -> None:
    url = store_url(store_server, database)
    shown = url.replace(f":{STORE_PASSWORD}", "")
    home = pg_home(tmp_path, url)
    out = ok(home, "init").stdout
    assert f"created {shown}" in out
    assert not (home / "state.db").exists()
    assert ok(home, "migrate").stdout == f"{shown}: schema version {LATEST_VERSION}, up to date\n"
    assert ok(home, "nodes", "list").stdout.startswith("no nodes have registered")
    assert "ca.initialized" in ok(home, "audit", "list").stdout

    # An older bastion's schema: refused (by every command and by serve) until migrated.
    set_back_to_version_4(PostgresBackend(url))
    for args in (("target", "list"), ("serve", "--listen", f"127.0.0.1:{free_port()}")):
        line = assert_error(run(home, *args), STORE, "run `bastion migrate`")
        assert f"state store {shown} has schema version 4, this bastion needs 6" in line
    assert ok(home, "migrate", "--dry-run").stdout == (
        f"{shown}: schema version 4, would apply 5, 6 (to version 6)\n"
    )
    assert ok(home, "migrate").stdout == f"{shown}: migrated schema from version 4 to 6\n"
    assert ok(home, "target", "list").stdout.startswith("no targets")

    # A newer one: refused everywhere, migrate included.
    PostgresBackend(url).sql("INSERT INTO schema_version (version) VALUES (99)")
    for args in (("target", "list"), ("migrate",)):
        assert_error(run(home, *args), STORE, "has schema version 99, newer than this bastion")


def test_a_second_node_must_bring_the_first_nodes_ca(
    tmp_path: Path, store_server: Postgres, database: str
) -> None:
    url = store_url(store_server, database)
    first = pg_home(tmp_path / "a", url)
    ok(first, "init")
    second = pg_home(tmp_path / "b", url)
    line = assert_error(run(second, "init"), KEY_MATERIAL, "copy keys/ca")
    assert "belongs to CA SHA256:" in line and "has no CA key" in line
    assert not (second / "keys" / "ca").exists()
    shutil.copytree(first / "keys", second / "keys")
    assert "kept    keys/ca" in ok(second, "init").stdout


def test_password_from_the_environment(
    tmp_path: Path, store_server: Postgres, database: str
) -> None:
    home = pg_home(tmp_path, store_url(store_server, database).replace(f":{STORE_PASSWORD}", ""))
    ok(home, "init", env={"PGPASSWORD": STORE_PASSWORD})
    assert ok(home, "grant", "list", env={"PGPASSWORD": STORE_PASSWORD}).stdout


def test_unreachable_or_refusing_database_is_one_clear_line(
    tmp_path: Path, store_server: Postgres, database: str
) -> None:
    port = free_port()
    nobody = pg_home(tmp_path / "x", f"postgresql://u:hunter2@127.0.0.1:{port}/db")
    line = assert_error(run(nobody, "target", "list"), STORE, "can't use state store")
    assert f"postgresql://u@127.0.0.1:{port}/db" in line and "hunter2" not in line
    assert "Connection refused" in line or "connection failed" in line

    wrong = store_url(store_server, database, password="hunter2")
    bad = pg_home(tmp_path / "y", wrong)
    line = assert_error(run(bad, "init"), STORE, "password authentication failed")
    assert "hunter2" not in line
