"""`bastion web user add|list|remove`, `bastion web login-link`, and `bastion web`'s refusals.

Serving itself is tested against a real uvicorn in tests/integration/test_web_api.py.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from click.testing import CliRunner, Result

from bastion.cli import cli
from tests.cli.conftest import (
    ALREADY_EXISTS,
    CONFIG,
    INVALID_INPUT,
    NOT_FOUND,
    assert_error,
    audit_events,
    ok,
    ok_json,
    run,
    snapshot,
)

PASSWORD = "correct horse battery"


def run_in(home: Path, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), "--as", "root", *args], input=stdin)


def add(home: Path, name: str, role: str, password: str = PASSWORD) -> Result:
    return run_in(home, "web", "user", "add", name, "--role", role, "--password-stdin",
                  stdin=password + "\n")  # fmt: skip


def web_rows(home: Path, table: str) -> list[sqlite3.Row]:
    with sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(f"SELECT * FROM {table}").fetchall()


def test_add_list_remove(home: Path) -> None:
    result = add(home, "alice", "approver")
    assert result.exit_code == 0, result.output
    assert result.stdout == "added web user alice (approver, a password)\n"
    no_pw = run_in(home, "web", "user", "add", "carol", "--role", "auditor", "--no-password")
    assert no_pw.stdout == "added web user carol (auditor, login links only)\n"
    listed = ok_json(home, "web", "user", "list")
    assert [(u["name"], u["role"], u["password"]) for u in listed] == [
        ("alice", "approver", True),
        ("carol", "auditor", False),
    ]
    table = ok(home, "web", "user", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "ROLE", "PASSWORD", "CREATED", "BY"]
    assert ok(home, "web", "user", "remove", "carol").stdout == "removed web user carol (auditor)\n"
    assert [u["name"] for u in ok_json(home, "web", "user", "list")] == ["alice"]
    actions = [e["action"] for e in audit_events(home) if e["action"].startswith("web.")]
    assert actions == ["web.user_added", "web.user_added", "web.user_removed"]


def test_password_is_stored_as_bcrypt_only(home: Path) -> None:
    add(home, "alice", "admin")
    [row] = web_rows(home, "web_users")
    assert row["password_hash"].startswith("$2b$12$")
    assert PASSWORD not in (home / "state.db").read_bytes().decode("latin-1")


def test_bad_input_writes_nothing(home: Path) -> None:
    before = snapshot(home)
    assert_error(add(home, "alice", "admin", "short"), INVALID_INPUT, "at least 10 characters")
    assert_error(add(home, "al/ice", "admin"), INVALID_INPUT, "invalid user name 'al/ice'")
    no_tty = run_in(home, "web", "user", "add", "alice", "--role", "admin", stdin="")
    assert_error(no_tty, INVALID_INPUT, "use --password-stdin")
    both = run_in(
        home, "web", "user", "add", "a", "--role", "admin", "--password-stdin", "--no-password"
    )
    assert_error(both, INVALID_INPUT, "not both")
    bad_role = run_in(home, "web", "user", "add", "alice", "--role", "root", "--no-password")
    assert bad_role.exit_code == 2 and "'root' is not one of" in bad_role.stderr
    assert snapshot(home) == before
    assert web_rows(home, "web_users") == []


def test_duplicate_and_unknown(home: Path) -> None:
    add(home, "alice", "admin")
    assert_error(add(home, "alice", "auditor"), ALREADY_EXISTS, "web user alice already exists")
    assert_error(run(home, "web", "user", "remove", "bob"), NOT_FOUND, "unknown web user 'bob'")
    assert_error(run(home, "web", "login-link", "bob"), NOT_FOUND, "unknown web user 'bob'")


def test_login_link_is_printed_once_and_stored_as_a_hash(home: Path) -> None:
    run_in(home, "web", "user", "add", "carol", "--role", "auditor", "--no-password")
    result = run(home, "web", "login-link", "carol", "--ttl", "5m")
    assert result.exit_code == 0, result.output
    url = result.stdout.strip()
    assert url.startswith("http://127.0.0.1:8443/link/")
    token = url.rsplit("/", 1)[1]
    assert "one-time sign-in link for carol, valid until" in result.stderr
    [row] = web_rows(home, "web_tokens")
    assert row["kind"] == "link"
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert token.encode() not in (home / "state.db").read_bytes()
    assert token not in str(audit_events(home))
    based = run(home, "web", "login-link", "carol", "--base-url", "https://bastion.example/")
    assert based.stdout.startswith("https://bastion.example/link/")


def test_login_link_ttl_limits(home: Path) -> None:
    run_in(home, "web", "user", "add", "carol", "--role", "auditor", "--no-password")
    assert_error(
        run(home, "web", "login-link", "carol", "--ttl", "2d"), INVALID_INPUT, "between 1m and 24h"
    )
    assert web_rows(home, "web_tokens") == []


def test_serving_off_loopback_needs_tls(home: Path) -> None:
    result = run(home, "web", "--listen", "0.0.0.0:8443")
    assert_error(result, CONFIG, "--listen: 0.0.0.0 is not a loopback address")


def test_tls_needs_both_files(home: Path, tmp_path: Path) -> None:
    result = run(home, "web", "--tls-cert", str(tmp_path / "c.pem"))
    assert_error(result, INVALID_INPUT, "give both the certificate and the key")
    result = run(home, "web", "--tls-cert", "c.pem", "--tls-key", str(tmp_path / "k.pem"))
    assert_error(result, CONFIG, "no such file")


def test_serve_options_belong_to_web_alone(home: Path) -> None:
    result = run(home, "web", "--listen", "127.0.0.1:9", "user", "list")
    assert_error(result, INVALID_INPUT, "go with `bastion web` alone")


def test_uninitialized_home(tmp_home: Path) -> None:
    assert_error(run(tmp_home, "web", "user", "list"), NOT_FOUND, "run `bastion init` first")
    assert_error(run(tmp_home, "web"), INVALID_INPUT, "run `bastion init` first")
