"""Real peers for integration tests: an OpenSSH ``sshd`` and a PostgreSQL 15 server.

Both run as child processes of the test run, listen only on 127.0.0.1 on a free port,
and are stopped by the PID this module started (never by name). See
``/work/shared/notes/testing.md`` for the background.

``Sshd`` runs as root inside a private mount namespace, with tmpfs mounted over
``/run`` (for ``/run/sshd``, utmp), ``/var/log`` (lastlog, wtmp) and ``/root`` (shell
history), so a login touches nothing on the host. Its host key, config, authorized keys
and log all live in the work dir, which must therefore not be under one of those three.

``Postgres`` runs ``initdb`` and the server as the ``postgres`` OS user (``initdb`` refuses
root) in a temp dir under ``/tmp`` that it creates, and removes on ``stop()``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "PG_BIN",
    "SSHD_BIN",
    "PeerError",
    "Postgres",
    "Sshd",
    "free_port",
    "ssh_command",
    "wait_for_port",
    "write_known_hosts",
]

SSHD_BIN = Path("/usr/sbin/sshd")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
LOOPBACK = "127.0.0.1"

# Directories hidden behind a tmpfs in sshd's mount namespace, with the tmpfs mode.
_SSHD_TMPFS = {"/run": "0755", "/var/log": "0755", "/root": "0700"}


class PeerError(RuntimeError):
    """A peer failed to start, stop or run a command; the message carries its log."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    port: int,
    timeout: float = 10.0,
    *,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``.

    If ``proc`` is given and exits first, fail at once instead of waiting out the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise PeerError(
                f"process {proc.pid} exited with {proc.returncode} before listening on port {port}"
            )
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"nothing listening on {LOOPBACK}:{port} after {timeout}s"
                ) from None
            time.sleep(0.05)


def write_known_hosts(path: Path, port: int, host_pub_line: str) -> None:
    """Write (replace) ``path`` with a known_hosts entry for 127.0.0.1:``port``.

    ``host_pub_line`` is an OpenSSH public key line (``TYPE BASE64 [comment]``); the
    comment is dropped. With ``StrictHostKeyChecking=yes`` this is the only way the
    client will accept the host: nothing is trusted on first use.
    """
    keytype, b64 = host_pub_line.split()[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[{LOOPBACK}]:{port} {keytype} {b64}\n")


def ssh_command(
    port: int,
    key: Path,
    user: str,
    known_hosts: Path,
    *args: str,
    extra_opts: Sequence[str] = (),
) -> list[str]:
    """Build a hermetic OpenSSH client argv for ``user@127.0.0.1:port``.

    No user or system config is read (``-F /dev/null``, no global known hosts), only
    ``key`` is offered, the host key must already be in ``known_hosts`` (see
    :func:`write_known_hosts`), and nothing prompts. ``extra_opts`` go before the
    destination (e.g. ``["-tt"]`` or ``["-o", "RequestTTY=no"]``); ``args`` form the
    remote command.
    """
    return [
        "ssh",
        "-F", "/dev/null",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", "LogLevel=ERROR",
        *extra_opts,
        "-i", str(key),
        "-p", str(port),
        f"{user}@{LOOPBACK}",
        *args,
    ]  # fmt: skip


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _descendants(pid: int) -> list[int]:
    """PIDs of all live descendants of ``pid``, read from /proc (children first)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised comm: state, ppid, ...
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (orphans are reaped by PID 1, maybe late)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _stop_process(
    proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float = 10.0
) -> None:
    """Send ``sig`` to ``proc`` (by PID), wait, and SIGKILL it if it does not exit."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Peer:
    """Context-manager plumbing shared by the peers."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Sshd(_Peer):
    """A real OpenSSH sshd on 127.0.0.1, run as root in a private mount namespace.

    Log in as ``root`` with a key added through ``authorized_keys`` or
    :meth:`add_authorized_key` (sshd re-reads the file on every login). Inside the
    namespace ``/root`` is an empty tmpfs, so the session sees an empty home directory
    (and e.g. no ``~/.pyenv``; use ``/usr/bin/python3``).
    """

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir.resolve()
        for hidden in _SSHD_TMPFS:
            if self.work_dir.is_relative_to(hidden):
                raise ValueError(
                    f"sshd work dir {self.work_dir} would be hidden by the tmpfs over {hidden}"
                )
        self.host_key_path = self.work_dir / "ssh_host_ed25519_key"
        self.host_pub_path = self.work_dir / "ssh_host_ed25519_key.pub"
        self.config_path = self.work_dir / "sshd_config"
        self.authorized_keys_path = self.work_dir / "authorized_keys"
        self.log_path = self.work_dir / "sshd.log"
        self.port = 0
        self.host_pub = ""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """PID of the running sshd listener (it is ``exec``-ed, so unshare's PID too)."""
        if self._proc is None:
            raise PeerError("sshd is not running")
        return self._proc.pid

    def start(
        self,
        authorized_keys: Iterable[str] = (),
        trusted_user_ca_keys: Path | None = None,
        extra_config: str = "",
    ) -> None:
        """Generate a host key, write the config and run sshd until it listens.

        ``authorized_keys`` are OpenSSH public key lines (options allowed);
        ``trusted_user_ca_keys`` is a file of CA public keys for certificate logins;
        ``extra_config`` is appended verbatim to sshd_config.
        """
        if self._proc is not None:
            raise PeerError("sshd already started")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if not self.host_key_path.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bastion-test-sshd",
                 "-f", str(self.host_key_path)],
                check=True,
            )  # fmt: skip
        self.host_pub = self.host_pub_path.read_text().strip()
        self.authorized_keys_path.write_text("".join(f"{k.strip()}\n" for k in authorized_keys))
        self.port = free_port()

        config = [
            f"ListenAddress {LOOPBACK}",
            f"Port {self.port}",
            f"HostKey {self.host_key_path}",
            "PidFile none",
            f"AuthorizedKeysFile {self.authorized_keys_path}",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "Subsystem sftp internal-sftp",
            "AcceptEnv LANG LC_*",
            "LogLevel VERBOSE",
        ]
        if trusted_user_ca_keys is not None:
            config.append(f"TrustedUserCAKeys {trusted_user_ca_keys.resolve()}")
        self.config_path.write_text("\n".join(config) + "\n" + extra_config + "\n")

        mounts = " && ".join(
            f"mount -t tmpfs -o mode={mode} tmpfs {path}" for path, mode in _SSHD_TMPFS.items()
        )
        script = (
            f"{mounts} && mkdir -m 0755 /run/sshd && "
            f"exec {SSHD_BIN} -D -e -f {shlex.quote(str(self.config_path))}"
        )
        with self.log_path.open("ab") as log:
            # No --fork: unshare execs sh, which execs sshd, so Popen's PID is sshd's.
            self._proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        try:
            wait_for_port(self.port, proc=self._proc)
        except (PeerError, TimeoutError) as exc:
            self.stop()
            raise PeerError(f"sshd did not start: {exc}\n{_log_tail(self.log_path)}") from exc

    def stop(self) -> None:
        """Stop the listener by PID, then any per-connection sshd children it left.

        sshd puts each connection's process in its own session, so they are not in the
        listener's process group; they are found through /proc before the listener dies.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        children = _descendants(proc.pid) if proc.poll() is None else []
        _stop_process(proc, signal.SIGTERM)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while children and time.monotonic() < deadline:
            children = [c for c in children if _alive(c)]
            time.sleep(0.05)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)

    def add_authorized_key(self, line: str) -> None:
        """Allow one more public key (an OpenSSH line) to log in as root."""
        with self.authorized_keys_path.open("a") as f:
            f.write(line.strip() + "\n")


class Postgres(_Peer):
    """A real PostgreSQL 15 server on 127.0.0.1, run as the ``postgres`` OS user.

    TCP connections authenticate with SCRAM-SHA-256; the unix socket in ``socket_dir``
    trusts everyone and is what :meth:`psql` uses to administer the server.
    """

    OS_USER = "postgres"

    def __init__(self) -> None:
        self.base_dir: Path | None = None
        self.datadir = Path()
        self.socket_dir = Path()
        self.log_path = Path()
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """PID of the postmaster."""
        if self._proc is None:
            raise PeerError("postgres is not running")
        return self._proc.pid

    def _run_as_postgres(
        self, argv: Sequence[str], *, input: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        assert self.base_dir is not None
        return subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self.OS_USER,
            group=self.OS_USER,
            extra_groups=[],
            cwd=self.base_dir,
            env=self._env(),
        )

    def _env(self) -> dict[str, str]:
        assert self.base_dir is not None
        return {"PATH": f"{PG_BIN}:/usr/bin:/bin", "HOME": str(self.base_dir), "LANG": "C.UTF-8"}

    def start(self) -> None:
        """initdb a fresh cluster and run the server until it accepts connections."""
        if self._proc is not None:
            raise PeerError("postgres already started")
        # Under /tmp, short (unix socket paths are limited to ~107 bytes) and traversable
        # by the postgres user (pytest's tmp dirs are 0700 root).
        base = Path(tempfile.mkdtemp(prefix="bastion-pg-", dir="/tmp"))
        self.base_dir = base
        base.chmod(0o755)
        shutil.chown(base, self.OS_USER, self.OS_USER)
        self.datadir = base / "data"
        self.socket_dir = base
        self.log_path = base / "postgres.log"

        initdb = self._run_as_postgres([
            str(PG_BIN / "initdb"), "-D", str(self.datadir), "-U", self.OS_USER,
            "--auth-host=scram-sha-256", "--auth-local=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions",
        ])  # fmt: skip
        if initdb.returncode != 0:
            self._remove_base_dir()
            raise PeerError(f"initdb failed:\n{initdb.stdout}\n{initdb.stderr}")
        (self.datadir / "pg_hba.conf").write_text(
            "# Written by tests/peers.py\n"
            "local all all trust\n"
            f"host all all {LOOPBACK}/32 scram-sha-256\n"
        )

        self.port = free_port()
        settings = {
            "listen_addresses": LOOPBACK,
            "unix_socket_directories": str(self.socket_dir),
            "password_encryption": "scram-sha-256",
            # Throwaway cluster: durability only costs time.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        argv = [str(PG_BIN / "postgres"), "-D", str(self.datadir), "-p", str(self.port)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                user=self.OS_USER,
                group=self.OS_USER,
                extra_groups=[],
                cwd=base,
                env=self._env(),
            )
        try:
            self._wait_ready()
        except (PeerError, TimeoutError) as exc:
            log_tail = _log_tail(self.log_path)
            self.stop()
            raise PeerError(f"postgres did not start: {exc}\n{log_tail}") from exc

    def _wait_ready(self, timeout: float = 30.0) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise PeerError(f"postmaster exited with {self._proc.returncode}")
            ready = self._run_as_postgres([
                str(PG_BIN / "pg_isready"), "-q", "-h", str(self.socket_dir),
                "-p", str(self.port), "-U", self.OS_USER, "-d", "postgres",
            ])  # fmt: skip
            if ready.returncode == 0:
                wait_for_port(self.port, proc=self._proc)
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"postgres not ready after {timeout}s")
            time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster PID), wait, and remove the temp dir."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _stop_process(proc, signal.SIGINT, timeout=30.0)
        self._remove_base_dir()

    def _remove_base_dir(self) -> None:
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def psql(
        self, sql: str, db: str = "postgres", *, variables: Mapping[str, str] | None = None
    ) -> str:
        """Run ``sql`` as the ``postgres`` superuser over the unix socket; return stdout.

        Output is unaligned and tuples-only (``-A -t``); the first error aborts and raises
        :class:`PeerError`. ``variables`` are passed with ``-v`` so the SQL can quote them
        safely as ``:'name'`` (literal) or ``:"name"`` (identifier).
        """
        if self._proc is None:
            raise PeerError("postgres is not running")
        argv = [
            str(PG_BIN / "psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.socket_dir), "-p", str(self.port), "-U", self.OS_USER, "-d", db,
        ]  # fmt: skip
        for name, value in (variables or {}).items():
            argv += ["-v", f"{name}={value}"]
        # SQL on stdin (not -c) so that psql variables are interpolated.
        result = self._run_as_postgres([*argv, "-f", "-"], input=sql)
        if result.returncode != 0:
            raise PeerError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def create_role(self, name: str, password: str, superuser: bool = False) -> None:
        """Create a login role whose password is stored as a SCRAM-SHA-256 verifier."""
        attrs = "SUPERUSER" if superuser else "NOSUPERUSER"
        self.psql(
            f"CREATE ROLE :\"name\" LOGIN {attrs} PASSWORD :'password';",
            variables={"name": name, "password": password},
        )

    def create_database(self, name: str, owner: str) -> None:
        """Create database ``name`` owned by role ``owner``."""
        self.psql(
            'CREATE DATABASE :"name" OWNER :"owner";', variables={"name": name, "owner": owner}
        )
