"""`bastion sessions kill` closes the whole SSH connection that carried the session.

A human who kills a session means "stop this agent's access through that connection now":
with an OpenSSH ControlMaster, ending one channel would leave the master free to open a
new session at once. So the kill ends every channel on the connection (a command, a PTY
shell, a PostgreSQL session over a `-L` forward), each client told why, and then the
connection; every session record ends `killed`. Without `--revoke` the grant stays valid
(the agent can log in again with its certificate, as the README says); with `--revoke` it
can't.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration import pg_helpers as pg
from tests.integration.conftest import (
    Grant,
    PtySsh,
    Server,
    Spawned,
    add_ssh_target,
    target_processes,
    unique_sleep,
    wait_until,
)
from tests.peers import Postgres, Sshd, free_port

TARGET = "prod-web"


@pytest.fixture(scope="module")
def gateway(
    postgres: Postgres,
    sshd: Sshd,
    target_login_key: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """A gateway with the sshd target and the real PostgreSQL target `prod-db`."""
    base = tmp_path_factory.mktemp("kill-gateway")
    home = pg.make_pg_home(base, postgres, "unused_alt_db")
    add_ssh_target(home, TARGET, sshd, target_login_key)
    server = Server(home, base)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def control_dir() -> Iterator[Path]:
    """A short directory for the ControlPath socket (a unix socket path has ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="bastion-kill-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Master:
    """`ssh -M -S PATH -N -L PORT:prod-db:5432 prod-web@bastion`: the connection that the
    mux clients (`ssh -S PATH ...`) share."""

    ssh: Spawned
    path: Path
    pg_port: int

    @property
    def mux(self) -> list[str]:
        return ["-S", str(self.path), "-o", "ControlMaster=no"]


def start_master(server: Server, grant: Grant, control_dir: Path) -> Master:
    path = control_dir / "cm"
    port = free_port()
    forward = ["-o", "ExitOnForwardFailure=yes", "-L", f"{port}:{pg.TARGET}:5432"]
    ssh = server.spawn(
        TARGET,
        grant.key,
        opts=["-M", "-S", str(path), "-N", *forward],
        log_level="INFO",  # so it prints the disconnect's reason
    )

    def ready() -> bool:
        if not ssh.running():
            raise AssertionError(f"ssh -M exited {ssh.proc.returncode}: {ssh.stderr!r}")
        return path.exists() and pg._listening(port)

    wait_until(ready, timeout=15)
    return Master(ssh, path, port)


def check_master(server: Server, grant: Grant, master: Master) -> subprocess.CompletedProcess[str]:
    return server.ssh(TARGET, grant.key, opts=[*master.mux, "-O", "check"])


def live_sessions(server: Server, grant: Grant, count: int) -> list[dict[str, object]]:
    def live() -> list[dict[str, object]] | None:
        found = [s for s in server.sessions(grant) if s["end_reason"] is None]
        return found if len(found) >= count else None

    return wait_until(live, timeout=15)  # type: ignore[no-any-return]


def test_kill_closes_every_channel_of_a_controlmaster_connection(
    gateway: Server, sshd: Sshd, postgres: Postgres, control_dir: Path
) -> None:
    grant = gateway.issue(TARGET, pg.TARGET)
    master = start_master(gateway, grant, control_dir)
    sleep, pty_sleep = unique_sleep(), unique_sleep()
    needle = f"kill_{grant.id.replace('-', '_')}"
    command = Spawned(
        gateway.ssh_argv(TARGET, grant.key, sleep, opts=master.mux), stdin=subprocess.PIPE
    )
    shell = PtySsh(gateway.ssh_argv(TARGET, grant.key, opts=["-tt", *master.mux]))
    shell.expect(r"\$ $")
    shell.type(f"{pty_sleep}\r")
    psql = pg.spawn_psql(master.pg_port, f"SELECT pg_sleep(600) AS {needle}")
    wait_until(lambda: target_processes(sshd, sleep) and target_processes(sshd, pty_sleep))
    wait_until(lambda: pg.active_backends(postgres, needle), timeout=15)
    live = live_sessions(gateway, grant, 3)
    assert sorted(s["kind"] for s in live) == ["exec", "forward", "shell"]
    assert len({s["client"] for s in live}) == 1, live  # one connection carries all three
    [exec_session] = [s for s in live if s["kind"] == "exec"]
    ids = sorted(str(s["id"]) for s in live)

    killed = gateway.run_cli(
        "sessions", "kill", str(exec_session["id"]), "--reason", "stop now", actor="alice"
    )

    assert killed.returncode == 0, killed.stderr
    first, second = killed.stdout.splitlines()
    assert f"kill requested for session {exec_session['id']} (bot on prod-web)" in first
    assert "with all 3 of its sessions" in first
    assert all(sid in first for sid in ids), first
    assert second.startswith(f"grant {grant.id} stays valid until ")
    assert "the agent can log in again with its certificate" in second

    message = f"session {exec_session['id']} killed by alice: stop now - connection closed"
    line = f"[bastion] {message}"
    # Each client is told why.
    assert command.wait(5) == 255
    assert command.stderr.strip() == line
    assert shell.wait(5) == 255
    assert f"\r\n{line}\r\n" in shell.output
    assert psql.wait(5) != 0
    assert f"FATAL:  {line}" in psql.stderr, psql.stderr
    # The master itself is gone, with the reason, and nothing opens through it any more.
    assert master.ssh.wait(5) == 255
    assert f"bastion: {message}" in master.ssh.stderr, master.ssh.stderr
    check = check_master(gateway, grant, master)
    assert check.returncode == 255, check.stderr
    assert not master.path.exists()
    # The records: every session of the connection ended `killed`, with the reason.
    records = gateway.ended_sessions(grant, count=3)
    assert sorted(r["id"] for r in records) == ids
    # (a PostgreSQL session's detail is its FATAL message, with the `[bastion] ` prefix)
    assert {(r["end_reason"], r["detail"].removeprefix("[bastion] ")) for r in records} == {
        ("killed", message)
    }
    assert {r["exit_status"] for r in records if r["kind"] != "forward"} == {255}
    [done] = [e for e in gateway.audit("connection.killed") if e["details"]["session"] in ids]
    assert (done["details"]["by"], done["details"]["reason"]) == ("alice", "stop now")
    assert done["details"]["sessions"] == ids
    # Nothing left running on either target.
    wait_until(lambda: not target_processes(sshd, sleep), timeout=2)
    wait_until(lambda: not target_processes(sshd, pty_sleep), timeout=2)
    wait_until(lambda: not pg.active_backends(postgres, needle), timeout=5)

    # Without --revoke the grant is untouched: a fresh login with the same certificate works
    # (the README says so, and so did the kill's output).
    again = gateway.ssh(TARGET, grant.key, "echo again")
    assert (again.returncode, again.stdout) == (0, "again\n"), again.stderr


def test_kill_with_revoke_also_refuses_the_certificate(
    gateway: Server, sshd: Sshd, control_dir: Path
) -> None:
    grant = gateway.issue(TARGET, pg.TARGET)
    master = start_master(gateway, grant, control_dir)
    sleep, other_sleep = unique_sleep(), unique_sleep()
    command = Spawned(
        gateway.ssh_argv(TARGET, grant.key, sleep, opts=master.mux), stdin=subprocess.PIPE
    )
    other = gateway.spawn(TARGET, grant.key, other_sleep)  # a connection of its own
    wait_until(lambda: target_processes(sshd, sleep) and target_processes(sshd, other_sleep))
    live = live_sessions(gateway, grant, 2)
    [killed_session] = [s for s in live if s["command"] == sleep]

    killed = gateway.run_cli(
        "sessions", "kill", str(killed_session["id"]), "--revoke", "--reason", "incident",
        actor="alice",
    )  # fmt: skip

    assert killed.returncode == 0, killed.stderr
    assert killed.stdout.splitlines()[1] == (
        f"grant {grant.id} revoked: its certificate logs in no more;"
        " its 1 other open session(s) close too"
    )
    assert command.wait(5) == 255
    assert command.stderr.strip() == (
        f"[bastion] session {killed_session['id']} killed by alice: incident - connection"
        f" closed; grant {grant.id} revoked; ask a human for a new grant to continue"
    )
    assert master.ssh.wait(5) == 255
    assert check_master(gateway, grant, master).returncode == 255
    # The grant's other connection closes as a revocation.
    assert other.wait(5) == 255
    assert f"grant {grant.id} (task {grant.task}) revoked by alice: incident" in other.stderr
    records = {r["command"]: r for r in gateway.ended_sessions(grant, count=2)}
    assert records[sleep]["end_reason"] == "killed"
    assert records[other_sleep]["end_reason"] == "revoked"
    # And the certificate logs in no more.
    again = gateway.ssh(TARGET, grant.key, "echo again")
    assert again.returncode == 255
    assert re.search(r"Permission denied", again.stderr), again.stderr
    refused = [e["details"]["reason"] for e in gateway.audit("login.refused")]
    assert f"grant {grant.id} is revoked" in refused, refused
