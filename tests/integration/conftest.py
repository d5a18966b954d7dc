"""Fixtures for end-to-end tests of `bastion serve` with the real OpenSSH clients.

The gateway runs as a subprocess (`bastion --home H serve --listen 127.0.0.1:PORT`),
started and stopped by its PID; `ssh`, `scp` and `sftp` connect to it as an agent
would, and it relays to the session-wide OpenSSH sshd from `tests/conftest.py`, where
it logs in as the unprivileged user `bastion-t`.

Each test module gets one bastion home and one running gateway (`gateway`); tests stay
independent by issuing their own grants and looking only at the records and audit
events of those grants. Tests that stop or crash the gateway start their own
(`make_gateway`). Every `ssh` a test starts in the background (`Server.spawn`,
`Server.spawn_pty`) is stopped by its PID after the test.

The home's `bastion.toml` lowers the TTL floor to 2 s and the approval wait to
`APPROVAL_TIMEOUT_S`, so expiry and approval time-outs take seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import json
import os
import pty
import re
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bastion.cli import cli as bastion_cli
from tests.peers import Sshd, free_port, ssh_command, write_known_hosts

LOOPBACK = "127.0.0.1"
BASTION_BIN = Path(sys.executable).with_name("bastion")
APPROVAL_TIMEOUT_S = 4
CONFIG = f"""\
[grants]
min_ttl = "2s"

[approvals]
timeout = "{APPROVAL_TIMEOUT_S}s"

[targets.gated-web]
shell_requires_approval = true

[targets.raw-echo]
raw_forwarding = true

[targets.banner-sshd]
raw_forwarding = true
"""
ECHO_DB_PASSWORD = "echo-db-password"
# Never let the developer's own bastion settings leak into a test.
_CLEAN = {"BASTION_HOME": None, "BASTION_CA_PASSPHRASE": None}


# -- the bastion CLI ---------------------------------------------------------------


def cli(home: Path, *args: str, actor: str | None = None, env: dict[str, str] | None = None) -> str:
    """`bastion [--as ACTOR] --home HOME ARGS...` in-process (fast); must succeed."""
    argv = ["--home", str(home), *(["--as", actor] if actor else []), *args]
    result = CliRunner().invoke(bastion_cli, argv, env={**_CLEAN, **(env or {})})
    assert result.exit_code == 0, (argv, result.output, result.exception)
    return result.stdout


def cli_json(home: Path, *args: str) -> Any:
    return json.loads(cli(home, *args, "--json"))


def run_cli(home: Path, *args: str, actor: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real `bastion` executable as a separate process (as an operator runs it)."""
    env = {k: v for k, v in os.environ.items() if k not in _CLEAN}
    argv = [str(BASTION_BIN), "--home", str(home), *(["--as", actor] if actor else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)


def keygen(path: Path, comment: str = "") -> Path:
    """A fresh Ed25519 key pair made by ssh-keygen; returns the private key path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )
    return path


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; return that, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def unique_sleep() -> str:
    """A `sleep 600` whose command line is unique (`sleep 600.123456`), to find it on the target."""
    return f"sleep 600.{secrets.randbelow(10**6):06d}"


def target_processes(sshd: Sshd, needle: str) -> list[str]:
    """Command lines of `bastion-t`'s processes on the target that contain `needle`."""
    return [cmd for cmd in sshd.processes_of_login_user() if needle in cmd]


def kill_target_processes(sshd: Sshd, needle: str) -> None:
    """SIGKILL (by PID) whatever `bastion-t` still runs with `needle` in its command line."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        uid = re.search(r"^Uid:\s+(\d+)", status, re.M)
        if uid and int(uid.group(1)) == Sshd.UNPRIVILEGED_UID and needle in cmd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


# -- processes a test starts in the background ---------------------------------------

_LIVE: list[Spawned | PtySsh] = []


class Spawned:
    """A background process whose stdout and stderr are collected as they arrive.

    `exited_at` is the wall-clock time (time.time()) at which it was seen to exit. With
    `keep_stdout=False` stdout is only counted (`stdout_size`), for endless streams.
    """

    def __init__(
        self, argv: Sequence[str], stdin: Any = subprocess.DEVNULL, keep_stdout: bool = True
    ) -> None:
        self.argv = list(argv)
        self.keep_stdout = keep_stdout
        self._out_size = 0
        self.proc = subprocess.Popen(
            self.argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.started_at = time.time()
        self.exited_at: float | None = None
        self._out = bytearray()
        self._err = bytearray()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self._err), daemon=True),
            threading.Thread(target=self._reap, daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        _LIVE.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _drain(self, stream: Any, into: bytearray) -> None:
        while chunk := stream.read1(65536):
            with self._lock:
                if into is self._out:
                    self._out_size += len(chunk)
                    if not self.keep_stdout:
                        continue
                into.extend(chunk)

    def _reap(self) -> None:
        self.proc.wait()
        self.exited_at = time.time()

    @property
    def stdout(self) -> str:
        with self._lock:
            return self._out.decode(errors="replace")

    @property
    def stderr(self) -> str:
        with self._lock:
            return self._err.decode(errors="replace")

    @property
    def stdout_size(self) -> int:
        with self._lock:
            return self._out_size

    def wait_stderr(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until stderr matches the regex `pattern`; fail if the process exits first."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.stderr)
            if found:
                return found
            if self.proc.poll() is not None:
                for thread in self._threads:
                    thread.join(2)
                found = re.search(pattern, self.stderr)
                if found:
                    return found
                raise AssertionError(
                    f"exited {self.proc.returncode} without {pattern!r} on stderr:"
                    f" {self.stderr!r} (stdout {self.stdout[-500:]!r})"
                )
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {pattern!r} on stderr after {timeout}s: {self.stderr!r}")
            time.sleep(0.02)

    def wait(self, timeout: float = 10.0) -> int:
        """Exit status, once it has exited and its output has been read to the end."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.argv[-1]!r} still running after {timeout}s; stderr {self.stderr!r}"
            ) from None
        for thread in self._threads:
            thread.join(5)
        return rc

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, by PID."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for thread in self._threads:
            thread.join(2)


class PtySsh:
    """`ssh -tt ...` on a real pseudo-terminal (pty.fork), as a person at a terminal runs it.

    Everything written to the terminal (the remote output and ssh's own stderr) is
    collected in `output`; `type()` sends keystrokes; `resize()` changes the window size
    the way a terminal emulator does (TIOCSWINSZ on the master, then SIGWINCH).
    """

    def __init__(
        self, argv: Sequence[str], rows: int = 24, cols: int = 80, term: str = "vt220"
    ) -> None:
        env = {**os.environ, "TERM": term}
        pid, fd = pty.fork()
        if pid == 0:  # the child: the pty's slave side is its stdin/stdout/stderr
            try:
                fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                os.execvpe(argv[0], list(argv), env)
            finally:
                os._exit(127)
        self.pid = pid
        self.fd = fd
        self.started_at = time.time()
        self.exited_at: float | None = None
        self.returncode: int | None = None
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reaper = threading.Thread(target=self._reap, daemon=True)
        self._reader.start()
        self._reaper.start()
        _LIVE.append(self)

    def _read(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.2)
                if not ready:
                    if self.returncode is not None:
                        return
                    continue
                chunk = os.read(self.fd, 65536)
            except (OSError, ValueError):  # EIO: the child exited; ValueError: stopped
                return
            if not chunk:
                return
            with self._lock:
                self._buf.extend(chunk)

    def _reap(self) -> None:
        _, status = os.waitpid(self.pid, 0)
        self.exited_at = time.time()
        self.returncode = os.waitstatus_to_exitcode(status)

    @property
    def output(self) -> str:
        with self._lock:
            return self._buf.decode(errors="replace")

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGWINCH)

    def expect(self, pattern: str, timeout: float = 10.0, since: int = 0) -> re.Match[str]:
        """Wait until the terminal output (from offset `since`) matches the regex `pattern`."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.output[since:])
            if found:
                return found
            if self.returncode is not None:
                self._reader.join(2)
                found = re.search(pattern, self.output[since:])
                if found:
                    return found
                raise AssertionError(
                    f"ssh exited {self.returncode} without {pattern!r}: {self.output!r}"
                )
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {pattern!r} after {timeout}s in {self.output!r}")
            time.sleep(0.02)

    def wait(self, timeout: float = 10.0) -> int:
        self._reaper.join(timeout)
        if self.returncode is None:
            raise AssertionError(f"ssh -tt still running after {timeout}s: {self.output!r}")
        self._reader.join(2)
        return self.returncode

    def stop(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            self._reaper.join(3)
            if self.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self._reaper.join(3)
        self._reader.join(2)
        # Once only: stop() runs again at the end of the test, and by then this descriptor
        # number may belong to something else (a SQLite file, a socket) that a second
        # close would take away from under it.
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture(autouse=True)
def _stop_background_processes() -> Iterator[None]:
    """Whatever a test left running in the background is stopped by its PID afterwards."""
    yield
    while _LIVE:
        _LIVE.pop().stop()


# -- grants ------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    id: str
    task: str
    key: Path  # the agent's private key; the certificate is beside it as KEY-cert.pub
    data: dict[str, Any]  # `grant issue --json`

    @property
    def cert(self) -> Path:
        return Path(self.data["certificate"])

    @property
    def serial(self) -> int:
        return int(self.data["serial"])

    @property
    def key_id(self) -> str:
        return str(self.data["key_id"])

    @property
    def valid_before(self) -> float:
        """When the gateway closes its sessions: the certificate's end, in whole seconds."""
        return float(int(datetime.fromisoformat(self.data["valid_before"]).timestamp()))


# -- the gateway -------------------------------------------------------------------


class Server:
    """One bastion home and its `bastion serve` process."""

    def __init__(self, home: Path, work: Path) -> None:
        self.home = home
        self.work = work  # agent keys, known_hosts, logs
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = work / "serve.log"
        self.known_hosts = work / "known_hosts"
        self._serial = 0
        # More `serve` options and environment, for tests of operations (logs, metrics...).
        self.serve_args: list[str] = []
        self.env: dict[str, str] = {}
        host_pub = (home / "keys" / "host_ed25519.pub").read_text()
        write_known_hosts(self.known_hosts, self.port, host_pub)

    # process control

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {k: v for k, v in os.environ.items() if k not in _CLEAN} | self.env
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(BASTION_BIN), "--home", str(self.home), "serve",
                 "--listen", f"{LOOPBACK}:{self.port}", *self.serve_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            )  # fmt: skip
        # Wait for its own "listening" line rather than probing the port with a connection.
        deadline = time.monotonic() + 20
        while f"listening on {LOOPBACK}:{self.port}" not in self.log()[offset:]:
            if self.proc.poll() is not None:
                raise AssertionError(f"bastion serve exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"bastion serve not listening after 20s:\n{self.log()}")
            time.sleep(0.02)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send `sig` to the serve process by PID and wait; SIGKILL if it does not exit."""
        proc = self.proc
        assert proc is not None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"bastion serve ignored {sig.name} for {timeout}s") from None
        return proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # the CLI against this home

    def cli(self, *args: str, actor: str | None = None) -> str:
        return cli(self.home, *args, actor=actor)

    def run_cli(self, *args: str, actor: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(self.home, *args, actor=actor)

    def cli_json_all(self, *args: str) -> Any:
        return cli_json(self.home, *args)

    def issue(self, *targets: str, task: str | None = None, options: Sequence[str] = ()) -> Grant:
        """`grant issue --agent bot --target ... --generate-key DIR --json` (a fresh key)."""
        self._serial += 1
        task = task or f"task-{self._serial}"
        key_dir = self.work / "agents" / f"{task}-{secrets.token_hex(3)}"
        data = cli_json(
            self.home,
            *("grant", "issue", "--agent", "bot", "--task", task),
            *[arg for t in targets for arg in ("--target", t)],
            *("--generate-key", str(key_dir), *options),
        )
        return Grant(id=data["id"], task=task, key=key_dir / "id_ed25519", data=data)

    def sessions(self, grant: Grant | str | None = None) -> list[dict[str, Any]]:
        """`sessions list --json` (oldest first), only `grant`'s if given."""
        found = cli_json(self.home, "sessions", "list", "--limit", "100000")
        grant_id = grant.id if isinstance(grant, Grant) else grant
        return [s for s in reversed(found) if grant_id is None or s["grant"] == grant_id]

    def ended_sessions(
        self, grant: Grant, count: int = 1, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """`grant`'s session records, once `count` of them exist and all have ended."""

        def ended() -> list[dict[str, Any]] | None:
            found = self.sessions(grant)
            if len(found) >= count and all(s["end_reason"] for s in found):
                return found
            return None

        try:
            return wait_until(ended, timeout)  # type: ignore[no-any-return]
        except AssertionError:
            raise AssertionError(
                f"sessions of {grant.id} not ended: {self.sessions(grant)}"
            ) from None

    def active_session(self, grant: Grant, timeout: float = 10.0) -> dict[str, Any]:
        """`grant`'s one live session record, once it exists."""

        def live() -> dict[str, Any] | None:
            found = [s for s in self.sessions(grant) if s["end_reason"] is None]
            return found[0] if found else None

        return wait_until(live, timeout)  # type: ignore[no-any-return]

    def audit(self, action: str | None = None, after: int = 0) -> list[dict[str, Any]]:
        """`audit list --json`, events after seq `after`, of one action if given."""
        events = cli_json(self.home, "audit", "list")
        return [e for e in events if e["seq"] > after and (action is None or e["action"] == action)]

    def audit_seq(self) -> int:
        events = cli_json(self.home, "audit", "list")
        return int(events[-1]["seq"]) if events else 0

    # OpenSSH clients

    def ssh_argv(
        self,
        login: str,
        key: Path,
        *command: str,
        opts: Sequence[str] = (),
        log_level: str = "ERROR",
    ) -> list[str]:
        """A hermetic `ssh` to LOGIN@127.0.0.1:PORT (tests.peers.ssh_command), strict host key."""
        argv = ssh_command(self.port, key, login, self.known_hosts, *command, extra_opts=opts)
        # ssh keeps the first value of an option: replace the helper's, don't append another.
        return [f"LogLevel={log_level}" if a == "LogLevel=ERROR" else a for a in argv]

    def ssh(
        self,
        login: str,
        key: Path,
        *command: str,
        opts: Sequence[str] = (),
        input: str | None = None,
        log_level: str = "ERROR",
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.ssh_argv(login, key, *command, opts=opts, log_level=log_level),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spawn(
        self,
        login: str,
        key: Path,
        *command: str,
        opts: Sequence[str] = (),
        log_level: str = "ERROR",
        keep_stdout: bool = True,
    ) -> Spawned:
        return Spawned(
            self.ssh_argv(login, key, *command, opts=opts, log_level=log_level),
            keep_stdout=keep_stdout,
        )

    def spawn_pty(
        self, login: str, key: Path, *command: str, rows: int = 24, cols: int = 80
    ) -> PtySsh:
        return PtySsh(self.ssh_argv(login, key, *command, opts=["-tt"]), rows=rows, cols=cols)

    def client_opts(self, key: Path) -> list[str]:
        """Options for scp/sftp (which take the port as -P)."""
        return [
            "-F", "/dev/null",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR",
            "-i", str(key),
            "-P", str(self.port),
        ]  # fmt: skip


# -- peers: the upstream login, a TCP echo "database" ----------------------------------


@contextlib.contextmanager
def serving(home: Path, work: Path) -> Iterator[Server]:
    """`bastion serve` on `home`, stopped by PID however the block ends."""
    server = Server(home, work)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class RecordingWebhook(http.server.BaseHTTPRequestHandler):
    """A notification hook's receiver: each POST's JSON body and Content-Type, in order.
    `status` is what it answers (set 500 to make the hook fail)."""

    received: list[dict[str, Any]]
    url: str
    status = 204

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length))
        type(self).received.append({"body": body, "content_type": self.headers.get("Content-Type")})
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def recording_webhook(path: str) -> Iterator[type[RecordingWebhook]]:
    """A RecordingWebhook on 127.0.0.1 at a free port, at `path` (its `url`), stopped after."""
    handler = type("Hook", (RecordingWebhook,), {"received": []})
    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://{LOOPBACK}:{server.server_address[1]}{path}"
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(2)


@pytest.fixture(scope="session")
def target_login_key(sshd: Sshd, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bastion's upstream key for `bastion-t` on the sshd target."""
    key = keygen(tmp_path_factory.mktemp("target-login") / "id_ed25519", "bastion-upstream")
    sshd.add_authorized_key(Path(f"{key}.pub").read_text())
    return key


class EchoServer:
    """A TCP echo server on 127.0.0.1 (threads in the test process): what it reads, it sends
    back; at EOF it half-closes, then closes."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(2)


@pytest.fixture(scope="session")
def echo_server() -> Iterator[EchoServer]:
    server = EchoServer()
    try:
        yield server
    finally:
        server.close()


# -- homes and gateways --------------------------------------------------------------


def add_ssh_target(
    home: Path, name: str, sshd: Sshd, login_key: Path, port: int | None = None
) -> None:
    """`target add-ssh NAME` as `bastion-t` with sshd's host key pinned, at sshd's port
    unless `port` says otherwise (something that is not sshd: registered `--no-check`)."""
    cli(
        home,
        *("target", "add-ssh", name, "--host", LOOPBACK, "--port", str(port or sshd.port)),
        *("--user", sshd.login_user, "--identity", str(login_key)),
        *("--host-key", str(sshd.host_pub_path)),
        *(["--no-check"] if port is not None else []),
    )


def make_home(
    base: Path,
    sshd: Sshd,
    login_key: Path,
    echo_port: int,
    *,
    extra_config: str = "",
    keys_from: Path | None = None,
    add_targets: bool = True,
) -> Path:
    """An initialized home with short TTL floor/approval wait and these targets:

    - `prod-web`: the sshd target, as `bastion-t`, host key pinned;
    - `gated-web`: the same sshd, but opening a shell there waits for approval;
    - `echo-db`, `other-db`: PostgreSQL targets at the TCP echo server. A grant naming a
      PostgreSQL target is what permits port forwarding; forwards to these are refused or
      allowed before any byte moves, which is what the tests look at (a forward to a
      PostgreSQL target speaks the PostgreSQL protocol, which the echo server does not);
    - `raw-echo`: an SSH-kind target registered at the TCP echo server, with
      `raw_forwarding = true`, so that a forward to it (`-L PORT:raw-echo:22`) is relayed
      as plain bytes. (A forward to `prod-web`, an sshd, is refused.)

    Several nodes on one shared store: `extra_config` adds to bastion.toml (the store
    URL, the node name), `keys_from` is the first node's home whose CA and host key this
    one copies, and `add_targets=False` leaves the (shared) targets alone.
    """
    home = base / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "bastion.toml").write_text(CONFIG + extra_config)
    if keys_from is not None:
        shutil.copytree(keys_from / "keys", home / "keys")
    cli(home, "init")
    if not add_targets:
        return home
    for name in ("prod-web", "gated-web"):
        add_ssh_target(home, name, sshd, login_key)
    add_ssh_target(home, "raw-echo", sshd, login_key, port=echo_port)
    for name in ("echo-db", "other-db"):
        cli(
            home,
            *("target", "add-postgres", name, "--host", LOOPBACK, "--port", str(echo_port)),
            *("--database", "d", "--user", "u", "--password-env", "PW", "--no-check"),
            env={"PW": ECHO_DB_PASSWORD},
        )
    return home


@pytest.fixture(scope="module")
def gateway(
    sshd: Sshd,
    target_login_key: Path,
    echo_server: EchoServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """A running `bastion serve` on a home of this module's own."""
    base = tmp_path_factory.mktemp("gateway")
    server = Server(make_home(base, sshd, target_login_key, echo_server.port), base)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_gateway(
    sshd: Sshd,
    target_login_key: Path,
    echo_server: EchoServer,
    tmp_path: Path,
) -> Iterator[Callable[[], Server]]:
    """A factory of gateways on fresh homes, for tests that stop or crash them."""
    servers: list[Server] = []

    def make() -> Server:
        base = tmp_path / f"gw{len(servers)}"
        base.mkdir()
        server = Server(make_home(base, sshd, target_login_key, echo_server.port), base)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.stop(signal.SIGKILL)


# -- a slow reader of a stream, and the bastion's memory meanwhile ---------------------------

PAUSE_S = 3
# Reads 64 KiB every 10 ms for PAUSE_S seconds, then the rest at full speed; prints the total.
SLOW_READER = (
    "import sys, time\n"
    f"end = time.monotonic() + {PAUSE_S}; n = 0\n"
    "while (b := sys.stdin.buffer.read1(65536)):\n"
    "    n += len(b)\n"
    "    if time.monotonic() < end: time.sleep(0.01)\n"
    "print(n)\n"
)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def peak_growth(pid: int, proc: subprocess.Popen[bytes], seconds: float) -> int:
    base = _rss(pid)
    peak = base
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        peak = max(peak, _rss(pid))
        time.sleep(0.05)
    return peak - base


def drain_slowly(
    bastion_pid: int, argv: list[str], env: dict[str, str] | None = None
) -> tuple[int, int]:
    """Run `argv` with its output read by SLOW_READER; (the bastion's peak RSS growth
    meanwhile, bytes read). `argv` must exit 0."""
    producer = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    slow = subprocess.Popen(
        ["python3", "-c", SLOW_READER], stdin=producer.stdout, stdout=subprocess.PIPE, text=True
    )
    assert producer.stdout is not None
    producer.stdout.close()
    try:
        growth = peak_growth(bastion_pid, producer, PAUSE_S)
        out, _ = slow.communicate(timeout=120)
        assert producer.wait(60) == 0
    finally:
        for proc in (producer, slow):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return growth, int(out)
