"""Helpers for CLI tests: `bastion` run in-process (click's CliRunner) on a temp home.

`run()` invokes the real command line with `--home`; `assert_error()` checks the shape
every user-facing failure must have; `snapshot()` captures what a failed command must
leave untouched (store rows, the serial counter, files in the home and key folders).
"""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bastion.cli import cli

# Exit codes of the error classes in bastion.errors, as users see them.
INVALID_INPUT, NOT_FOUND, ALREADY_EXISTS, KEY_MATERIAL, CONFIG, STORE = 2, 3, 4, 5, 6, 7


@pytest.fixture(autouse=True)
def _no_bastion_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own BASTION_HOME or passphrase must not leak into a test."""
    monkeypatch.delenv("BASTION_HOME", raising=False)
    monkeypatch.delenv("BASTION_CA_PASSPHRASE", raising=False)


def run(home: Path, *args: str, env: Mapping[str, str | None] | None = None) -> Result:
    """`bastion --home HOME ARGS...`, in-process."""
    return CliRunner().invoke(cli, ["--home", str(home), *args], env=env)


def ok(home: Path, *args: str, env: Mapping[str, str | None] | None = None) -> Result:
    result = run(home, *args, env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stderr == ""
    return result


def ok_json(home: Path, *args: str, env: Mapping[str, str | None] | None = None) -> Any:
    return json.loads(ok(home, *args, "--json", env=env).stdout)


def assert_error(result: Result, exit_code: int, fragment: str) -> str:
    """A failure: this exit code, nothing on stdout, one `bastion: error:` line on stderr."""
    assert result.exit_code == exit_code, (result.output, result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bastion: error: "), lines[0]
    assert fragment in lines[0]
    return lines[0]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def make_key(directory: Path, name: str = "id_ed25519", passphrase: str = "") -> Path:
    """A real OpenSSH Ed25519 key pair made by ssh-keygen; returns the private key path."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", name, "-f", str(key)],
        check=True,
    )
    return key


def pub(key: Path) -> Path:
    return key.with_name(key.name + ".pub")


def cert(key: Path) -> Path:
    return key.with_name(key.name + "-cert.pub")


def add_ssh_target(home: Path, name: str, *extra: str) -> None:
    keys = home.parent / "target-keys"
    identity = keys / f"{name}-login"
    if not identity.exists():
        make_key(keys, f"{name}-login")
        make_key(keys, f"{name}-host")
    ok(
        home,
        *("target", "add-ssh", name, "--host", "127.0.0.1", "--port", "2201"),
        *("--user", "deploy", "--identity", str(identity)),
        *("--host-key", str(pub(keys / f"{name}-host")), "--no-check", *extra),
    )


def add_postgres_target(home: Path, name: str, password: str = "app-s3cret") -> None:
    password_file = home.parent / f"{name}.password"
    password_file.write_text(password + "\n")
    ok(
        home,
        *("target", "add-postgres", name, "--host", "127.0.0.1", "--port", "5432"),
        *("--database", "appdb", "--user", "app", "--password-file", str(password_file)),
        "--no-check",
    )


@pytest.fixture
def home(tmp_home: Path) -> Path:
    """An initialized bastion home (unencrypted CA)."""
    ok(tmp_home, "init")
    return tmp_home


@pytest.fixture
def web(home: Path) -> str:
    """An SSH target `prod-web` in `home`."""
    add_ssh_target(home, "prod-web")
    return "prod-web"


@pytest.fixture
def db(home: Path) -> str:
    """A PostgreSQL target `prod-db` in `home`."""
    add_postgres_target(home, "prod-db")
    return "prod-db"


@pytest.fixture
def agent_key(tmp_path: Path) -> Path:
    """The agent's own key pair (private key path; the .pub is beside it)."""
    return make_key(tmp_path / "agent")


def audit_events(home: Path) -> list[dict[str, Any]]:
    """The stored audit events, read straight from the database (not through bastion)."""
    with sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM audit_events ORDER BY seq").fetchall()
    return [{**dict(r), "details": json.loads(r["details"])} for r in rows]


@dataclass(frozen=True)
class Snapshot:
    rows: dict[str, int]
    serial: int
    files: dict[str, bytes | None]  # relative path -> content (None: a directory)


_WATCHED_TABLES = (
    "audit_events",
    "grants",
    "grant_targets",
    "certificates",
    "revocations",
    "targets",
    "target_secrets",
)


def snapshot(home: Path, *dirs: Path) -> Snapshot:
    """Store rows and counter, and every file in the home (but the database) and in `dirs`."""
    with sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True) as conn:
        rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in _WATCHED_TABLES}
        serial = conn.execute("SELECT value FROM counters WHERE name = 'ca_serial'").fetchone()[0]
    files: dict[str, bytes | None] = {}
    for root in (home, *dirs):
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            if path.parent == home and path.name.startswith("state.db"):
                continue
            files[str(path)] = None if path.is_dir() else path.read_bytes()
    return Snapshot(rows=rows, serial=serial, files=files)
