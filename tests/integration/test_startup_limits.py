"""Connections that never log in, against a real `bastion serve` (issue #20, item 8).

`server.per_source_max_startups` (sshd's PerSourceMaxStartups): one source's idle TCP
connections fill only its own places; past them its next connection is closed before the
SSH banner, while an agent from another address (127.0.0.2: all of 127/8 is loopback on
Linux) still logs in with the real `ssh`. `server.login_timeout` (LoginGraceTime) closes a
connection that never sends its banner, one that stops in the key exchange and one that
stops in the middle of authentication, and their places are given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import LOOPBACK, EchoServer, Server, make_home, wait_until
from tests.peers import Sshd, free_port

OTHER_SOURCE = "127.0.0.2"


def idle_connection(port: int, source: str = LOOPBACK) -> socket.socket:
    """A TCP connection from `source` that will never say anything."""
    return socket.create_connection((LOOPBACK, port), timeout=5, source_address=(source, 0))


def first_bytes(sock: socket.socket) -> bytes:
    """What the gateway sends first: its banner, or b"" for a connection it closed."""
    try:
        return sock.recv(256)
    except ConnectionResetError:
        return b""


def dropped(metrics_port: int, limit: str) -> float:
    url = f"http://{LOOPBACK}:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "bastion_connections_dropped_total" and sample.labels == {
                "limit": limit
            }:
                return float(sample.value)
    return 0.0


def start_server(
    sshd: Sshd,
    login_key: Path,
    echo: EchoServer,
    factory: pytest.TempPathFactory,
    name: str,
    server_config: str,
    *serve_args: str,
) -> Server:
    base = factory.mktemp(name)
    extra = f"\n[server]\n{server_config}"
    server = Server(make_home(base, sshd, login_key, echo.port, extra_config=extra), base)
    server.serve_args = list(serve_args)
    server.start()
    return server


def test_one_source_past_its_limit_is_closed_while_another_source_logs_in(
    sshd: Sshd,
    target_login_key: Path,
    echo_server: EchoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    per_source = 4
    metrics_port = free_port()
    server = start_server(
        sshd, target_login_key, echo_server, tmp_path_factory, "per-source-startups",
        f"per_source_max_startups = {per_source}\n",
        "--metrics-listen", f"{LOOPBACK}:{metrics_port}",
    )  # fmt: skip
    idle: list[socket.socket] = []
    try:
        grant = server.issue("prod-web", options=["--ttl", "5m"])
        seq = server.audit_seq()

        started = time.monotonic()
        idle = [idle_connection(server.port) for _ in range(per_source + 5)]
        answers = [first_bytes(sock) for sock in idle]

        # The first `per_source` hold their places; the five after them are closed at once,
        # before the gateway says anything (no banner).
        assert [a.startswith(b"SSH-2.0-") for a in answers[:per_source]] == [True] * per_source
        assert answers[per_source:] == [b""] * 5
        assert time.monotonic() - started < 5
        log_line = (
            f"{per_source} connections from 127.0.0.1/32 are authenticating"
            " (server.per_source_max_startups; logged once a minute"
        )
        assert log_line in server.log()

        # An agent from 127.0.0.1 is refused the same way, and says so.
        refused = server.ssh("prod-web", grant.key, "echo refused", log_level="INFO")
        assert (refused.returncode, refused.stdout) == (255, "")
        assert "Connection closed" in refused.stderr or "reset" in refused.stderr, refused.stderr
        assert dropped(metrics_port, "per_source_max_startups") == 6
        assert dropped(metrics_port, "max_startups") == 0

        # An agent from another source logs in with the real ssh and runs its command.
        other = server.ssh("prod-web", grant.key, "echo other-source", opts=["-b", OTHER_SOURCE])
        assert (other.returncode, other.stdout, other.stderr) == (0, "other-source\n", "")
        [accepted] = server.audit("login.accepted", after=seq)
        assert accepted["details"]["client"].startswith(f"{OTHER_SOURCE}:")
        assert not server.audit("login.refused", after=seq)  # a dropped connection isn't audited

        # The idle ones gone, 127.0.0.1 logs in again.
        for sock in idle:
            sock.close()
        idle = []
        wait_until(lambda: server.ssh("prod-web", grant.key, "echo back").stdout == "back\n", 10)

        # A reload (SIGHUP) applies to the next connection: down to one per source.
        config = server.home / "bastion.toml"
        text = config.read_text()
        config.write_text(
            text.replace(f"per_source_max_startups = {per_source}", "per_source_max_startups = 1")
        )
        offset = len(server.log())
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_until(lambda: "server.per_source_max_startups" in server.log()[offset:], 10)
        assert "configuration reloaded from " in server.log()[offset:]
        idle = [idle_connection(server.port)]
        assert first_bytes(idle[0]).startswith(b"SSH-2.0-")
        refused = server.ssh("prod-web", grant.key, "echo refused")
        assert (refused.returncode, refused.stdout) == (255, "")
        assert dropped(metrics_port, "per_source_max_startups") == 7
        other = server.ssh("prod-web", grant.key, "echo still", opts=["-b", OTHER_SOURCE])
        assert (other.returncode, other.stdout) == (0, "still\n"), other.stderr
    finally:
        for sock in idle:
            sock.close()
        server.stop()


class _StalledClient(asyncssh.SSHClient):
    """Gets through the key exchange, then never offers a key: stuck in authentication."""

    def __init__(self, reached: asyncio.Event, release: asyncio.Event) -> None:
        self.reached = reached
        self.release = release

    async def public_key_auth_requested(self) -> Any:
        self.reached.set()
        await self.release.wait()
        return None


async def _closed_at(reader: asyncio.StreamReader) -> float:
    """Loop time at which the gateway closed this connection (whatever it sent before)."""
    with contextlib.suppress(ConnectionResetError):
        await reader.read()
    return asyncio.get_running_loop().time()


def test_login_timeout_closes_silent_and_stalled_connections_and_frees_their_places(
    sshd: Sshd,
    target_login_key: Path,
    echo_server: EchoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    timeout = 2.0
    server = start_server(
        sshd, target_login_key, echo_server, tmp_path_factory, "login-timeout",
        f'login_timeout = "{timeout:.0f}s"\nper_source_max_startups = 3\n',
    )  # fmt: skip
    try:
        grant = server.issue("prod-web", options=["--ttl", "5m"])

        async def run() -> dict[str, float]:
            loop = asyncio.get_running_loop()
            opened: dict[str, float] = {}
            writers: list[asyncio.StreamWriter] = []

            async def connect() -> asyncio.StreamReader:
                reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
                writers.append(writer)
                return reader

            # 1: connects and never sends its banner.
            opened["silent"] = loop.time()
            silent = await connect()
            assert (await silent.readline()).startswith(b"SSH-2.0-")
            # 2: sends its banner, then nothing: stuck before the key exchange ends.
            opened["kex"] = loop.time()
            kex = await connect()
            writers[-1].write(b"SSH-2.0-stalled_client\r\n")
            assert (await kex.readline()).startswith(b"SSH-2.0-")
            # 3: a real SSH client through the key exchange, stuck in authentication.
            reached, release = asyncio.Event(), asyncio.Event()
            opened["auth"] = loop.time()
            login = asyncio.ensure_future(
                asyncssh.connect(
                    LOOPBACK,
                    server.port,
                    username="prod-web",
                    client_factory=lambda: _StalledClient(reached, release),
                    client_keys=None,
                    known_hosts=None,
                    agent_path=None,
                    config=None,
                    login_timeout=60,
                )
            )
            await asyncio.wait_for(reached.wait(), 10)
            # All three of this source's places are taken: a fourth is closed at once.
            fourth_opened = loop.time()
            fourth = await connect()
            fourth_closed = await asyncio.wait_for(_closed_at(fourth), 2)
            closed = {
                "silent": await asyncio.wait_for(_closed_at(silent), timeout + 10),
                "kex": await asyncio.wait_for(_closed_at(kex), timeout + 10),
            }
            try:
                await asyncio.wait_for(login, timeout + 10)
            except (asyncssh.Error, OSError):
                closed["auth"] = loop.time()
            finally:
                release.set()
            for writer in writers:
                writer.close()
            assert "auth" in closed, "the stalled login was not closed"
            return {
                "fourth": fourth_closed - fourth_opened,
                **{name: closed[name] - opened[name] for name in closed},
            }

        lasted = asyncio.run(run())

        assert lasted["fourth"] < 1.0
        for name in ("silent", "kex", "auth"):
            # Closed by the login timeout: not before it, and not long after it.
            assert timeout - 0.2 <= lasted[name] <= timeout + 3, lasted
        # Their places were given back: this source logs in again.
        again = server.ssh("prod-web", grant.key, "echo in")
        assert (again.returncode, again.stdout) == (0, "in\n"), again.stderr
    finally:
        server.stop()
