"""Real peers for integration tests: an OpenSSH ``sshd`` and a PostgreSQL 15 server.

Both run as child processes of the test run, listen only on 127.0.0.1 on a free port,
and are stopped by the PID this module started (never by name). See
``/work/shared/notes/testing.md`` for the background.

``Sshd`` runs as root inside a private mount namespace, with tmpfs mounted over
``/run`` (for ``/run/sshd``, utmp), ``/var/log`` (lastlog, wtmp) and ``/root`` (shell
history), so a login touches nothing on the host. Its host key, config, authorized keys
and log all live in the work dir, which must therefore not be under one of those three.
Inside the namespace, copies of ``/etc/passwd``, ``/etc/group`` and ``/etc/shadow`` from
the work dir are bind-mounted over the real ones; they add an unprivileged login user
``bastion-t`` (uid/gid 5001) that only sshd and its sessions can see.

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
# Where the work dir is bind-mounted inside sshd's namespace (on the /run tmpfs). The
# unprivileged user reaches its home and authorized keys through this path: the work dir's
# real ancestors (e.g. pytest's 0700 /tmp/pytest-of-root) may not be traversable by it.
_SSHD_NS_WORK_DIR = Path("/run/bastion-test-sshd")
# Account databases replaced (inside sshd's namespace only) by copies in the work dir.
_SSHD_ACCOUNT_FILES = ("passwd", "group", "shadow")


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


def _mount_ns(pid: int | str) -> str | None:
    """The mount namespace of ``pid`` (e.g. ``mnt:[4026532301]``), or None if it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _ns_members(ns: str) -> list[int]:
    """PIDs of the live (non-zombie) processes in mount namespace ``ns``."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _mount_ns(entry.name) == ns and _alive(int(entry.name))
    ]


def _real_uid(pid: int) -> int | None:
    """Real UID of ``pid`` from the ``Uid:`` line of /proc/PID/status, or None if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return None


def _cmdline(pid: int) -> str:
    """Command line of ``pid`` with arguments joined by spaces ("" if gone or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(arg.decode(errors="replace") for arg in raw.split(b"\0") if arg)


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

    Two users can log in, both with any key added through ``authorized_keys`` or
    :meth:`add_authorized_key` (one file for both; sshd re-reads it on every login):

    - ``bastion-t`` (:attr:`UNPRIVILEGED_USER`, uid/gid 5001, shell ``/bin/sh``), which
      exists only inside sshd's namespace. Its home is ``work_dir/home/bastion-t`` on the
      host (:attr:`unprivileged_home`); sessions see it as
      ``/run/bastion-test-sshd/home/bastion-t``, the work dir being bind-mounted there.
      It exists for what sshd withholds from root sessions (channel ``signal`` requests).
    - ``root``: inside the namespace ``/root`` is an empty tmpfs, so the session sees an
      empty home directory (and e.g. no ``~/.pyenv``; use ``/usr/bin/python3``).

    :attr:`login_user` (the ``login_user`` constructor argument, by default
    ``bastion-t``) names the one tests should use unless they need root.
    """

    UNPRIVILEGED_USER = "bastion-t"
    UNPRIVILEGED_UID = 5001  # also its primary GID

    def __init__(self, work_dir: Path, *, login_user: str = UNPRIVILEGED_USER) -> None:
        self.work_dir = work_dir.resolve()
        for hidden in _SSHD_TMPFS:
            if self.work_dir.is_relative_to(hidden):
                raise ValueError(
                    f"sshd work dir {self.work_dir} would be hidden by the tmpfs over {hidden}"
                )
        if login_user not in ("root", self.UNPRIVILEGED_USER):
            raise ValueError(
                f"login_user must be 'root' or {self.UNPRIVILEGED_USER!r}, not {login_user!r}"
            )
        self.login_user = login_user
        self.login_uid = 0 if login_user == "root" else self.UNPRIVILEGED_UID
        self.host_key_path = self.work_dir / "ssh_host_ed25519_key"
        self.host_pub_path = self.work_dir / "ssh_host_ed25519_key.pub"
        self.config_path = self.work_dir / "sshd_config"
        self.authorized_keys_path = self.work_dir / "authorized_keys"
        self.log_path = self.work_dir / "sshd.log"
        self.etc_dir = self.work_dir / "etc"
        self.unprivileged_home = self.work_dir / "home" / self.UNPRIVILEGED_USER
        self.port = 0
        self.host_pub = ""
        self._proc: subprocess.Popen[bytes] | None = None
        # sshd's mount namespace, and an fd on it that keeps it (and so its inode number)
        # alive until stop() has finished with it.
        self._mnt_ns: str | None = None
        self._mnt_ns_fd: int | None = None

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
        # The unprivileged user needs to traverse the work dir (through its bind mount)
        # to reach its home and the authorized keys, which sshd reads with the user's UID.
        self.work_dir.chmod(0o755)
        self._write_account_files()
        if not self.host_key_path.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bastion-test-sshd",
                 "-f", str(self.host_key_path)],
                check=True,
            )  # fmt: skip
        self.host_pub = self.host_pub_path.read_text().strip()
        self.authorized_keys_path.write_text("".join(f"{k.strip()}\n" for k in authorized_keys))
        self.authorized_keys_path.chmod(0o644)  # read with the login user's UID
        self.port = free_port()

        config = [
            f"ListenAddress {LOOPBACK}",
            f"Port {self.port}",
            f"HostKey {self.host_key_path}",
            "PidFile none",
            f"AuthorizedKeysFile {_SSHD_NS_WORK_DIR / self.authorized_keys_path.name}",
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
        binds = " && ".join(
            f"mount --bind {shlex.quote(str(self.etc_dir / name))} /etc/{name}"
            for name in _SSHD_ACCOUNT_FILES
        )
        script = (
            f"{mounts} && mkdir -m 0755 /run/sshd {_SSHD_NS_WORK_DIR} && "
            f"mount --bind {shlex.quote(str(self.work_dir))} {_SSHD_NS_WORK_DIR} && "
            f"{binds} && "
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
            # Listening means sshd runs, so unshare has already entered the new namespace.
            self._mnt_ns_fd = os.open(f"/proc/{self._proc.pid}/ns/mnt", os.O_RDONLY)
            self._mnt_ns = os.readlink(f"/proc/{self._proc.pid}/ns/mnt")
        except (PeerError, TimeoutError, OSError) as exc:
            self.stop()
            raise PeerError(f"sshd did not start: {exc}\n{_log_tail(self.log_path)}") from exc

    def _write_account_files(self) -> None:
        """Write passwd/group/shadow copies adding the unprivileged user, and its home."""
        name, uid = self.UNPRIVILEGED_USER, self.UNPRIVILEGED_UID
        ns_home = _SSHD_NS_WORK_DIR / self.unprivileged_home.relative_to(self.work_dir)
        extra = {
            "passwd": f"{name}:x:{uid}:{uid}:bastion test target:{ns_home}:/bin/sh",
            "group": f"{name}:x:{uid}:",
            "shadow": f"{name}:*:19000:0:99999:7:::",
        }
        self.etc_dir.mkdir(mode=0o755, exist_ok=True)
        for file in _SSHD_ACCOUNT_FILES:
            host = Path("/etc") / file
            lines = host.read_text().splitlines()
            for line in lines:
                fields = line.split(":")
                if fields[0] == name or (file != "shadow" and fields[2:3] == [str(uid)]):
                    raise PeerError(f"{host} already has {name!r} or id {uid}: {line!r}")
            copy = self.etc_dir / file
            copy.unlink(missing_ok=True)
            # Same owner and mode as the original (shadow is not world-readable).
            fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("\n".join([*lines, extra[file]]) + "\n")
            st = host.stat()
            os.chown(copy, st.st_uid, st.st_gid)
            copy.chmod(st.st_mode & 0o7777)
        home = self.unprivileged_home
        home.parent.mkdir(mode=0o755, exist_ok=True)
        home.mkdir(mode=0o755, exist_ok=True)
        home.chmod(0o755)
        os.chown(home, uid, uid)

    def stop(self) -> None:
        """Stop the listener by PID, then every other process left in its namespace.

        sshd puts each connection's process in its own session, so they are not in the
        listener's process group; they are found through /proc before the listener dies.
        Session processes orphaned by a closed non-PTY channel (e.g. a ``sleep 600`` whose
        client went away) are found too: they stay in sshd's mount namespace.
        """
        proc, self._proc = self._proc, None
        ns, ns_fd = self._mnt_ns, self._mnt_ns_fd
        self._mnt_ns = self._mnt_ns_fd = None
        if proc is None:
            return
        try:
            children = _descendants(proc.pid) if proc.poll() is None else []
            _stop_process(proc, signal.SIGTERM)
            sig = signal.SIGTERM
            deadline = time.monotonic() + 5.0
            while True:
                # Re-scanned each round, so processes forked meanwhile are caught too.
                left = {c for c in children if _alive(c)}
                if ns is not None:
                    left.update(_ns_members(ns))
                if not left:
                    break
                if sig == signal.SIGTERM and time.monotonic() >= deadline:
                    sig = signal.SIGKILL
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                time.sleep(0.05)
                if sig == signal.SIGKILL and time.monotonic() >= deadline + 5.0:
                    break
        finally:
            if ns_fd is not None:
                os.close(ns_fd)

    def _login_user_processes(self) -> dict[int, str]:
        if self._proc is None or self._mnt_ns is None:
            raise PeerError("sshd is not running")
        return {
            pid: _cmdline(pid)
            for pid in _ns_members(self._mnt_ns)
            if _real_uid(pid) == self.login_uid
        }

    def processes_of_login_user(self) -> list[str]:
        """Command lines of the live processes running as :attr:`login_user`'s UID.

        Only processes in this sshd's mount namespace count: sessions of this sshd and
        whatever they started, including orphans reparented away from sshd (the user does
        not exist on the host, so it is matched by UID). With ``bastion-t`` this includes
        the ``sshd: bastion-t@notty`` (or ``@pts/N``) process of each open connection; with
        ``root`` it also lists sshd's own processes. Zombies are left out.
        """
        return [cmd for _, cmd in sorted(self._login_user_processes().items())]

    def kill_processes_of_login_user(self) -> int:
        """SIGKILL what :meth:`processes_of_login_user` lists; return how many were signalled.

        For cleaning up between tests sharing this sshd. Refused for ``root`` (it would
        kill sshd itself).
        """
        if self.login_uid == 0:
            raise PeerError("refusing to kill root's processes: that includes sshd")
        pids = self._login_user_processes()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def add_authorized_key(self, line: str) -> None:
        """Allow one more public key (an OpenSSH line) to log in as root or bastion-t."""
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
