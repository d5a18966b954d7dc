"""Forced closes: a grant's end, a revocation, a kill from the CLI, a bastion shutdown or crash.

What the agent must see each time: one `[bastion] ...` line saying why (on stderr, or on
the terminal with a PTY), then exit status 255, promptly. What the operator must see:
the session record ended with the reason, and nothing left running on the target.
"""

from __future__ import annotations

import secrets
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.integration.conftest import (
    Grant,
    PtySsh,
    Server,
    Spawned,
    kill_target_processes,
    target_processes,
    unique_sleep,
    wait_until,
)
from tests.peers import Sshd, free_port

GRANT_TTL = "4s"
LATE_AT_MOST = 1.5  # seconds from valid_before to the client's exit


def expired_line(grant: Grant) -> str:
    stamp = datetime.fromtimestamp(grant.valid_before, UTC).strftime("%H:%M:%SZ")
    return (
        f"[bastion] grant {grant.id} (task {grant.task}) expired at {stamp} - session closed;"
        " ask a human for a new grant to continue"
    )


# -- expiry: several sessions of one grant, all open at its end ------------------------------


@dataclass
class Expiry:
    grant: Grant
    sleep: str
    sleep_client: Spawned
    yes_token: str
    yes_client: Spawned
    pty_sleep: str
    pty_client: PtySsh
    tunnel: Spawned
    tunnel_socket_closed_at: float | None
    records: list[dict[str, Any]]
    target_left: list[str]  # the sessions' processes still on the target a second later
    bystander_running: bool  # another grant's session, open through the same expiry


def _closed_at(sock: socket.socket, timeout: float) -> float | None:
    """When the peer closed `sock` (recv returned nothing or failed), or None."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except OSError:
        pass
    return time.time()


@pytest.fixture(scope="module")
def expiry(gateway: Server, sshd: Sshd) -> Iterator[Expiry]:
    """One grant with a short TTL, and at its end: a `sleep 600`, a streaming `yes`, a shell on
    a PTY running `sleep 600`, and a `-L` tunnel with an open connection."""
    # echo-db permits forwarding; the tunnel goes to raw-echo, relayed as plain bytes.
    grant = gateway.issue("prod-web", "echo-db", "raw-echo", options=["--ttl", GRANT_TTL])
    other = gateway.issue("prod-web", options=["--ttl", "5m"])
    bystander_sleep = unique_sleep()
    bystander = gateway.spawn("prod-web", other.key, bystander_sleep)
    sleep = unique_sleep()
    pty_sleep = unique_sleep()
    yes_token = f"expiry-{secrets.token_hex(4)}"
    sleep_client = gateway.spawn("prod-web", grant.key, sleep)
    yes_client = gateway.spawn("prod-web", grant.key, f"yes {yes_token}", keep_stdout=False)
    pty_client = gateway.spawn_pty("prod-web", grant.key)
    local_port = free_port()
    tunnel = gateway.spawn(
        "prod-web",
        grant.key,
        opts=["-N", "-o", "ExitOnForwardFailure=yes", "-L", f"{local_port}:raw-echo:22"],
    )
    try:
        pty_client.expect(r"\$ $")
        pty_client.type(f"{pty_sleep}\r")
        sock = wait_until(lambda: _connect(local_port))
        sock.sendall(b"ping")
        sock.settimeout(5)
        assert sock.recv(4) == b"ping"
        for needle in (sleep, pty_sleep, yes_token, bystander_sleep):
            wait_until(lambda n=needle: target_processes(sshd, n))  # type: ignore[misc]
        assert yes_client.stdout_size > 0
        assert time.time() < grant.valid_before - 0.5, "setup took too long for the TTL"

        closed_at = _closed_at(sock, timeout=grant.valid_before - time.time() + 5)
        sock.close()
        for client in (sleep_client, yes_client, pty_client, tunnel):
            client.wait(timeout=grant.valid_before - time.time() + 5)
        # "after a second": the target had that long to end the sessions' processes.
        last_exit = max(sleep_client.exited_at or 0.0, pty_client.exited_at or 0.0)
        time.sleep(max(0.0, last_exit + 1.0 - time.time()))
        left = [
            cmd
            for needle in (sleep, pty_sleep, yes_token)
            for cmd in target_processes(sshd, needle)
        ]
        yield Expiry(
            grant=grant,
            sleep=sleep,
            sleep_client=sleep_client,
            yes_token=yes_token,
            yes_client=yes_client,
            pty_sleep=pty_sleep,
            pty_client=pty_client,
            tunnel=tunnel,
            tunnel_socket_closed_at=closed_at,
            records=gateway.ended_sessions(grant, count=4),
            target_left=left,
            bystander_running=bystander.proc.poll() is None,
        )
    finally:
        for client in (sleep_client, yes_client, tunnel, bystander):
            client.stop()
        pty_client.stop()
        for needle in (sleep, pty_sleep, yes_token, bystander_sleep):
            kill_target_processes(sshd, needle)


def _connect(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return None


def _assert_on_time(exited_at: float | None, valid_before: float) -> None:
    assert exited_at is not None
    assert valid_before - 0.05 <= exited_at <= valid_before + LATE_AT_MOST, (
        f"exited {exited_at - valid_before:+.3f}s from valid_before"
    )


def test_expiry_closes_a_running_command(expiry: Expiry) -> None:
    client = expiry.sleep_client
    assert client.proc.returncode == 255
    _assert_on_time(client.exited_at, expiry.grant.valid_before)
    assert client.stdout == ""
    assert client.stderr.strip() == expired_line(expiry.grant)


def test_expiry_closes_a_streaming_command(expiry: Expiry) -> None:
    client = expiry.yes_client
    assert client.proc.returncode == 255
    _assert_on_time(client.exited_at, expiry.grant.valid_before)
    assert client.stdout_size > 1024 * 1024  # it was streaming all along
    assert client.stderr.strip() == expired_line(expiry.grant)


def test_expiry_notice_reaches_the_terminal(expiry: Expiry) -> None:
    client = expiry.pty_client
    assert client.returncode == 255
    _assert_on_time(client.exited_at, expiry.grant.valid_before)
    # On a terminal the notice starts on a line of its own, and ends the session's output.
    assert f"\r\n{expired_line(expiry.grant)}\r\n" in client.output
    assert client.output.rstrip().endswith(expired_line(expiry.grant))


def test_expiry_closes_forwards(expiry: Expiry) -> None:
    _assert_on_time(expiry.tunnel_socket_closed_at, expiry.grant.valid_before)
    assert expiry.tunnel.proc.returncode == 255
    _assert_on_time(expiry.tunnel.exited_at, expiry.grant.valid_before)
    # A `-N` client has no session channel for the notice; the disconnect message says why.
    reason = expired_line(expiry.grant).removeprefix("[bastion] ")
    assert f": bastion: {reason}" in expiry.tunnel.stderr


def test_expiry_is_recorded(expiry: Expiry, gateway: Server) -> None:
    records = expiry.records
    assert sorted(r["kind"] for r in records) == ["exec", "exec", "forward", "shell"]
    assert {r["end_reason"] for r in records} == {"expired"}
    for record in records:
        assert record["detail"] == expired_line(expiry.grant).removeprefix("[bastion] ")
        ended = datetime.fromisoformat(record["ended_at"]).timestamp()
        assert 0 <= ended - expiry.grant.valid_before <= LATE_AT_MOST
        if record["kind"] != "forward":
            assert record["exit_status"] == 255
    ended_events = [
        e for e in gateway.audit("session.ended") if e["details"]["grant"] == expiry.grant.id
    ]
    assert sorted(e["details"]["session"] for e in ended_events) == sorted(r["id"] for r in records)
    assert {e["details"]["reason"] for e in ended_events} == {"expired"}


def test_expiry_leaves_nothing_running_on_the_target(expiry: Expiry) -> None:
    assert expiry.target_left == []


def test_expiry_leaves_other_grants_sessions_running(expiry: Expiry) -> None:
    assert expiry.bystander_running


def test_new_connection_after_expiry_is_refused(expiry: Expiry, gateway: Server) -> None:
    result = gateway.ssh("prod-web", expiry.grant.key, "true")
    assert result.returncode == 255
    assert "Permission denied (publickey)." in result.stderr


# -- revocation, kill ----------------------------------------------------------------------


def test_revocation_closes_live_sessions_within_a_second(gateway: Server, sshd: Sshd) -> None:
    grant = gateway.issue("prod-web", task="rev-1")
    sleep, pty_sleep = unique_sleep(), unique_sleep()
    command = gateway.spawn("prod-web", grant.key, sleep)
    shell = gateway.spawn_pty("prod-web", grant.key)
    shell.expect(r"\$ $")
    shell.type(f"{pty_sleep}\r")
    wait_until(lambda: target_processes(sshd, sleep) and target_processes(sshd, pty_sleep))

    revoked = gateway.run_cli("grant", "revoke", grant.id, "--reason", "incident", actor="alice")

    assert revoked.returncode == 0, revoked.stderr
    assert command.wait(5) == 255
    assert shell.wait(5) == 255
    [event] = [e for e in gateway.audit("grant.revoked") if e["details"]["grant"] == grant.id]
    revoked_at = datetime.fromisoformat(event["at"]).timestamp()
    for exited_at in (command.exited_at, shell.exited_at):
        assert exited_at is not None
        assert 0 < exited_at - revoked_at <= 1.0, f"{exited_at - revoked_at:.3f}s"
    line = f"[bastion] grant {grant.id} (task rev-1) revoked by alice: incident - session closed;"
    line += " ask a human for a new grant to continue"
    assert command.stderr.strip() == line
    assert f"\r\n{line}\r\n" in shell.output
    records = gateway.ended_sessions(grant, count=2)
    assert {r["end_reason"] for r in records} == {"revoked"}
    assert {r["exit_status"] for r in records} == {255}
    last_exit = max(command.exited_at or 0.0, shell.exited_at or 0.0)
    time.sleep(max(0.0, last_exit + 1.0 - time.time()))
    assert target_processes(sshd, sleep) == []
    assert target_processes(sshd, pty_sleep) == []


def test_sessions_kill_from_the_cli(gateway: Server, sshd: Sshd) -> None:
    grant = gateway.issue("prod-web")
    sleep = unique_sleep()
    command = gateway.spawn("prod-web", grant.key, sleep)
    wait_until(lambda: target_processes(sshd, sleep))
    session = gateway.active_session(grant)
    listed = gateway.run_cli("sessions", "list", "--active")
    assert session["id"] in listed.stdout

    killed = gateway.run_cli("sessions", "kill", session["id"], "--reason", "x", actor="alice")

    assert killed.returncode == 0, killed.stderr
    first, second = killed.stdout.splitlines()
    assert first.startswith(f"kill requested for session {session['id']} (bot on prod-web): ")
    assert first.endswith(f"with its one session ({session['id']} exec)")
    assert second.startswith(f"grant {grant.id} stays valid until ")
    assert command.wait(5) == 255
    assert command.stderr.strip() == (
        f"[bastion] session {session['id']} killed by alice: x - connection closed"
    )
    [record] = gateway.ended_sessions(grant)
    assert (record["end_reason"], record["exit_status"]) == ("killed", 255)
    wait_until(lambda: not target_processes(sshd, sleep), timeout=1.0)
    # The grant itself is untouched: the agent may connect again.
    again = gateway.ssh("prod-web", grant.key, "echo again")
    assert (again.returncode, again.stdout) == (0, "again\n"), again.stderr
    # Killing an ended session is an error, not a silent no-op.
    twice = gateway.run_cli("sessions", "kill", session["id"])
    assert twice.returncode == 4
    assert "already ended" in twice.stderr


# -- the bastion going away ----------------------------------------------------------------


def test_graceful_shutdown_ends_live_sessions(make_gateway: Any, sshd: Sshd) -> None:
    server: Server = make_gateway()
    grant = server.issue("prod-web")
    sleep, pty_sleep = unique_sleep(), unique_sleep()
    command = server.spawn("prod-web", grant.key, sleep)
    shell = server.spawn_pty("prod-web", grant.key)
    shell.expect(r"\$ $")
    shell.type(f"{pty_sleep}\r")
    wait_until(lambda: target_processes(sshd, sleep) and target_processes(sshd, pty_sleep))

    stopping = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - stopping < 3

    line = "[bastion] the bastion is shutting down - session closed"
    assert command.wait(5) == 255
    assert command.stderr.strip() == line
    assert shell.wait(5) == 255
    assert f"\r\n{line}\r\n" in shell.output
    records = server.ended_sessions(grant, count=2)
    assert {r["end_reason"] for r in records} == {"bastion-shutdown"}
    assert server.cli("sessions", "list", "--active") == "no active sessions\n"
    wait_until(
        lambda: not target_processes(sshd, sleep) and not target_processes(sshd, pty_sleep),
        timeout=2,
    )


def test_restart_after_a_crash_shows_no_session_as_active(make_gateway: Any, sshd: Sshd) -> None:
    server: Server = make_gateway()
    grant = server.issue("prod-web")
    sleep = unique_sleep()
    command = server.spawn("prod-web", grant.key, sleep)
    try:
        wait_until(lambda: target_processes(sshd, sleep))
        session = server.active_session(grant)

        server.stop(signal.SIGKILL)

        assert command.wait(5) == 255
        # Nobody closed the record: until a gateway starts again, it still looks live.
        assert server.sessions(grant)[0]["end_reason"] is None
        server.start()
        assert server.cli("sessions", "list", "--active") == "no active sessions\n"
        [record] = server.sessions(grant)
        assert record["id"] == session["id"]
        assert record["end_reason"] == "bastion-crash"
        assert record["ended_at"] is not None
        [recovered] = server.audit("sessions.recovered")
        assert recovered["details"]["sessions"] == [session["id"]]
        # And it serves again, on the same address and host key.
        again = server.ssh("prod-web", grant.key, "echo back")
        assert (again.returncode, again.stdout) == (0, "back\n"), again.stderr
    finally:
        kill_target_processes(sshd, sleep)
