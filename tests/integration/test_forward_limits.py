"""Limits on `-L` forwards (`server.max_forwards` per SSH connection, `grants.max_forwards`
per grant), against a real `bastion serve`, the real `ssh -L`, a real PostgreSQL 15 and
its clients (psycopg 3, psql), and a plain TCP target.

Each database connection an agent makes through its tunnel is a channel of its own, and
a login of its own on the target. Past a limit the channel open is refused: `ssh` prints
the reason, the client sees its connection closed, the refusal is a `forward.refused`
audit event, and nothing is opened on the target or recorded as a session.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration import pg_helpers as pg
from tests.integration.conftest import (
    EchoServer,
    Server,
    make_home,
    wait_until,
)
from tests.peers import Postgres, Sshd, free_port

PER_CONNECTION = 3
PER_GRANT = 4
OPEN_FAILED = "open failed: administratively prohibited: [bastion] "
SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")
CONNECTION_LIMIT = f"at most {PER_CONNECTION} forwarded connections at once per SSH connection"


def grant_limit(grant: pg.Grant, limit: int = PER_GRANT) -> str:
    return f"at most {limit} forwarded connections at once per grant ({grant.id})"


def limits_config(base: str, per_connection: int, per_grant: int) -> str:
    """`base` (which has a [grants] table) with both limits set."""
    assert "[grants]\n" in base
    text = base.replace("[grants]\n", f"[grants]\nmax_forwards = {per_grant}\n", 1)
    return f"[server]\nmax_forwards = {per_connection}\n\n{text}"


@pytest.fixture(scope="module")
def limited(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A gateway whose PostgreSQL targets allow 3 forwards per connection, 4 per grant."""
    base = tmp_path_factory.mktemp("forward-limits")
    home = pg.make_pg_home(base, postgres, pg.APP_DB)
    toml = home / "bastion.toml"
    toml.write_text(limits_config(toml.read_text(), PER_CONNECTION, PER_GRANT))
    server = Server(home, base)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def open_tunnel(server: Server, grant: pg.Grant, target: str = pg.TARGET) -> pg.Tunnel:
    """`pg.open_tunnel` with ssh's default log level: OpenSSH reports a refused channel at
    INFO ("channel N: open failed: ..."), which the tests' usual LogLevel=ERROR hides."""
    port = free_port()
    ssh = server.spawn(
        target,
        grant.key,
        opts=["-N", "-o", "ExitOnForwardFailure=yes", "-L", f"{port}:{target}:5432"],
        log_level="INFO",
    )

    def ready() -> bool:
        if not ssh.running():
            raise AssertionError(f"ssh -L exited {ssh.proc.returncode}: {ssh.stderr!r}")
        return pg._listening(port)

    wait_until(ready, timeout=15)
    return pg.Tunnel(ssh, port, grant)


def refusals(server: Server, after: int, count: int) -> list[dict[str, Any]]:
    """The `forward.refused` events after `after`, once there are `count` of them."""

    def found() -> list[dict[str, Any]] | None:
        events = server.audit("forward.refused", after=after)
        return events if len(events) >= count else None

    return wait_until(found)  # type: ignore[no-any-return]


def refused_connect(port: int) -> str:
    """A psycopg connection the gateway refuses: the error the client gets."""
    with pytest.raises(psycopg.OperationalError) as caught:
        pg.connect(port, connect_timeout=5)
    return str(caught.value)


def backends(postgres: Postgres, agent: str) -> int:
    """The server's backends the bastion opened for `agent` (named in application_name)."""
    out = postgres.psql(
        "SELECT count(*) FROM pg_stat_activity WHERE position(:'needle' in application_name) > 0",
        variables={"needle": f"(bastion: {agent})"},
    )
    return int(out.strip())


def live_forwards(server: Server, grant: pg.Grant) -> list[dict[str, Any]]:
    return [s for s in pg.forward_sessions(server, grant) if not s["end_reason"]]


# -- per SSH connection ------------------------------------------------------------------


def test_one_connection_carries_at_most_max_forwards_database_connections(
    limited: Server, postgres: Postgres
) -> None:
    grant = pg.issue(limited, agent="limit-one")
    tunnel = open_tunnel(limited, grant)
    seq = limited.audit_seq()
    held = [pg.connect(tunnel.port) for _ in range(PER_CONNECTION)]
    try:
        for conn in held:
            assert conn.execute("select 1").fetchone() == (1,)

        # One more channel opens, for a cancel request only: a login on it is refused
        # (53300) with the reason, which the client shows.
        error = refused_connect(tunnel.port)
        assert f"FATAL:  [bastion] {CONNECTION_LIMIT}; this connection may only carry" in error

        # While that one is open, the next is refused at the channel: the client sees its
        # connection closed, the agent's ssh prints the reason.
        cancel_only = socket.create_connection((pg.LOOPBACK, tunnel.port), timeout=10)
        cancel_only.sendall(SSL_REQUEST)
        assert cancel_only.recv(1) == b"N"  # its channel is open (the relay answered)
        error = refused_connect(tunnel.port)
        assert "server closed the connection unexpectedly" in error, error
        match = tunnel.ssh.wait_stderr(r"channel \d+: open failed: [^\r\n]*")
        assert match.group(0).endswith(OPEN_FAILED + CONNECTION_LIMIT), match.group(0)
        assert tunnel.ssh.running()  # a refused channel doesn't end the tunnel
        cancel_only.close()
        events = refusals(limited, seq, 2)
        assert {e["details"]["reason"] for e in events} == {CONNECTION_LIMIT}
        assert all(e["details"]["grant"] == grant.id for e in events)
        assert all(e["details"]["destination"] == f"{pg.TARGET}:5432" for e in events)
        # The first ones keep working; the refused one never reached the target.
        for conn in held:
            assert conn.execute("select 2").fetchone() == (2,)
        wait_until(lambda: len(live_forwards(limited, grant)) == PER_CONNECTION)
        assert backends(postgres, "limit-one") == PER_CONNECTION
        assert "forward refused: " + grant.id in limited.log()

        # psql at the limit: the same refusal, with its reason.
        psql = pg.psql(tunnel.port, "select 1")
        assert psql.returncode == 2, psql
        assert CONNECTION_LIMIT in psql.stderr, psql.stderr

        # Closing one frees its slot.
        held.pop().close()
        wait_until(lambda: len(live_forwards(limited, grant)) == PER_CONNECTION - 1)
        held.append(pg.connect(tunnel.port))
        assert held[-1].execute("select 3").fetchone() == (3,)
    finally:
        for conn in held:
            conn.close()
        tunnel.stop()


def test_a_burst_of_connections_gets_exactly_max_forwards(
    limited: Server, postgres: Postgres
) -> None:
    """Opened at once, while the first ones are still logging in upstream: forwards being
    opened count too."""
    grant = pg.issue(limited, agent="limit-burst")
    tunnel = open_tunnel(limited, grant)
    try:
        with ThreadPoolExecutor(PER_CONNECTION + 3) as pool:
            tries = [pool.submit(pg.connect, tunnel.port) for _ in range(PER_CONNECTION + 3)]
            wait([*tries])
        opened = [t.result() for t in tries if t.exception() is None]
        failed = [t.exception() for t in tries if t.exception() is not None]
        try:
            assert len(opened) == PER_CONNECTION
            assert len(failed) == 3
            assert all(isinstance(e, psycopg.OperationalError) for e in failed)
            # One got a channel for a cancel only (its login refused with the reason),
            # or more if it had closed before another asked; the rest none.
            told = sum(CONNECTION_LIMIT in str(e) for e in failed)
            assert told >= 1
            assert tunnel.ssh.stderr.count(OPEN_FAILED + CONNECTION_LIMIT) == 3 - told
            assert backends(postgres, "limit-burst") == PER_CONNECTION
        finally:
            for conn in opened:
                conn.close()
    finally:
        tunnel.stop()


# -- per grant, across its SSH connections ------------------------------------------------


def test_a_grants_connections_share_its_budget(limited: Server, postgres: Postgres) -> None:
    grant = pg.issue(limited, agent="limit-grant")
    first = open_tunnel(limited, grant)
    second = open_tunnel(limited, grant)  # a second SSH connection, same certificate
    seq = limited.audit_seq()
    held: list[psycopg.Connection[Any]] = []
    try:
        held += [pg.connect(first.port) for _ in range(PER_CONNECTION)]
        held.append(pg.connect(second.port))  # the grant's fourth

        # The fifth: under the connection's limit, not the grant's.
        assert grant_limit(grant) in refused_connect(second.port)
        [event] = refusals(limited, seq, 1)
        assert event["details"]["reason"] == grant_limit(grant)
        for conn in held:
            assert conn.execute("select 1").fetchone() == (1,)
        assert backends(postgres, "limit-grant") == PER_GRANT

        # Another grant of the same agent has a budget of its own.
        other = pg.issue(limited, agent="limit-grant")
        third = open_tunnel(limited, other)
        with pg.connection(third.port) as conn:
            assert conn.execute("select 2").fetchone() == (2,)
        third.stop()

        # A connection that closes frees its slot for the grant's other connection...
        held.pop(0).close()
        wait_until(lambda: len(live_forwards(limited, grant)) == PER_GRANT - 1)
        held.append(pg.connect(second.port))
        assert held[-1].execute("select 3").fetchone() == (3,)

        # ... and so does an SSH connection that ends, with all its forwards.
        first.stop()
        wait_until(lambda: len(live_forwards(limited, grant)) == 2)
        held.append(pg.connect(second.port))
        assert held[-1].execute("select 4").fetchone() == (4,)
    finally:
        for conn in held:
            with contextlib.suppress(psycopg.Error):
                conn.close()
        first.stop()
        second.stop()


def test_a_query_can_be_cancelled_at_the_limit(limited: Server) -> None:
    """psql's Ctrl-C and a driver's cancel() open a connection of their own: at the limit,
    one more channel carries the CancelRequest."""
    grant = pg.issue(limited, agent="limit-cancel")
    tunnel = open_tunnel(limited, grant)
    held = [pg.connect(tunnel.port) for _ in range(PER_CONNECTION)]
    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(held[0].execute, "select pg_sleep(30)")
            wait_until(
                lambda: held[0].info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE
            )
            time.sleep(0.3)
            started = time.monotonic()
            held[0].cancel()
            with pytest.raises(psycopg.errors.QueryCanceled):
                running.result(timeout=20)
            assert time.monotonic() - started < 10
    finally:
        for conn in held:
            conn.close()
        tunnel.stop()


def test_a_reload_changes_the_limits_for_the_next_forward(
    postgres: Postgres, tmp_path: Path
) -> None:
    home = pg.make_pg_home(tmp_path, postgres, pg.APP_DB)
    toml = home / "bastion.toml"
    original = toml.read_text()
    toml.write_text(limits_config(original, 1, 10))
    server = Server(home, tmp_path)
    server.start()
    grant = pg.issue(server, agent="limit-reload")
    tunnel = open_tunnel(server, grant)
    held: list[psycopg.Connection[Any]] = []
    try:
        held.append(pg.connect(tunnel.port))
        refused_connect(tunnel.port)

        toml.write_text(limits_config(original, 2, 10))
        offset = len(server.log())
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_until(lambda: "server.max_forwards" in server.log()[offset:])

        held.append(pg.connect(tunnel.port))  # the second is allowed now
        assert held[-1].execute("select 1").fetchone() == (1,)
        refused_connect(tunnel.port)
        # Lowered below what is open: the open ones stay, new ones wait for a free slot.
        toml.write_text(limits_config(original, 1, 10))
        offset = len(server.log())
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_until(lambda: "server.max_forwards" in server.log()[offset:])
        for conn in held:
            assert conn.execute("select 2").fetchone() == (2,)
        held.pop().close()
        wait_until(lambda: len(live_forwards(server, grant)) == 1)
        refused_connect(tunnel.port)
    finally:
        for conn in held:
            conn.close()
        tunnel.stop()
        server.stop()


# -- plain TCP forwards ------------------------------------------------------------------


def test_plain_tcp_forwards_count_by_the_same_rule(
    sshd: Sshd,
    target_login_key: Path,
    echo_server: EchoServer,
    tmp_path: Path,
) -> None:
    """A forward to a non-PostgreSQL target holds a TCP connection to it: it counts the
    same, and together with database forwards. (`raw-echo` is an SSH-kind target at a TCP
    echo server, relayed as bytes; `echo-db` a PostgreSQL-kind one, which permits
    forwarding in the grant.)"""
    extra = "\n[server]\nmax_forwards = 2\n"
    home = make_home(tmp_path, sshd, target_login_key, echo_server.port, extra_config=extra)
    server = Server(home, tmp_path)
    server.start()
    grant = server.issue("echo-db", "raw-echo", options=["--ttl", "5m"])
    echo_port, db_port = free_port(), free_port()
    forwards = ["-L", f"{echo_port}:raw-echo:22", "-L", f"{db_port}:echo-db:5432"]
    ssh = server.spawn("echo-db", grant.key, opts=["-N", *forwards], log_level="INFO")
    refused = re.escape(OPEN_FAILED + "at most 2 forwarded connections at once per SSH connection")
    socks: list[socket.socket] = []

    def echoed(sock: socket.socket, data: bytes) -> bool:
        sock.sendall(data)
        return sock.recv(100) == data

    try:
        wait_until(lambda: pg._listening(echo_port) and pg._listening(db_port), timeout=15)
        socks += [socket.create_connection((pg.LOOPBACK, echo_port), timeout=10) for _ in "ab"]
        assert all(echoed(sock, b"ping %d" % i) for i, sock in enumerate(socks))
        third = socket.create_connection((pg.LOOPBACK, echo_port), timeout=10)
        assert third.recv(100) == b""  # closed: its channel was refused
        third.close()
        ssh.wait_stderr(refused)
        assert all(echoed(sock, b"again %d" % i) for i, sock in enumerate(socks))

        # One TCP forward and one database forward fill the same budget.
        socks.pop().close()
        wait_until(lambda: len([s for s in server.sessions(grant) if not s["end_reason"]]) == 1)
        db = socket.create_connection((pg.LOOPBACK, db_port), timeout=10)
        socks.append(db)
        db.sendall(SSL_REQUEST)
        assert db.recv(1) == b"N"  # the PostgreSQL relay answers: its channel is open
        before = ssh.stderr.count("open failed")
        fourth = socket.create_connection((pg.LOOPBACK, echo_port), timeout=10)
        assert fourth.recv(100) == b""
        fourth.close()
        wait_until(lambda: ssh.stderr.count("open failed") == before + 1)
    finally:
        for sock in socks:
            sock.close()
        ssh.stop()
        server.stop()
