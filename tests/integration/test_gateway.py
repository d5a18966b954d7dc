"""`bastion serve` end to end: the stock OpenSSH `ssh`, `scp` and `sftp` through the gateway
to a real sshd target, as an agent uses them.

Commands (output streams, exit codes and signals, stdin half-close, binary data), file
transfer (scp in both protocols, sftp), an interactive PTY shell (terminal type and size,
resize, Ctrl-C), `-L`/`-W` forwards to granted targets and the refused ones, and what the
agent sees when the target is down or not the host it should be.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import (
    EchoServer,
    Grant,
    Server,
    Spawned,
    add_ssh_target,
    keygen,
    target_processes,
    unique_sleep,
    wait_until,
)
from tests.peers import Sshd, free_port, ssh_command, write_known_hosts

# -- commands -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [0, 3, 42])
def test_exec_streams_and_exit_status(gateway: Server, status: int) -> None:
    grant = gateway.issue("prod-web")

    result = gateway.ssh(
        "prod-web", grant.key, f"echo to-stdout; echo to-stderr >&2; echo more; exit {status}"
    )

    assert result.returncode == status, result.stderr
    assert result.stdout == "to-stdout\nmore\n"
    assert result.stderr == "to-stderr\n"
    [record] = gateway.ended_sessions(grant)
    assert record["kind"] == "exec"
    assert record["target"] == "prod-web"
    assert record["agent"] == "bot"
    assert record["task"] == grant.task
    assert record["command"].startswith("echo to-stdout;")
    assert record["end_reason"] == "exit"
    assert record["exit_status"] == status
    assert record["bytes_down"] == len("to-stdout\nto-stderr\nmore\n")
    assert record["client"].startswith("127.0.0.1:")


def test_exec_runs_as_the_targets_least_privilege_login(gateway: Server, sshd: Sshd) -> None:
    grant = gateway.issue("prod-web")

    result = gateway.ssh("prod-web", grant.key, "id -un; echo $HOME")

    assert result.returncode == 0, result.stderr
    login, home = result.stdout.splitlines()
    assert login == sshd.login_user == "bastion-t"
    assert home.endswith("/home/bastion-t")


def test_exit_signal_passes_through_like_direct_ssh(
    gateway: Server, sshd: Sshd, target_login_key: Path, tmp_path: Path
) -> None:
    # `exec`: the login shell is replaced by python, which kills itself: sshd reports an
    # exit-signal (no exit-status), which OpenSSH's client turns into status 255.
    command = 'exec /usr/bin/python3 -c "import os,signal; os.kill(os.getpid(), signal.SIGKILL)"'
    grant = gateway.issue("prod-web")
    known_hosts = tmp_path / "sshd_known_hosts"
    write_known_hosts(known_hosts, sshd.port, sshd.host_pub)
    direct_argv = ssh_command(
        sshd.port, target_login_key, sshd.login_user, known_hosts, command, extra_opts=["-v"]
    )

    direct = subprocess.run(direct_argv, capture_output=True, text=True, timeout=30)
    relayed = gateway.ssh("prod-web", grant.key, command, opts=["-v"])

    assert direct.returncode == relayed.returncode == 255
    for result in (direct, relayed):
        assert "rtype exit-signal" in result.stderr
        assert "rtype exit-status" not in result.stderr
        assert result.stdout == ""
    [record] = gateway.ended_sessions(grant)
    assert record["end_reason"] == "exit"
    assert record["exit_status"] is None
    assert record["detail"] == "signal KILL"


def test_stdin_half_close(gateway: Server) -> None:
    grant = gateway.issue("prod-web")

    result = gateway.ssh("prod-web", grant.key, "sort", input="b\na\nc\n")

    assert (result.returncode, result.stdout, result.stderr) == (0, "a\nb\nc\n", "")


def test_output_after_stdin_eof_still_arrives(gateway: Server) -> None:
    # The command keeps writing after the client closed its stdin (half-close, not close).
    grant = gateway.issue("prod-web")

    result = gateway.ssh("prod-web", grant.key, "cat; sleep 0.3; echo after-eof", input="x\n")

    assert (result.returncode, result.stdout) == (0, "x\nafter-eof\n"), result.stderr


def test_binary_round_trip(gateway: Server) -> None:
    data = os.urandom(5 * 1024 * 1024)
    grant = gateway.issue("prod-web")

    result = subprocess.run(
        gateway.ssh_argv("prod-web", grant.key, "cat"),
        input=data,
        capture_output=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == len(data)
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(data).hexdigest()
    [record] = gateway.ended_sessions(grant)
    assert record["bytes_up"] == record["bytes_down"] == len(data)


def test_binary_upload_checked_on_the_target(gateway: Server) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    grant = gateway.issue("prod-web")

    result = subprocess.run(
        gateway.ssh_argv("prod-web", grant.key, "sha256sum -b"),
        input=data,
        capture_output=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split()[0] == hashlib.sha256(data).hexdigest()


# -- file transfer ------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["sftp", "scp"], ids=["scp-default-sftp", "scp-O-legacy"])
def test_scp_upload_and_download(
    gateway: Server, sshd: Sshd, tmp_path: Path, protocol: str
) -> None:
    grant = gateway.issue("prod-web")
    data = os.urandom(1024 * 1024 + 3)
    local = tmp_path / "up.bin"
    local.write_bytes(data)
    name = f"scp-{protocol}-{grant.id}.bin"
    flags = ["-O"] if protocol == "scp" else []
    remote = f"prod-web@127.0.0.1:{name}"  # relative: the login's home on the target

    up = subprocess.run(
        ["scp", *flags, *gateway.client_opts(grant.key), str(local), remote],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    on_target = sshd.unprivileged_home / name
    assert on_target.read_bytes() == data
    assert on_target.stat().st_uid == Sshd.UNPRIVILEGED_UID  # written by the target's login

    down = subprocess.run(
        ["scp", *flags, *gateway.client_opts(grant.key), remote, str(tmp_path / "down.bin")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert (tmp_path / "down.bin").read_bytes() == data

    records = gateway.ended_sessions(grant, count=2)
    kinds = {"sftp": ["sftp", "sftp"], "scp": ["exec", "exec"]}[protocol]
    assert [r["kind"] for r in records] == kinds
    assert all(r["end_reason"] == "exit" and r["exit_status"] == 0 for r in records), records
    if protocol == "scp":
        assert records[0]["command"] == f"scp -t {name}"
        assert records[1]["command"] == f"scp -f {name}"


def test_sftp_batch(gateway: Server, sshd: Sshd, tmp_path: Path) -> None:
    grant = gateway.issue("prod-web")
    data = os.urandom(700_000)
    (tmp_path / "local.bin").write_bytes(data)
    name = f"sftp-{grant.id}.bin"
    batch = tmp_path / "batch"
    batch.write_text(
        f"put {tmp_path / 'local.bin'} {name}\n"
        f"get {name} {tmp_path / 'back.bin'}\n"
        f"ls -l {name}\n"
        f"rename {name} {name}.renamed\n"
    )

    result = subprocess.run(
        ["sftp", *gateway.client_opts(grant.key), "-b", str(batch), "prod-web@127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "back.bin").read_bytes() == data
    assert re.search(rf"bastion-t\s+bastion-t\s+{len(data)} .*{name}", result.stdout)
    assert (sshd.unprivileged_home / f"{name}.renamed").read_bytes() == data
    [record] = gateway.ended_sessions(grant)
    assert record["kind"] == "sftp"
    assert record["end_reason"] == "exit"


# -- an interactive shell on a PTY -----------------------------------------------------


def test_pty_shell_terminal_type_size_resize_and_ctrl_c(gateway: Server, sshd: Sshd) -> None:
    grant = gateway.issue("prod-web")
    term = gateway.spawn_pty("prod-web", grant.key, rows=31, cols=97)
    term.expect(r"\$ $")  # dash's prompt

    # Quoting splits the markers, so the echo of the typed line never matches.
    term.type('echo "T""ERM=$TERM"; echo "S""IZE=$(stty size)"\r')
    term.expect(r"TERM=vt220\r\n")
    term.expect(r"SIZE=31 97\r\n")

    term.resize(40, 120)
    # The ssh client sends the window change when it next handles SIGWINCH, which may
    # come after keys typed at once (direct sshd has the same race): ask until it shows.
    tries = 0
    while tries < 20:
        tries += 1
        mark = len(term.output)
        term.type('echo "S""IZE=$(stty size)"\r')
        found = term.expect(r"SIZE=(\d+ \d+)\r\n", since=mark)
        if found.group(1) == "40 120":
            break
        time.sleep(0.1)
    assert found.group(1) == "40 120", f"no resize after {tries} tries"

    sleep = unique_sleep()
    term.type(f"{sleep}\r")
    wait_until(lambda: target_processes(sshd, sleep))
    mark = len(term.output)
    interrupted_at = time.monotonic()
    term.type("\x03")  # Ctrl-C: the target's terminal turns it into SIGINT
    wait_until(lambda: not target_processes(sshd, sleep), timeout=5)
    assert time.monotonic() - interrupted_at < 2
    term.type('echo "R""C=$?"\r')
    term.expect(r"RC=130\r\n", since=mark)

    term.type("exit 5\r")
    assert term.wait() == 5
    [record] = gateway.ended_sessions(grant)
    assert record["kind"] == "shell"
    assert record["command"] is None
    assert (record["end_reason"], record["exit_status"]) == ("exit", 5)


def test_pty_for_a_command(gateway: Server) -> None:
    grant = gateway.issue("prod-web")

    term = gateway.spawn_pty("prod-web", grant.key, "tty; exit 4", rows=50, cols=132)

    term.expect(r"/dev/pts/\d+\r\n")
    assert term.wait() == 4


def test_command_without_pty_has_no_terminal(gateway: Server) -> None:
    grant = gateway.issue("prod-web")

    result = gateway.ssh("prod-web", grant.key, "tty")

    assert (result.returncode, result.stdout) == (1, "not a tty\n")


# -- forwards -----------------------------------------------------------------------


def _connect_when_listening(port: int, timeout: float = 10.0) -> socket.socket:
    """A connection to the local end of an `ssh -L` (ssh binds it shortly after starting)."""
    return wait_until(  # type: ignore[no-any-return]
        lambda: _try_connect(port), timeout
    )


def _local_forward(gateway: Server, grant: Grant, target: str) -> tuple[Spawned, int]:
    """`ssh -N -L PORT:TARGET:22` as echo-db (a database target permits forwarding)."""
    port = free_port()
    opts = ["-N", "-o", "ExitOnForwardFailure=yes", "-L", f"{port}:{target}:22"]
    return gateway.spawn("echo-db", grant.key, opts=opts), port


def _try_connect(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return None


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_local_forward_relays_to_the_granted_target(
    gateway: Server, echo_server: EchoServer
) -> None:
    # echo-db in the grant permits forwarding; raw-echo is relayed as plain bytes.
    grant = gateway.issue("echo-db", "raw-echo")
    tunnel, local_port = _local_forward(gateway, grant, "raw-echo")

    payload = os.urandom(300_000)
    with _connect_when_listening(local_port) as sock:
        sock.sendall(b"hello through the bastion\n")
        assert _recv_exactly(sock, 26) == b"hello through the bastion\n"
        sock.sendall(payload)
        assert _recv_exactly(sock, len(payload)) == payload
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # the echo server's EOF came back through the tunnel

    # A second connection through the same tunnel is a second forward.
    with _connect_when_listening(local_port) as sock:
        sock.sendall(b"again")
        assert _recv_exactly(sock, 5) == b"again"

    tunnel.stop()
    records = gateway.ended_sessions(grant, count=2)
    assert [r["kind"] for r in records] == ["forward", "forward"]
    assert {r["target"] for r in records} == {"raw-echo"}
    assert records[0]["command"] == f"-L raw-echo:22 -> 127.0.0.1:{echo_server.port}"
    assert records[0]["bytes_up"] == records[0]["bytes_down"] == 26 + len(payload)


def test_stdio_forward_ends_when_the_target_closes(
    gateway: Server,
    echo_server: EchoServer,
    sshd: Sshd,
    target_login_key: Path,
    tmp_path: Path,
) -> None:
    # Direct to sshd: once both directions have seen EOF and the echo server closed, sshd
    # closes the channel, and `ssh -W` (which never closes a stdio forward itself) exits 0.
    known_hosts = tmp_path / "sshd_known_hosts"
    write_known_hosts(known_hosts, sshd.port, sshd.host_pub)
    direct = subprocess.run(
        ssh_command(
            sshd.port, target_login_key, sshd.login_user, known_hosts,
            extra_opts=["-W", f"127.0.0.1:{echo_server.port}"],
        ),
        input="ping\n", capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert (direct.returncode, direct.stdout) == (0, "ping\n"), direct.stderr
    grant = gateway.issue("echo-db", "raw-echo")

    relayed = gateway.ssh(
        "echo-db", grant.key, opts=["-W", "raw-echo:22"], input="ping\n", timeout=5
    )

    assert (relayed.returncode, relayed.stdout) == (0, "ping\n")


def test_a_target_that_speaks_first_is_relayed_from_its_first_byte(
    gateway: Server, sshd: Sshd, target_login_key: Path
) -> None:
    # sshd sends its banner as soon as it accepts, before the bastion's channel to the
    # client is open: those bytes are kept and come first. (`banner-sshd` is an SSH
    # target with `raw_forwarding = true`, on purpose.)
    add_ssh_target(gateway.home, "banner-sshd", sshd, target_login_key)
    grant = gateway.issue("echo-db", "banner-sshd")
    tunnel, local_port = _local_forward(gateway, grant, "banner-sshd")
    with _connect_when_listening(local_port) as sock:
        banner = b""
        while not banner.endswith(b"\r\n"):
            chunk = sock.recv(256)
            assert chunk, banner
            banner += chunk
    assert banner.startswith(b"SSH-2.0-OpenSSH"), banner

    tunnel.stop()
    [record] = gateway.ended_sessions(grant)
    assert (record["target"], record["bytes_up"]) == ("banner-sshd", 0)
    assert record["bytes_down"] == len(banner)  # counted, early bytes too


@pytest.mark.parametrize("how", ["-L", "-W", "-J"])
def test_no_raw_path_to_an_ssh_targets_sshd(gateway: Server, how: str) -> None:
    """A grant with a database target permits forwarding; an SSH target in the same grant
    must still be reached only through recorded sessions, never as raw bytes to its
    sshd (where a planted key would give an unrecorded, ungated shell)."""
    grant = gateway.issue("echo-db", "prod-web")
    seq = gateway.audit_seq()
    port = free_port()
    if how == "-L":
        proc = gateway.spawn(
            "echo-db", grant.key,
            opts=["-N", "-o", "ExitOnForwardFailure=yes", "-L", f"{port}:prod-web:22"],
            log_level="INFO",
        )  # fmt: skip
        with _connect_when_listening(port) as sock:
            assert sock.recv(100) == b""  # no sshd banner: the channel was refused
        proc.wait_stderr("forwarding to SSH target prod-web is refused")
        proc.stop()
    else:
        opts = ["-W", "prod-web:22"] if how == "-W" else []
        argv = gateway.ssh_argv("echo-db", grant.key, opts=opts)
        if how == "-J":  # ProxyJump through the bastion to prod-web's own sshd
            jump = " ".join(gateway.ssh_argv("echo-db", grant.key, opts=["-W", "%h:%p"]))
            argv = ["ssh", "-F", "/dev/null", "-o", f"ProxyCommand={jump}",
                    "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                    "-o", "UserKnownHostsFile=/dev/null", "root@prod-web", "true"]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        assert done.returncode == 255, done
        assert b"SSH-2.0-OpenSSH" not in done.stdout
    [event] = gateway.audit("forward.refused", after=seq)
    assert "forwarding to SSH target prod-web is refused" in event["details"]["reason"]


def test_stdio_forward_relays_bytes(gateway: Server) -> None:
    # `-W` relays; the client is stopped once the echo came back (see the xfail above).
    grant = gateway.issue("echo-db", "raw-echo")
    proc = subprocess.Popen(
        gateway.ssh_argv("echo-db", grant.key, opts=["-W", "raw-echo:22"]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"ping over -W\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"ping over -W\n"
    finally:
        proc.kill()
        proc.communicate(timeout=5)


@pytest.mark.parametrize(
    ("destination", "reason"),
    [
        ("127.0.0.1", "forward to an address (127.0.0.1); name a granted target instead"),
        ("::1", "forward to an address (::1); name a granted target instead"),
        ("other-db", "target 'other-db' is not covered by grant {grant}"),
        ("prod-web", "target 'prod-web' is not covered by grant {grant}"),
        ("no-such-db", "target 'no-such-db' is not covered by grant {grant}"),
    ],
    ids=["ip-address", "ipv6-address", "target-outside-grant", "ssh-target-outside", "unknown"],
)
def test_forward_refused(
    gateway: Server, echo_server: EchoServer, destination: str, reason: str
) -> None:
    grant = gateway.issue("echo-db")
    reason = reason.format(grant=grant.id)
    before = echo_server.connections
    seq = gateway.audit_seq()

    dest = f"[{destination}]" if ":" in destination else destination
    result = gateway.ssh(
        "echo-db", grant.key, opts=["-W", f"{dest}:5432"], input="x\n", log_level="INFO"
    )

    assert result.returncode == 255
    assert f"channel 0: open failed: administratively prohibited: {reason}\n" in result.stderr
    assert "stdio forwarding failed" in result.stderr
    assert result.stdout == ""
    # Audited on the gateway's writes thread: there within moments of the refusal.
    [event] = wait_until(lambda: gateway.audit("forward.refused", after=seq), timeout=5)
    assert event["details"] == {
        "grant": grant.id,
        "destination": f"{destination}:5432",
        "reason": reason,
    }
    assert echo_server.connections == before
    assert gateway.sessions(grant) == []


def test_forward_to_a_granted_target_removed_since(gateway: Server, tmp_path: Path) -> None:
    # The grant names a target that was removed afterwards: refused as unknown.
    name = f"gone-{secrets.token_hex(3)}"
    password = tmp_path / "pw"
    password.write_text("pw\n")
    gateway.cli(
        *("target", "add-postgres", name, "--host", "127.0.0.1", "--database", "d"),
        *("--user", "u", "--password-file", str(password), "--no-check"),
    )
    grant = gateway.issue("echo-db", name)
    gateway.cli("target", "remove", name, "--force")

    result = gateway.ssh(
        "echo-db", grant.key, opts=["-W", f"{name}:5432"], input="x\n", log_level="INFO"
    )

    assert result.returncode == 255
    assert f"administratively prohibited: unknown target '{name}'" in result.stderr


def test_grant_without_port_forwarding_cannot_forward(gateway: Server) -> None:
    grant = gateway.issue("echo-db", options=["--no-port-forwarding"])
    local_port = free_port()

    refused = gateway.ssh(
        "echo-db", grant.key, opts=["-W", "echo-db:5432"], input="x\n", log_level="INFO"
    )
    tunnel = gateway.spawn(
        "echo-db", grant.key, opts=["-N", "-L", f"{local_port}:echo-db:5432"], log_level="INFO"
    )
    with _connect_when_listening(local_port) as sock:
        sock.sendall(b"anyone there?")
        # The bastion refuses the channel; ssh closes the local connection (data unread: RST).
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""
    tunnel.wait_stderr("administratively prohibited")
    tunnel.stop()

    assert refused.returncode == 255
    assert "administratively prohibited: port forwarding is not permitted by this grant" in (
        refused.stderr
    )
    assert gateway.sessions(grant) == []


def test_forward_refused_for_lack_of_permission_is_audited(gateway: Server) -> None:
    grant = gateway.issue("echo-db", options=["--no-port-forwarding"])
    seq = gateway.audit_seq()

    result = gateway.ssh("echo-db", grant.key, opts=["-W", "echo-db:5432"], input="x\n")

    assert result.returncode == 255
    events = wait_until(lambda: gateway.audit("forward.refused", after=seq), timeout=5)
    assert [e["details"]["grant"] for e in events] == [grant.id]


def test_ssh_target_grant_has_no_port_forwarding(gateway: Server) -> None:
    grant = gateway.issue("prod-web")

    result = gateway.ssh(
        "prod-web", grant.key, opts=["-W", "prod-web:22"], input="x\n", log_level="INFO"
    )

    assert result.returncode == 255
    assert "administratively prohibited" in result.stderr


def test_no_shell_or_command_on_a_database_target(gateway: Server) -> None:
    grant = gateway.issue("echo-db")

    result = gateway.ssh("echo-db", grant.key, "echo hi", log_level="INFO")

    assert result.returncode == 255
    assert result.stdout == ""
    assert (
        "administratively prohibited: echo-db is a postgres target: open a tunnel with"
        " -N -L PORT:echo-db:" in result.stderr
    )


# -- the target side failing -------------------------------------------------------------


def _notice_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_target_down(gateway: Server, target_login_key: Path, sshd: Sshd) -> None:
    closed_port = free_port()  # nothing listens there
    gateway.cli(
        *("target", "add-ssh", "down-web", "--host", "127.0.0.1", "--port", str(closed_port)),
        *("--user", "bastion-t", "--identity", str(target_login_key)),
        *("--host-key", str(sshd.host_pub_path), "--no-check"),  # down on purpose
    )
    grant = gateway.issue("down-web")
    seq = gateway.audit_seq()

    started = time.monotonic()
    result = gateway.ssh("down-web", grant.key, "echo never")

    assert time.monotonic() - started < 5
    assert result.returncode == 255
    assert result.stdout == ""
    [line] = _notice_lines(result.stderr)
    assert line.startswith(f"[bastion] can't reach target down-web (127.0.0.1:{closed_port}): ")
    [record] = gateway.ended_sessions(grant)
    assert (record["end_reason"], record["exit_status"]) == ("target-error", 255)
    [event] = gateway.audit("target.unreachable", after=seq)
    assert event["details"]["target"] == "down-web"
    assert event["details"]["grant"] == grant.id

    # The bastion goes on serving everyone else.
    other = gateway.issue("prod-web")
    ok = gateway.ssh("prod-web", other.key, "echo still-serving")
    assert (ok.returncode, ok.stdout) == (0, "still-serving\n"), ok.stderr


def test_target_host_key_mismatch(
    gateway: Server, target_login_key: Path, sshd: Sshd, tmp_path: Path
) -> None:
    impostor = keygen(tmp_path / "impostor_host_key")
    gateway.cli(
        *("target", "add-ssh", "mitm-web", "--host", "127.0.0.1", "--port", str(sshd.port)),
        *("--user", "bastion-t", "--identity", str(target_login_key)),
        *("--host-key", f"{impostor}.pub", "--no-check"),  # the registration check would refuse
    )
    grant = gateway.issue("mitm-web")
    seq = gateway.audit_seq()
    sshd_log_offset = sshd.log_path.stat().st_size

    result = gateway.ssh("mitm-web", grant.key, "echo never")

    assert result.returncode == 255
    assert result.stdout == ""
    [line] = _notice_lines(result.stderr)
    assert line == (
        "[bastion] target mitm-web presented a host key that does not match the pinned one;"
        " refusing to connect"
    )
    [record] = gateway.ended_sessions(grant)
    assert record["end_reason"] == "target-error"
    [event] = gateway.audit("target.host_key_mismatch", after=seq)
    assert event["details"]["target"] == "mitm-web"
    # The bastion never authenticated to the impostor.
    assert "Accepted publickey" not in sshd.log_path.read_bytes()[sshd_log_offset:].decode(
        errors="replace"
    )


def test_target_host_key_mismatch_on_a_pty(
    gateway: Server, target_login_key: Path, sshd: Sshd, tmp_path: Path
) -> None:
    impostor = keygen(tmp_path / "impostor_host_key")
    gateway.cli(
        *("target", "add-ssh", "mitm-pty", "--host", "127.0.0.1", "--port", str(sshd.port)),
        *("--user", "bastion-t", "--identity", str(target_login_key)),
        *("--host-key", f"{impostor}.pub", "--no-check"),
    )
    grant = gateway.issue("mitm-pty")

    term = gateway.spawn_pty("mitm-pty", grant.key)

    assert term.wait() == 255
    assert "[bastion] target mitm-pty presented a host key that does not match" in term.output
