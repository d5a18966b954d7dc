"""Operating a real `bastion serve`: systemd's notify protocol, graceful stop, JSON logs,
the Prometheus endpoint, and `bastion doctor` against ports held by real servers.

sd_notify is received on a real AF_UNIX datagram socket the test binds (a path, and an
abstract name) and passes as NOTIFY_SOCKET; metrics are scraped over real HTTP while the
real `ssh` client holds sessions open.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import (
    ECHO_DB_PASSWORD,
    EchoServer,
    Server,
    keygen,
    make_home,
    run_cli,
    target_processes,
    unique_sleep,
    wait_until,
)
from tests.peers import Sshd, free_port

MakeServer = Callable[..., Server]


@pytest.fixture
def make_server(
    sshd: Sshd, target_login_key: Path, echo_server: EchoServer, tmp_path: Path
) -> Iterator[MakeServer]:
    """Gateways on fresh homes with extra `serve` options, environment and config; not
    started. Each is stopped by its PID at the end."""
    servers: list[Server] = []

    def make(*serve_args: str, env: dict[str, str] | None = None, config: str = "") -> Server:
        base = tmp_path / f"ops{len(servers)}"
        base.mkdir()
        home = make_home(base, sshd, target_login_key, echo_server.port)
        if config:  # before the fixture's own tables, so a [server] table may come first
            toml = home / "bastion.toml"
            toml.write_text(config + toml.read_text())
        server = Server(home, base)
        server.serve_args = list(serve_args)
        server.env = env or {}
        servers.append(server)
        return server

    yield make
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.stop(signal.SIGKILL)


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, list[str]]] = []

    def receive(self, until: Callable[[list[str]], bool], timeout: float = 10.0) -> list[str]:
        """Read datagrams until one satisfies `until`; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            lines = data.decode().split("\n")
            self.messages.append((time.monotonic(), lines))
            if until(lines):
                return lines
        raise AssertionError(f"no such notify message in {timeout}s: {self.messages}")

    def close(self) -> None:
        self.sock.close()


def connect_refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


# -- sd_notify ----------------------------------------------------------------------------


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_sd_notify_ready_watchdog_stopping(
    make_server: MakeServer, tmp_path: Path, abstract: bool
) -> None:
    name = f"@bastion-test-{secrets.token_hex(4)}" if abstract else str(tmp_path / "notify")
    notify = NotifySocket(name)
    server = make_server(env={"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "400000"})
    try:
        server.start()
        ready = notify.receive(lambda lines: "READY=1" in lines)
        # READY=1 means the listener is bound: a connection is accepted now.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
            assert conn.recv(64).startswith(b"SSH-2.0-")
        assert f"STATUS=listening on 127.0.0.1:{server.port}" in ready
        # WATCHDOG=1 at half of WATCHDOG_USEC (0.2 s): several within a second.
        first = time.monotonic()
        for _ in range(3):
            notify.receive(lambda lines: lines == ["WATCHDOG=1"], timeout=2)
        assert time.monotonic() - first < 1.5

        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        stopping = notify.receive(lambda lines: "STOPPING=1" in lines)
        assert any(line.startswith("STATUS=stopping") for line in stopping)
        assert server.stop() == 0
    finally:
        notify.close()


def test_without_notify_socket_serve_runs_as_before(make_server: MakeServer) -> None:
    server = make_server()
    server.start()
    assert server.stop() == 0


# -- graceful stop ------------------------------------------------------------------------


def test_sigterm_refuses_new_connections_and_closes_live_sessions(
    make_server: MakeServer, sshd: Sshd, tmp_path: Path
) -> None:
    name = str(tmp_path / "notify")
    notify = NotifySocket(name)
    server = make_server(
        "--log-format",
        "json",
        env={"NOTIFY_SOCKET": name},
        config='[server]\nshutdown_grace = "4s"\n',
    )
    try:
        server.start()
        notify.receive(lambda lines: "READY=1" in lines)
        grant = server.issue("prod-web")
        sleep = unique_sleep()
        command = server.spawn("prod-web", grant.key, sleep)
        wait_until(lambda: target_processes(sshd, sleep))
        session = server.active_session(grant)
        # A stopped client can't acknowledge the channel close: the gateway waits for it,
        # which keeps it in its stopping phase long enough to look at.
        command.proc.send_signal(signal.SIGSTOP)

        assert server.proc is not None
        stopping_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        notify.receive(lambda lines: "STOPPING=1" in lines)

        assert connect_refused(server.port)
        assert server.proc.poll() is None  # still stopping, yet refusing
        command.proc.send_signal(signal.SIGCONT)
        assert server.stop() == 0
        assert time.monotonic() - stopping_at < 4 + 2
        assert command.wait(5) == 255
        assert command.stderr.strip() == "[bastion] the bastion is shutting down - session closed"
        [record] = server.ended_sessions(grant)
        assert (record["id"], record["end_reason"]) == (session["id"], "bastion-shutdown")
        events = [json.loads(line) for line in server.log().splitlines()]
        [forced] = [e for e in events if e.get("event") == "connection.forced_close"]
        assert forced["reason"] == "bastion-shutdown"
        assert [e["connections"] for e in events if e.get("event") == "stopping"] == [1]
        wait_until(lambda: not target_processes(sshd, sleep), timeout=2)
    finally:
        notify.close()


# -- JSON logs ----------------------------------------------------------------------------


def json_events(server: Server) -> list[dict[str, Any]]:
    """Every line of the log is one JSON object."""
    return [json.loads(line) for line in server.log().splitlines()]


@pytest.mark.parametrize("how", ["option", "config"])
def test_json_logs_carry_the_key_events(make_server: MakeServer, tmp_path: Path, how: str) -> None:
    if how == "option":
        server = make_server("--log-format", "json")
    else:
        server = make_server(config='[server]\nlog_format = "json"\n')
    server.start()
    grant = server.issue("prod-web")
    assert server.ssh("prod-web", grant.key, "echo hi").stdout == "hi\n"
    plain = keygen(tmp_path / "plain" / "id_ed25519")
    refused = server.ssh("prod-web", plain, "true")
    assert refused.returncode == 255
    server.cli("grant", "revoke", grant.id, "--reason", "done")
    assert server.ssh("prod-web", grant.key, "true").returncode == 255
    assert server.stop() == 0

    events = json_events(server)
    for event in events:
        assert set(event) >= {"ts", "level", "logger", "msg"}
        stamp = datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))
        assert event["ts"].endswith("Z") and stamp.utcoffset() is not None
    by_event: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_event.setdefault(event.get("event", ""), []).append(event)
    [listening] = by_event["listening"]
    assert (listening["host"], listening["port"]) == ("127.0.0.1", server.port)
    assert listening["event_loop"] == "uvloop"  # the default
    [accepted] = by_event["login.accepted"]
    assert (accepted["agent"], accepted["grant"], accepted["login"]) == (
        "bot",
        grant.id,
        "prod-web",
    )
    assert accepted["client"].startswith("127.0.0.1:")
    [started] = by_event["session.started"]
    [ended] = by_event["session.ended"]
    for event in (started, ended):
        assert (event["agent"], event["target"], event["kind"]) == ("bot", "prod-web", "exec")
    assert started["session"] == ended["session"]
    assert (ended["end_reason"], ended["exit_status"]) == ("exit", 0)
    reasons = [e["reason"] for e in by_event["login.refused"]]
    assert any("plain key" in r for r in reasons), reasons
    assert any(f"grant {grant.id} is revoked" in r for r in reasons), reasons
    assert by_event["stopping"][0]["connections"] == 0
    # No secrets: not the target's password, not the agent's private key.
    text = server.log()
    assert ECHO_DB_PASSWORD not in text
    key_body = grant.key.read_text().splitlines()[1]
    assert key_body not in text


def test_text_logs_are_the_default(make_server: MakeServer) -> None:
    server = make_server()
    server.start()
    server.stop()
    line = next(li for li in server.log().splitlines() if "listening on" in li)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO bastion: listening on ", line)


def test_the_standard_asyncio_loop_is_a_config_choice(make_server: MakeServer) -> None:
    server = make_server(config='[server]\nevent_loop = "asyncio"\n')
    server.start()
    grant = server.issue("prod-web")
    assert server.ssh("prod-web", grant.key, "echo hi").stdout == "hi\n"
    assert server.stop() == 0
    line = next(li for li in server.log().splitlines() if "listening on" in li)
    assert line.endswith(", asyncio event loop)"), line


def test_bad_event_loop_in_config_is_one_line_error(make_server: MakeServer) -> None:
    server = make_server(config='[server]\nevent_loop = "trio"\n')

    result = run_cli(server.home, "serve", "--listen", f"127.0.0.1:{server.port}")

    assert result.returncode == 6
    assert result.stderr == (
        f"bastion: error: 'server.event_loop' in {server.home / 'bastion.toml'}"
        ' must be "uvloop" or "asyncio", got \'trio\'\n'
    )
    assert connect_refused(server.port)


def test_bad_log_format_in_config_is_one_line_error(make_server: MakeServer) -> None:
    server = make_server(config='[server]\nlog_format = "xml"\n')

    result = run_cli(server.home, "serve", "--listen", f"127.0.0.1:{server.port}")

    assert result.returncode == 6
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("bastion: error: 'server.log_format' in ")
    assert connect_refused(server.port)


# -- metrics ------------------------------------------------------------------------------


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_during_and_after_real_sessions(
    make_server: MakeServer, sshd: Sshd, tmp_path: Path
) -> None:
    metrics_port = free_port()
    server = make_server("--metrics-listen", f"127.0.0.1:{metrics_port}")
    server.start()
    before = scrape(metrics_port)
    assert value(before, "bastion_sessions_active", kind="exec") == 0
    build = [k for k in before if k[0] == "bastion_build_info"]
    assert len(build) == 1 and before[build[0]] == 1
    # A private registry: none of prometheus_client's process/GC collectors.
    assert not any(name.startswith(("python_", "process_")) for name, _ in before)

    grant = server.issue("prod-web")
    sleep = unique_sleep()
    command = server.spawn("prod-web", grant.key, f"head -c 100000 /dev/zero; {sleep}")
    wait_until(lambda: target_processes(sshd, sleep))
    wait_until(lambda: command.stdout_size >= 100000)

    during = scrape(metrics_port)
    assert value(during, "bastion_sessions_active", kind="exec") == 1
    assert value(during, "bastion_logins_total", result="accepted", reason="") == 1
    assert value(during, "bastion_bytes_relayed_total", direction="down") >= 100000

    # An approval waiting: a destructive command on the same grant.
    waiting = server.spawn("prod-web", grant.key, "rm -rf /tmp/bastion-metrics-test")
    pending = wait_until(
        lambda: server.cli_json_all("approvals", "list"), timeout=10
    )  # the request exists
    wait_until(lambda: value(scrape(metrics_port), "bastion_approvals_pending") == 1)
    server.cli("approvals", "deny", pending[0]["id"], "--reason", "no", actor="alice")
    assert waiting.wait(10) == 126
    wait_until(lambda: value(scrape(metrics_port), "bastion_approvals_pending") == 0)

    server.cli("grant", "revoke", grant.id, "--reason", "done")
    assert command.wait(5) == 255
    assert server.ssh("prod-web", grant.key, "true").returncode == 255
    plain = keygen(tmp_path / "plain" / "id_ed25519")
    assert server.ssh("prod-web", plain, "true").returncode == 255

    after = wait_until(
        lambda: (
            (s := scrape(metrics_port))
            and value(s, "bastion_logins_total", result="refused", reason="plain-key") == 1
            and s
        )
    )
    assert value(after, "bastion_sessions_active", kind="exec") == 0
    assert value(after, "bastion_forced_closes_total", reason="revoked") == 1
    assert value(after, "bastion_logins_total", result="refused", reason="revoked") == 1
    assert value(after, "bastion_logins_total", result="accepted", reason="") == 2
    [record, _denied] = server.ended_sessions(grant, count=2)
    down = value(after, "bastion_bytes_relayed_total", direction="down")
    assert down >= record["bytes_down"] >= 100000
    # Counters never go back.
    assert down >= value(during, "bastion_bytes_relayed_total", direction="down")

    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/other", timeout=5)
    assert missing.value.code == 404

    assert server.stop() == 0
    assert connect_refused(metrics_port)


def test_metrics_count_a_shutdown_as_a_forced_close(make_server: MakeServer, sshd: Sshd) -> None:
    metrics_port = free_port()
    server = make_server(config=f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
    server.start()
    grant = server.issue("prod-web")
    sleep = unique_sleep()
    command = server.spawn("prod-web", grant.key, sleep)
    wait_until(lambda: target_processes(sshd, sleep))
    assert value(scrape(metrics_port), "bastion_sessions_active", kind="exec") == 1
    server.stop()
    assert command.wait(5) == 255


@pytest.mark.parametrize("address", ["0.0.0.0", "10.9.8.7"])
def test_metrics_off_loopback_refused_at_start(make_server: MakeServer, address: str) -> None:
    server = make_server()

    result = run_cli(
        server.home, "serve", "--listen", f"127.0.0.1:{server.port}",
        "--metrics-listen", f"{address}:{free_port()}",
    )  # fmt: skip

    assert result.returncode == 6
    assert result.stderr.count("\n") == 1
    assert "not a loopback address" in result.stderr
    assert connect_refused(server.port)


def test_metrics_port_taken_is_one_line_error(make_server: MakeServer) -> None:
    server = make_server()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]

        result = run_cli(
            server.home, "serve", "--listen", f"127.0.0.1:{server.port}",
            "--metrics-listen", f"127.0.0.1:{taken}",
        )  # fmt: skip

    assert result.returncode == 6, result.stderr
    assert result.stderr.count("\n") == 1
    assert f"can't serve metrics on 127.0.0.1:{taken}" in result.stderr


# -- doctor against real listeners --------------------------------------------------------


def test_doctor_says_the_port_is_ours_when_bastion_serves_it(make_server: MakeServer) -> None:
    server = make_server()
    server.start()

    result = run_cli(server.home, "doctor", "--listen", f"127.0.0.1:{server.port}")

    assert result.returncode == 0, result.stdout
    assert re.search(
        rf"ok +listen +127\.0\.0\.1:{server.port} is in use by a running bastion "
        r"\(SSH-2\.0-AsyncSSH_",
        result.stdout,
    )
    server.stop()


def test_doctor_fails_when_another_ssh_server_holds_the_port(
    make_server: MakeServer, sshd: Sshd
) -> None:
    server = make_server()

    result = run_cli(server.home, "doctor", "--listen", f"127.0.0.1:{sshd.port}", "--json")

    assert result.returncode == 1
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["listen"]["status"] == "fail"
    assert "another SSH server (SSH-2.0-OpenSSH" in checks["listen"]["detail"]
