"""Shared fixtures: real sshd and PostgreSQL peers (session-scoped), fresh bastion homes."""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import PG_BIN, SSHD_BIN, Postgres, Sshd

pytest_plugins = ["tests.store_backends"]  # the `backend` fixture: SQLite and PostgreSQL


def _missing(*tools: str | Path) -> list[str]:
    return [str(t) for t in tools if shutil.which(str(t)) is None]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """An OpenSSH sshd on 127.0.0.1 accepting root logins by key; no keys authorized yet.

    Tests authorize their own keys with ``sshd.add_authorized_key(line)``.
    """
    if missing := _missing(SSHD_BIN, "unshare", "ssh-keygen", "ssh"):
        pytest.skip(f"sshd peer needs {', '.join(missing)} (apt-get install openssh-server)")
    if os.geteuid() != 0:
        pytest.skip("sshd peer needs root (private mount namespace, root login)")
    with Sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """PostgreSQL 15 on 127.0.0.1 (SCRAM) with role ``app``/``app-secret`` owning ``appdb``."""
    if missing := _missing(PG_BIN / "initdb", PG_BIN / "postgres", PG_BIN / "psql"):
        pytest.skip(f"postgres peer needs {', '.join(missing)}")
    try:
        pwd.getpwnam(Postgres.OS_USER)
    except KeyError:
        pytest.skip(f"postgres peer needs the {Postgres.OS_USER!r} OS user")
    with Postgres() as server:
        server.create_role("app", "app-secret")
        server.create_database("appdb", owner="app")
        yield server


@pytest.fixture
def tmp_home(tmp_path: Path) -> Path:
    """A fresh, empty directory to use as a bastion home."""
    home = tmp_path / "bastion-home"
    home.mkdir()
    return home
