"""The benchmark's world: a real sshd target, a bastion home and a `bastion serve` process.

Everything listens on 127.0.0.1 on free ports, lives in one temporary work dir, and
every process started here is recorded in a `Procs` registry and stopped by its PID
(SIGTERM, then SIGKILL) when the run ends, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests import peers  # noqa: E402  (needs the repo root on sys.path)

VENV_BIN = REPO / ".venv" / "bin"
BASTION = str(VENV_BIN / "bastion")
PYTHON = str(VENV_BIN / "python")
LOOPBACK = "127.0.0.1"

# Names inside the bastion.
SSH_TARGET = "prod-web"
# The same sshd again, with `recording = "off"` in bastion.toml: recording on vs off.
NOREC_TARGET = "prod-web-norec"
# `-L` to an SSH-kind target is relayed as plain bytes to its registered address, so this
# one points at the local byte source (bench.source), not at an SSH server. (A PostgreSQL
# target gets the protocol-aware relay instead, which a byte source can't talk to.)
RELAY_TARGET = "relay"
PG_TARGET = "pg"
# The same PostgreSQL as an SSH-kind target: `-L` to it is the plain byte relay (the client
# logs in itself), so pgbench through it shows what the SSH layer alone costs.
PG_BYTES_TARGET = "pg-bytes"
PG_ROLE = "bench"
PG_DB = "benchdb"
PG_TABLE = "blob"
PG_PASSWORD_ENV = "BASTION_BENCH_PG_PASSWORD"

# Files put once in the target user's home (paths relative to that home).
TEXT_FILE = "bench-text.b64"
BINARY_FILE = "bench-binary.bin"
SLOW_READER = "bench_slow_reader.py"
TERMGEN = "bench_termgen.py"  # a copy of bench/termgen.py

_SLOW_READER_SRC = """\
import sys, time
chunk, pause = int(sys.argv[1]), float(sys.argv[2])
inp = sys.stdin.buffer.raw
total = 0
while True:
    data = inp.read(chunk)
    if not data:
        break
    total += len(data)
    time.sleep(pause)
print(total)
"""


class Procs:
    """Every child process of the run, stopped by PID in `stop_all` (and individually)."""

    def __init__(self) -> None:
        self._popen: dict[int, subprocess.Popen[bytes]] = {}
        self._raw: set[int] = set()  # pty.fork() children, reaped with waitpid

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(argv), **kwargs)
        self._popen[proc.pid] = proc
        return proc

    def add_raw(self, pid: int) -> None:
        self._raw.add(pid)

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int | None:
        """SIGTERM ``proc`` by PID, wait, SIGKILL if needed; return its exit status."""
        self._popen.pop(proc.pid, None)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        return proc.returncode

    def stop_many(self, procs: Sequence[subprocess.Popen[bytes]], timeout: float = 5.0) -> None:
        """Stop several at once: SIGTERM all, then wait for each (SIGKILL stragglers)."""
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            self.stop(proc, timeout=1.0)

    def stop_raw(self, pid: int, timeout: float = 5.0) -> None:
        self._raw.discard(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while True:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return
            if done:
                return
            if time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
                return
            time.sleep(0.02)

    def stop_all(self) -> None:
        for pid in list(self._raw):
            self.stop_raw(pid)
        self.stop_many(list(self._popen.values()))


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the comm: state is field 3, utime 14 and stime 15 (1-based, man proc).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 60.0) -> str:
    """Run a short command to completion; raise with its output if it fails."""
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result.stdout


def keygen(path: Path, comment: str) -> str:
    """A fresh Ed25519 key pair at ``path``; return the public key line."""
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return path.with_suffix(".pub").read_text().strip()


def write_data_files(home: Path, size: int, chunk: int = 1 << 20) -> None:
    """A base64 text file and a random binary file of ``size`` bytes each, and the reader."""
    import base64

    text, binary = home / TEXT_FILE, home / BINARY_FILE
    for path in (text, binary):
        if path.exists() and path.stat().st_size == size:
            continue
        with path.open("wb") as f:
            left = size
            while left > 0:
                if path == text:
                    # base64 of random bytes, one unbroken line (like `base64 -w0`).
                    block = base64.b64encode(os.urandom(chunk * 3 // 4))[:left]
                else:
                    block = os.urandom(min(chunk, left))
                f.write(block)
                left -= len(block)
    (home / SLOW_READER).write_text(_SLOW_READER_SRC)
    (home / TERMGEN).write_text((Path(__file__).parent / "termgen.py").read_text())
    for path in (text, binary, home / SLOW_READER, home / TERMGEN):
        path.chmod(0o644)
    # Read them once so that every measured run finds them in the page cache.
    for path in (text, binary):
        with path.open("rb") as f:
            while f.read(8 << 20):
                pass


class World:
    """sshd + bastion home + `bastion serve`, and the ssh command lines for both paths."""

    def __init__(self, work: Path, procs: Procs) -> None:
        self.work = work
        self.procs = procs
        self.home = work / "bastion-home"
        self.keys = work / "client-keys"
        self.sshd = peers.Sshd(work / "sshd")
        self.bastion: subprocess.Popen[bytes] | None = None
        self.bastion_port = 0
        self.bastion_log = work / "bastion-serve.log"
        self.direct_key = self.keys / "direct_ed25519"
        self.agent_key = Path()
        self.grant_id = ""
        self.fwd_port = 0
        self.targets: list[str] = []
        self.pg: peers.Postgres | None = None
        self.pgbench_scale = 0
        self.cache: dict[str, Any] = {}  # things made once per run and shared by metrics
        self.pg_password = secrets.token_hex(16)
        self.known_direct = work / "known_hosts.direct"
        self.known_bastion = work / "known_hosts.bastion"
        self.env = {**os.environ, PG_PASSWORD_ENV: self.pg_password}
        self.env.pop("BASTION_HOME", None)

    # -- setup ----------------------------------------------------------------

    def start_sshd(self, data_size: int) -> None:
        self.keys.mkdir(parents=True, exist_ok=True)
        direct_pub = keygen(self.direct_key, "bench-direct")
        self.upstream_key = self.keys / "bastion_upstream_ed25519"
        upstream_pub = keygen(self.upstream_key, "bench-bastion-upstream")
        # 200 sessions are opened in parallel batches: don't let sshd drop unauthenticated
        # connections beyond its default MaxStartups of 10.
        self.sshd.start(
            authorized_keys=[direct_pub, upstream_pub], extra_config="MaxStartups 1000:30:1000"
        )
        peers.write_known_hosts(self.known_direct, self.sshd.port, self.sshd.host_pub)
        write_data_files(self.sshd.unprivileged_home, data_size)

    def bastion_cli(self, *args: str, timeout: float = 60.0) -> str:
        return run(
            [BASTION, "--home", str(self.home), "--as", "bench", *args],
            env=self.env,
            timeout=timeout,
        )

    def start_postgres(self, size: int) -> None:
        """A real PostgreSQL 15 with role `bench` and a table whose COPY is ~``size`` bytes."""
        self.pg = peers.Postgres()
        self.pg.start()
        self.pg.create_role(PG_ROLE, self.pg_password)
        self.pg.create_database(PG_DB, PG_ROLE)
        rows = max(1, size // 1000)
        # id, a tab, 992 characters and a newline: ~1000 bytes per row of COPY output.
        self.pg.psql(
            f"CREATE TABLE {PG_TABLE} AS SELECT g AS id, repeat(md5(g::text), 31) AS t"
            f" FROM generate_series(1, {rows}) g;"
            f" GRANT SELECT ON {PG_TABLE} TO {PG_ROLE}; SELECT count(*) FROM {PG_TABLE};",
            db=PG_DB,
        )

    def init_pgbench(self, scale: int) -> None:
        """pgbench's tables at ``scale`` in the bench database, once, straight to the server
        as the role (it owns the database): not through either path."""
        assert self.pg is not None
        if self.pgbench_scale == scale:
            return
        run(
            [str(peers.PG_BIN / "pgbench"), "-i", "-q", "-s", str(scale),
             "-h", LOOPBACK, "-p", str(self.pg.port), "-U", PG_ROLE, PG_DB],
            env={**self.env, "PGPASSWORD": self.pg_password},
            timeout=600,
        )  # fmt: skip
        self.pgbench_scale = scale

    def init_bastion(self) -> None:
        self.fwd_port = peers.free_port()  # where bench.source will listen
        self.bastion_cli("init")
        config = self.home / "bastion.toml"
        text, count = re.subn(r'(?m)^min_ttl = ".*"$', 'min_ttl = "2s"', config.read_text())
        if count != 1:
            raise RuntimeError(f"could not set [grants] min_ttl in {config}")
        # Every client comes from 127.0.0.1 and starts in batches of 20 (idle sessions):
        # one source may have as many logins under way as the whole gateway.
        text, count = re.subn(
            r"(?m)^per_source_max_startups = .*$", "per_source_max_startups = 100", text
        )
        if count != 1:
            raise RuntimeError(f"could not set [server] per_source_max_startups in {config}")
        # Read by `bastion serve` when it starts: written before the first start.
        text += f'\n[targets.{NOREC_TARGET}]\nrecording = "off"\n'
        # Byte sources reached by -L as plain TCP: SSH-kind targets that opt in.
        for name in (RELAY_TARGET, PG_BYTES_TARGET):
            text += f"\n[targets.{name}]\nraw_forwarding = true\n"
        config.write_text(text)
        targets = [SSH_TARGET, NOREC_TARGET, RELAY_TARGET]
        for name, port in (
            (SSH_TARGET, self.sshd.port),
            (NOREC_TARGET, self.sshd.port),
            (RELAY_TARGET, self.fwd_port),
        ):
            self.bastion_cli(
                "target", "add-ssh", name,
                "--host", LOOPBACK, "--port", str(port),
                "--user", peers.Sshd.UNPRIVILEGED_USER,
                "--identity", str(self.upstream_key),
                "--host-key", self.sshd.host_pub,
                # The relay target is a byte source, not sshd: registered unchecked.
                *(["--no-check"] if name == RELAY_TARGET else []),
            )  # fmt: skip
        if self.pg is not None:
            self.bastion_cli(
                "target", "add-postgres", PG_TARGET,
                "--host", LOOPBACK, "--port", str(self.pg.port),
                "--database", PG_DB, "--user", PG_ROLE, "--password-env", PG_PASSWORD_ENV,
            )  # fmt: skip
            self.bastion_cli(
                "target", "add-ssh", PG_BYTES_TARGET,
                "--host", LOOPBACK, "--port", str(self.pg.port),
                "--user", peers.Sshd.UNPRIVILEGED_USER,
                "--identity", str(self.upstream_key),
                "--host-key", self.sshd.host_pub,
                "--no-check",  # PostgreSQL's port, relayed as bytes: not an SSH server
            )  # fmt: skip
            targets += [PG_TARGET, PG_BYTES_TARGET]
        self.targets = targets
        issued = self.issue_grant("8h", self.keys / "agent")
        self.grant_id = issued["id"]
        self.agent_key = Path(issued["private_key"])

    def issue_grant(self, ttl: str, key_dir: Path) -> dict[str, Any]:
        key_dir.mkdir(parents=True, exist_ok=True)
        out = self.bastion_cli(
            "grant", "issue", "--agent", "bench-agent",
            *(arg for name in self.targets for arg in ("--target", name)),
            "--task", "bench", "--ttl", ttl, "--reason", "benchmark",
            "--generate-key", str(key_dir), "--json",
        )  # fmt: skip
        data: dict[str, Any] = json.loads(out)
        return data

    def grant_valid_before(self, grant_id: str) -> str:
        data = json.loads(self.bastion_cli("grant", "show", grant_id, "--json"))
        value: str = data["valid_before"]
        return value

    def start_bastion(self) -> None:
        """(Re)start `bastion serve` on a fresh free port."""
        if self.bastion is not None:
            self.stop_bastion()
        self.bastion_port = peers.free_port()
        with self.bastion_log.open("ab") as log:
            self.bastion = self.procs.popen(
                [BASTION, "--home", str(self.home), "serve",
                 "--listen", f"{LOOPBACK}:{self.bastion_port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env,
            )  # fmt: skip
        try:
            peers.wait_for_port(self.bastion_port, 20.0, proc=self.bastion)
        except (peers.PeerError, TimeoutError) as exc:
            tail = self.bastion_log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"bastion serve did not start: {exc}\n{tail}") from exc
        host_pub = (self.home / "keys" / "host_ed25519.pub").read_text().strip()
        peers.write_known_hosts(self.known_bastion, self.bastion_port, host_pub)

    def stop_bastion(self) -> None:
        if self.bastion is not None:
            self.procs.stop(self.bastion, timeout=10.0)
            self.bastion = None

    @property
    def bastion_pid(self) -> int:
        assert self.bastion is not None
        return self.bastion.pid

    # -- ssh command lines ----------------------------------------------------

    def ssh_direct(self, *args: str, opts: Sequence[str] = ()) -> list[str]:
        return peers.ssh_command(
            self.sshd.port,
            self.direct_key,
            peers.Sshd.UNPRIVILEGED_USER,
            self.known_direct,
            *args,
            extra_opts=opts,
        )

    def ssh_bastion(
        self,
        *args: str,
        opts: Sequence[str] = (),
        user: str = SSH_TARGET,
        key: Path | None = None,
    ) -> list[str]:
        return peers.ssh_command(
            self.bastion_port,
            key or self.agent_key,
            user,
            self.known_bastion,
            *args,
            extra_opts=opts,
        )

    def ssh(self, path: str, *args: str, opts: Sequence[str] = ()) -> list[str]:
        """The ssh argv for ``path`` ("direct" or "bastion") running ``args``."""
        if path == "direct":
            return self.ssh_direct(*args, opts=opts)
        return self.ssh_bastion(*args, opts=opts)

    def negotiated(self, path: str) -> dict[str, str]:
        """Key exchange and cipher the stock client ends up with on ``path`` (debug log)."""
        argv = ["LogLevel=DEBUG1" if a == "LogLevel=ERROR" else a for a in self.ssh(path, "true")]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        found = {}
        for name, pattern in (
            ("kex", r"kex: algorithm: (\S+)"),
            ("cipher", r"kex: server->client cipher: (\S+)"),
        ):
            match = re.search(pattern, out.stderr)
            found[name] = match.group(1) if match else "unknown"
        return found

    # -- teardown -------------------------------------------------------------

    def stop(self) -> None:
        try:
            self.stop_bastion()
        finally:
            try:
                self.sshd.stop()
            finally:
                if self.pg is not None:
                    self.pg.stop()
