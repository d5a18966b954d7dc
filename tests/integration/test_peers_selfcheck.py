"""Self-checks for the real sshd and PostgreSQL peers in tests/peers.py."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
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


def _authorized_client(sshd: Sshd, tmp_path: Path) -> tuple[Path, Path]:
    key = _keypair(tmp_path)
    sshd.add_authorized_key(key.with_suffix(".pub").read_text())
    known_hosts = tmp_path / "known_hosts"
    write_known_hosts(known_hosts, sshd.port, sshd.host_pub)
    return key, known_hosts


def _wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def test_ssh_unprivileged_login_user(sshd: Sshd, tmp_path: Path) -> None:
    assert sshd.login_user == Sshd.UNPRIVILEGED_USER == "bastion-t"
    key, known_hosts = _authorized_client(sshd, tmp_path)

    result = subprocess.run(
        ssh_command(sshd.port, key, sshd.login_user, known_hosts, "id -u; id -g; pwd"),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 0, result.stderr
    uid, gid, cwd = result.stdout.splitlines()
    assert (uid, gid) == ("5001", "5001")
    # The home is in the work dir, reached through its bind mount in sshd's namespace.
    assert cwd.endswith("/home/bastion-t")
    assert sshd.unprivileged_home.stat().st_uid == 5001
    # The user exists only inside sshd's namespace.
    assert "bastion-t" not in Path("/etc/passwd").read_text()


def test_processes_of_login_user_after_client_is_killed(sshd: Sshd, tmp_path: Path) -> None:
    """A non-PTY ``sleep`` is listed while its session runs; report what a client kill leaves.

    sshd does not promise to end a non-PTY session's command when the connection drops
    (nothing signals it; it only loses its stdout), so its survival is reported, not asserted.
    """
    key, known_hosts = _authorized_client(sshd, tmp_path)
    sshd.kill_processes_of_login_user()  # nothing left over from earlier tests
    client = subprocess.Popen(
        ssh_command(sshd.port, key, sshd.login_user, known_hosts, "sleep 30"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def sleeping() -> bool:
            return "sleep 30" in sshd.processes_of_login_user()

        assert _wait_until(sleeping), sshd.processes_of_login_user()
        during = sshd.processes_of_login_user()
        assert any(cmd.startswith("sshd: bastion-t") for cmd in during), during

        client.terminate()
        client.wait(timeout=10)
        _wait_until(lambda: not any(c.startswith("sshd:") for c in sshd.processes_of_login_user()))
        time.sleep(1.0)
        after = sshd.processes_of_login_user()
        print(f"\nlogin user's processes while the session ran: {during}")
        print(f"1s after the ssh client was terminated: {after}")
        # The per-connection sshd process does go away with the connection.
        assert not any(cmd.startswith("sshd:") for cmd in after), after
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        sshd.kill_processes_of_login_user()
    assert _wait_until(lambda: not sshd.processes_of_login_user())


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
