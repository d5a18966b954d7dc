"""A shared PostgreSQL store that stops answering must not stop the gateway's clocks.

The store sits behind a TCP hop the test can freeze: connections stay open, bytes stop
moving both ways, as in a network partition or a database host that hangs. Nothing
errors; a query just never returns. Expiry is the bastion's promise, so while the store
is frozen a session must still end at its grant's `valid_before` with the usual notice,
and sessions on other grants keep relaying. Once the store answers again, what the
gateway could not write meanwhile (the session's end) reaches it.
"""

from __future__ import annotations

import secrets
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bastion.transport.gateway import GUARD_SLACK
from tests.integration.conftest import (
    EchoServer,
    Grant,
    Server,
    Spawned,
    keygen,
    make_home,
    unique_sleep,
    wait_until,
)
from tests.peers import LOOPBACK, Postgres, Sshd
from tests.store_backends import STORE_PASSWORD, STORE_ROLE, drop_database, fresh_database

LATE_AT_MOST = 1.5  # seconds from valid_before to the client's exit, as with a live store


class FreezableHop:
    """A TCP relay on loopback to `port` whose traffic the test can stop and restart.

    Frozen, it keeps every connection open and moves no byte in either direction: the
    bastion's queries hang without an error, as behind a partitioned network.
    """

    def __init__(self, port: int) -> None:
        self._upstream = port
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        self._moving = threading.Event()
        self._moving.set()
        self._closed = threading.Event()
        self._socks: list[socket.socket] = [self._listener]
        self._thread = threading.Thread(target=self._run, name="freezable-hop", daemon=True)
        self._thread.start()

    def freeze(self) -> None:
        self._moving.clear()

    def thaw(self) -> None:
        self._moving.set()

    def close(self) -> None:
        self._closed.set()
        self._moving.set()
        self._thread.join(5)
        for sock in self._socks:
            sock.close()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        while not self._closed.is_set():
            if not self._moving.is_set():
                self._moving.wait(0.05)
                continue
            for key, _ in sel.select(0.05):
                if key.data is None:
                    client, _addr = self._listener.accept()
                    server = socket.create_connection((LOOPBACK, self._upstream))
                    self._socks += [client, server]
                    sel.register(client, selectors.EVENT_READ, server)
                    sel.register(server, selectors.EVENT_READ, client)
                    continue
                if not self._moving.is_set():
                    break  # frozen between select() and here: leave the bytes unread
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                peer: socket.socket = key.data
                if sock.fileno() < 0:
                    continue  # closed with its peer earlier in this batch
                try:
                    data = sock.recv(65536)
                    if data:
                        peer.sendall(data)
                        continue
                except OSError:
                    pass
                for end in (sock, peer):
                    sel.unregister(end)
                    end.close()


class Node:
    def __init__(self, server: Server, hop: FreezableHop) -> None:
        self.server = server
        self.hop = hop


@pytest.fixture
def node(
    sshd: Sshd,
    target_login_key: Path,
    echo_server: EchoServer,
    store_server: Postgres,
    tmp_path: Path,
) -> Iterator[Node]:
    database = fresh_database(store_server)
    hop = FreezableHop(store_server.port)
    url = f"postgresql://{STORE_ROLE}:{STORE_PASSWORD}@{LOOPBACK}:{hop.port}/{database}"
    config = f'\n[server]\nnode = "node-x"\nheartbeat = "1s"\n\n[store]\nurl = "{url}"\n'
    home = make_home(tmp_path, sshd, target_login_key, echo_server.port, extra_config=config)
    server = Server(home, tmp_path)
    server.start()
    try:
        yield Node(server, hop)
    finally:
        hop.thaw()
        if server.proc is not None and server.proc.poll() is None:
            server.stop()
        hop.close()
        drop_database(store_server, database)


def expired_line(grant: Grant) -> str:
    stamp = datetime.fromtimestamp(grant.valid_before, UTC).strftime("%H:%M:%SZ")
    return f"[bastion] grant {grant.id} (task {grant.task}) expired at {stamp} - session closed"


def test_a_grant_still_ends_on_time_while_the_store_hangs(node: Node, tmp_path: Path) -> None:
    server = node.server
    stranger_key = keygen(tmp_path / "stranger" / "id_ed25519")
    short = server.issue("prod-web", options=["--ttl", "6s"])
    long = server.issue("prod-web", options=["--ttl", "5m"])
    later = server.issue("prod-web", options=["--ttl", "5m"])
    ending = server.spawn("prod-web", short.key, "sleep", "600")
    staying = Spawned(server.ssh_argv("prod-web", long.key, "cat"), stdin=subprocess.PIPE)
    server.active_session(short)
    server.active_session(long)
    assert time.time() < short.valid_before - 1.5, "too slow to set up before the grant's end"

    node.hop.freeze()
    try:
        # A login meanwhile waits for the store on a thread, holding nothing else up; so
        # does anyone's request@ attempt (whose key is looked up among enrolled agents).
        arriving = server.spawn("prod-web", later.key, "echo", "in")
        stranger = server.spawn("request", stranger_key, "prod-web")
        assert ending.wait(timeout=short.valid_before - time.time() + 5) == 255
        assert ending.exited_at is not None
        late = ending.exited_at - short.valid_before
        assert expired_line(short) in ending.stderr
        assert late <= LATE_AT_MOST, f"closed {late:.2f}s after valid_before"
        # The other grant's session still relays both ways while the store is gone.
        token = secrets.token_hex(8)
        assert staying.proc.stdin is not None
        staying.proc.stdin.write(f"{token}\n".encode())
        staying.proc.stdin.flush()
        wait_until(lambda: token in staying.stdout, 5)
        assert staying.running()
        assert arriving.running()  # still logging in
    finally:
        node.hop.thaw()

    assert arriving.wait(timeout=20) == 0
    assert arriving.stdout == "in\n"
    assert stranger.wait(timeout=20) == 255  # not enrolled: refused once the store answers

    # What could not be written while the store was frozen is written once it answers.
    [record] = server.ended_sessions(short, timeout=20)
    assert record["end_reason"] == "expired"
    staying.stop()


def test_the_guard_cuts_an_expired_connection_when_the_loop_is_held(
    node: Node, tmp_path: Path
) -> None:
    """Some store calls still run on the event loop (withdrawing an access request whose
    agent hung up): one that hangs holds every timer. Then the deadline guard's thread
    cuts the expired connection a few seconds late, without a notice, and the record says
    why."""
    server = node.server
    agent_key = keygen(tmp_path / "agent" / "id_ed25519")
    server.cli(
        "agent", "enroll", "bot", "--pubkey", f"{agent_key}.pub", "--may-request", "prod-web"
    )
    short = server.issue("prod-web", options=["--ttl", "6s"])
    ending = server.spawn("prod-web", short.key, "sleep", "600")
    asking = server.spawn(
        "request", agent_key, "--", "--target", "prod-web", "--task", "t", "--reason", "r"
    )
    request_id = asking.wait_stderr(r"waiting for approval \(request (r-[0-9a-f]+)").group(1)
    server.active_session(short)
    assert time.time() < short.valid_before - 1.5, "too slow to set up before the grant's end"

    node.hop.freeze()
    try:
        asking.stop()  # hanging up withdraws the request: a write on the event loop, which hangs
        assert ending.wait(timeout=short.valid_before - time.time() + 10) == 255
        assert ending.exited_at is not None
        late = ending.exited_at - short.valid_before
        assert 1.0 + GUARD_SLACK - 0.5 <= late <= 1.0 + GUARD_SLACK + LATE_AT_MOST, late
        assert "[bastion]" not in ending.stderr  # the SSH state is the loop's: no notice
        assert "cutting its connection" in server.log()
    finally:
        node.hop.thaw()

    [record] = server.ended_sessions(short, timeout=20)
    assert record["end_reason"] == "expired"
    withdrawn = wait_until(
        lambda: server.cli_json_all("requests", "show", request_id)["state"] == "withdrawn", 20
    )
    assert withdrawn


def test_a_session_closed_while_its_record_is_written_is_ended_once_written(
    node: Node, tmp_path: Path
) -> None:
    """A shell or command session's record is written on a thread before anything runs.
    The agent may give up meanwhile: the record, once written, is ended, not left open."""
    server = node.server
    grant = server.issue("prod-web", options=["--ttl", "5m"])
    control = tmp_path / "ctl"
    master = server.spawn("prod-web", grant.key, opts=["-N", "-M", "-S", str(control)])
    wait_until(control.exists, 10)
    sleep = unique_sleep()

    node.hop.freeze()
    try:
        waiting = server.spawn("prod-web", grant.key, *sleep.split(), opts=["-S", str(control)])
        time.sleep(1.0)  # the channel is open; its record waits for the store
        assert waiting.running()
        waiting.stop()  # the mux client goes: the master closes the channel
    finally:
        node.hop.thaw()

    [record] = server.ended_sessions(grant, timeout=20)
    assert record["command"] == sleep
    assert record["end_reason"] == "client-closed"
    master.stop()
