"""Self-checks for the real sshd and PostgreSQL peers in tests/peers.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.peers import Postgres, Sshd, ssh_command, write_known_hosts


def _keypair(directory: Path) -> Path:
    key = directory / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def test_ssh_root_login_runs_command(sshd: Sshd, tmp_path: Path) -> None:
    key = _keypair(tmp_path)
    sshd.add_authorized_key(key.with_suffix(".pub").read_text())
    known_hosts = tmp_path / "known_hosts"
    write_known_hosts(known_hosts, sshd.port, sshd.host_pub)

    result = subprocess.run(
        ssh_command(sshd.port, key, "root", known_hosts, "echo hello; exit 3"),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.stdout == "hello\n", result.stderr
    assert result.returncode == 3


def test_ssh_unknown_host_key_is_refused(sshd: Sshd, tmp_path: Path) -> None:
    key = _keypair(tmp_path)
    sshd.add_authorized_key(key.with_suffix(".pub").read_text())
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")

    result = subprocess.run(
        ssh_command(sshd.port, key, "root", known_hosts, "true"),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr


def test_postgres_scram_login(postgres: Postgres) -> None:
    with psycopg.connect(
        host="127.0.0.1", port=postgres.port, user="app", password="app-secret", dbname="appdb"
    ) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            "app",
            "appdb",
        )


def test_postgres_wrong_password_fails(postgres: Postgres) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host="127.0.0.1",
            port=postgres.port,
            user="app",
            password="wrong",
            dbname="appdb",
            connect_timeout=10,
        )
    assert (
        postgres.psql(
            "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'app'"
        ).strip()
        == "t"
    )
