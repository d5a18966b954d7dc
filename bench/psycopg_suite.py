"""psycopg's own test suite, directly and through the bastion (issue #19).

    .venv/bin/python -m bench.psycopg_suite --psycopg-src PATH   # ~10 min on 2 cores

Runs psycopg's `tests/` twice against one throwaway PostgreSQL 15: first **directly**
(`PSYCOPG_TEST_DSN` with the real role and password), then **through the tunnel** (the
same DSN at the local port of the agent's `ssh -N -L PORT:psycopg-db:5432` to a `bastion
serve`, whose PostgreSQL target has `statements = []`); compares the per-test outcomes
(JUnit XML) and prints the counts and every test that passes directly but not through
the tunnel, with the first line of its failure. A measurement, not a test: exit 0 when
the runs completed, whatever the differences; 1 when the setup or a run broke.

psycopg's code is not in this repository and is never committed. `--psycopg-src` (or
`PSYCOPG_SRC`) is a psycopg git directory (bare or not) or a plain checkout with `tests/`:

  * the snapshot of the public repository, e.g. with the sessions' `fetch` tool
    (`github:psycopg/psycopg`, a bare git dir `/work/.mirror/psycopg+psycopg/repo`, the
    default when it exists), or `git clone https://github.com/psycopg/psycopg`;
  * from a git dir the script extracts (`git archive`, the source is not touched) the
    tag of the psycopg installed in `.venv` (requirements/lock.txt); when that tag is
    not there (a snapshot older than that release) it takes the newest tag or branch
    head of the same minor series whose version is not newer (e.g. `master` at
    3.3.5.dev1 for 3.3.9), and says so (`--ref` picks another).

psycopg's tests run in a venv of their own (never `.venv`): psycopg, psycopg-binary,
psycopg-pool, pytest and anyio at the versions of requirements/lock.txt, plus pproxy
(psycopg's `test` extra, for its proxy tests) and pytest-timeout. A test still running
after 30 s (`--test-timeout`; the slowest selected test takes a few seconds directly)
has the database connections it opened shut down by this script (a client blocked in
libpq ignores pytest-timeout's signal; see `cut_connections`; the session-wide ones
too if it still hangs 30 s later), so it fails instead of stalling the run, and the
report lists it as cut (pytest-timeout stays as a backstop
for tests stuck in Python, at twice that), installed with pip from the configured index
(PyPI). `--venv DIR` keeps that venv to reuse it in the next run.

The world (one temp dir, 127.0.0.1, free ports; every process stopped by its PID in
`finally`): PostgreSQL 15 (`tests.peers.Postgres`, SCRAM, plus psycopg CI's
`max_prepared_transactions = 10`) with a superuser role `psycopg` (psycopg's CI uses
`postgres`) and a database `psycopg_test`; a bastion home with the PostgreSQL target
`psycopg-db` (that role, `statements = []`, `databases = ["psycopg_test", "postgres"]`,
`[approvals] timeout = "3s"` so a statement the gate still holds fails in 3 s rather
than 5 min); `bastion serve`; one grant; the agent's `ssh -N -L` tunnel (as
tests/integration/pg_helpers.py opens it).

Selection (psycopg's own markers): `-m "not slow and not flakey"`, `tests/pool` and
`tests/crdb` ignored, `-p no:randomly` (file order, the same in both runs). The report:
bench/results/psycopg_suite.json, with the JUnit XML and pytest output of both runs
beside it, named after `--out` (bench/results/ is git-ignored).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import venv
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.env import BASTION, LOOPBACK, PYTHON, REPO, Procs, run
from tests import peers

DEFAULT_MIRROR = Path("/work/.mirror/psycopg+psycopg/repo")
RESULTS = REPO / "bench" / "results"
LOCK = REPO / "requirements" / "lock.txt"
TARGET = "psycopg-db"
ROLE = "psycopg"
DATABASE = "psycopg_test"
ALLOWED_DATABASES = (DATABASE, "postgres")  # tests/pq/test_pgconn.py connects to "postgres"
PASSWORD_ENV = "BASTION_PSYCOPG_SUITE_PASSWORD"
DEFAULT_MARKERS = "not slow and not flakey"
IGNORED = ("tests/pool", "tests/crdb")
# Installed in the suite's venv at the lock's version when the lock has them.
LOCKED = ("psycopg", "psycopg-binary", "psycopg-pool", "pytest", "anyio", "typing-extensions")
UNLOCKED = ("pproxy>=2.7", "pytest-timeout")
# psycopg's CI runs the server with `-c max_prepared_transactions=10` (the TPC tests).
PG_EXTRA_CONF = "max_prepared_transactions = 10\n"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- psycopg's tests ----------------------------------------------------------------


def _git(git_dir: Path, *args: str) -> str:
    return run(["git", "-c", "safe.directory=*", "--git-dir", str(git_dir), *args], timeout=300)


def _version_key(text: str) -> tuple[int, ...] | None:
    """3.3.4 -> (3, 3, 4, 1, 0); 3.3.5.dev1 -> (3, 3, 5, 0, 1): a dev version sorts before
    its release."""
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(?:\.dev(\d+))?", text.strip())
    if match is None:
        return None
    major, minor, patch, dev = match.groups()
    return (int(major), int(minor), int(patch), 0 if dev else 1, int(dev or 0))


def _ref_version(git_dir: Path, ref: str) -> str | None:
    try:
        toml = _git(git_dir, "show", f"{ref}:psycopg/pyproject.toml")
    except RuntimeError:
        return None
    match = re.search(r'(?m)^version\s*=\s*"([^"]+)"', toml)
    return match.group(1) if match else None


def pick_ref(git_dir: Path, version: str) -> tuple[str, str | None]:
    """The tag of `version`; else the newest tag or branch head of the same minor series
    whose psycopg version is not newer than `version` (a snapshot older than the release:
    a branch at 3.3.5.dev1 has every fix a 3.3.9 has up to its commit)."""
    tags = _git(git_dir, "tag", "--list").split()
    if version in tags:
        return version, None
    wanted = _version_key(version)
    if wanted is None:
        raise RuntimeError(f"no tag {version} in {git_dir}; pass --ref")
    candidates: list[tuple[tuple[int, ...], int, str, str]] = []
    for tag in tags:
        key = _version_key(tag)
        if key is not None and key[:2] == wanted[:2] and key <= wanted:
            candidates.append((key, 1, tag, tag))
    heads = _git(git_dir, "for-each-ref", "--format=%(refname:short)", "refs/heads").split()
    for head in heads:
        found = _ref_version(git_dir, head)
        key = _version_key(found) if found else None
        if key is not None and key[:2] == wanted[:2] and key <= wanted:
            candidates.append((key, 0, head, found or ""))
    if not candidates:
        raise RuntimeError(f"no tag {version} (nor an older {version[:4]}x) in {git_dir}")
    _, _, ref, ref_version = max(candidates)
    return ref, (
        f"tag {version} is not in {git_dir} (a snapshot older than that release); using"
        f" {ref} (psycopg {ref_version}), the newest of its series not newer than {version}"
    )


def extract_tests(src: Path, ref: str | None, version: str, dest: Path) -> dict[str, Any]:
    """psycopg's `tests/`, `tools/` (the proxy some tests start) and root `pyproject.toml`
    (its pytest settings) into `dest`."""
    dest.mkdir(parents=True)
    git_dir = src / ".git" if (src / ".git").exists() else src
    if (git_dir / "HEAD").exists() and (git_dir / "objects").exists():
        note = None
        if ref is None:
            ref, note = pick_ref(git_dir, version)
        commit = _git(git_dir, "rev-parse", f"{ref}^{{commit}}").strip()
        archive = subprocess.run(
            ["git", "-c", "safe.directory=*", "--git-dir", str(git_dir),
             "archive", "--format=tar", commit, "tests", "tools", "pyproject.toml"],
            capture_output=True, check=True, timeout=300,
        )  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        return {"source": str(src), "ref": ref, "commit": commit, "note": note}
    if not (src / "tests" / "conftest.py").exists():
        raise RuntimeError(f"{src} is neither a git dir nor a psycopg checkout with tests/")
    for part in ("tests", "tools"):  # tools/pproxy_fix.py: the proxy of tests/fix_proxy.py
        shutil.copytree(src / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(src / "pyproject.toml", dest / "pyproject.toml")
    return {"source": str(src), "ref": None, "commit": None, "note": "a plain checkout"}


def bastion_code(rev: str | None, work: Path) -> tuple[Path | None, dict[str, Any]]:
    """Which bastion code `bastion serve` runs: the work tree (default: whatever is there
    now, committed or not) or, with `--bastion-rev`, that commit's `bastion/` package,
    exported to the work dir and put first on PYTHONPATH."""
    git = ["git", "-C", str(REPO)]
    head = run([*git, "rev-parse", "HEAD"]).strip()
    if rev is None:
        dirty = run([*git, "status", "--porcelain", "--", "bastion"]).splitlines()
        return None, {"code": "work tree", "head": head, "uncommitted": dirty}
    commit = run([*git, "rev-parse", f"{rev}^{{commit}}"]).strip()
    dest = work / "bastion-src"
    dest.mkdir()
    archive = subprocess.run([*git, "archive", "--format=tar", commit, "bastion"],
                             capture_output=True, check=True, timeout=120)  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest, {"code": f"commit {rev}", "commit": commit, "head": head}


def locked_versions() -> dict[str, str]:
    found = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


def make_venv(path: Path) -> dict[str, str]:
    """A venv for psycopg's tests (never .venv); returns what is installed in it."""
    python = path / "bin" / "python"
    locked = locked_versions()
    wanted = [f"{name}=={locked[name]}" for name in LOCKED if name in locked]
    wanted += list(UNLOCKED)
    if not python.exists():
        log(f"creating the suite's venv in {path}")
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
    log("pip install " + " ".join(wanted))
    run([str(python), "-m", "pip", "install", "-q", *wanted], timeout=900)
    listing = json.loads(run([str(python), "-m", "pip", "list", "--format=json"]))
    return {p["name"].lower(): p["version"] for p in listing}


# -- the world ------------------------------------------------------------------------


class Postgres(peers.Postgres):
    """tests.peers.Postgres with psycopg CI's `max_prepared_transactions` added to the
    cluster's postgresql.conf right after initdb (before the server first starts)."""

    def _run_as_postgres(self, argv: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        result = super()._run_as_postgres(argv, **kwargs)
        if str(argv[0]).endswith("/initdb") and result.returncode == 0:
            with (self.datadir / "postgresql.conf").open("a") as conf:
                conf.write(PG_EXTRA_CONF)
        return result


def _listening(port: int) -> bool:
    """A LISTEN socket on 127.0.0.1:`port`, from /proc/net/tcp (as pg_helpers does: a
    probe connection would open a forward of its own)."""
    needle = f"0100007F:{port:04X}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == needle and fields[3] == "0A":
                return True
    return False


class World:
    def __init__(
        self, work: Path, procs: Procs, approval_timeout: str, bastion_src: Path | None
    ) -> None:
        self.work = work
        self.procs = procs
        self.approval_timeout = approval_timeout
        self.home = work / "bastion-home"
        self.password = secrets.token_hex(16)
        self.env = {**os.environ, PASSWORD_ENV: self.password}
        self.env.pop("BASTION_HOME", None)
        if bastion_src is not None:  # `--bastion-rev`: that commit's package, not the tree's
            self.env["PYTHONPATH"] = str(bastion_src)
        self.pg: Postgres | None = None
        self.serve: subprocess.Popen[bytes] | None = None
        self.serve_log = work / "bastion-serve.log"
        self.serve_port = 0
        self.tunnel: subprocess.Popen[bytes] | None = None
        self.tunnel_port = 0
        self.tunnel_log = work / "ssh-tunnel.log"
        self.grant: dict[str, Any] = {}

    def bastion(self, *args: str) -> str:
        return run([BASTION, "--home", str(self.home), "--as", "psycopg-suite", *args],
                   env=self.env, timeout=120)  # fmt: skip

    def start(self) -> None:
        self.pg = Postgres()
        self.pg.start()
        self.pg.psql(
            "CREATE ROLE :\"name\" LOGIN SUPERUSER PASSWORD :'password';",
            variables={"name": ROLE, "password": self.password},
        )
        self.pg.create_database(DATABASE, ROLE)
        prepared = self.pg.psql("SHOW max_prepared_transactions").strip()
        log(f"PostgreSQL {self.pg.psql('SHOW server_version').strip()} on port {self.pg.port}"
            f" (pid {self.pg.pid}), max_prepared_transactions={prepared}")  # fmt: skip

        # (cwd: not the repo, whose bastion/ `python -c` would import first; the `bastion`
        # script's own sys.path starts with .venv/bin, then PYTHONPATH.)
        where = subprocess.run(
            [PYTHON, "-c", "import bastion; print(bastion.__file__)"], env=self.env,
            cwd=self.work, capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()  # fmt: skip
        log(f"bastion package: {where}")
        self.bastion("init")
        databases = ", ".join(f'"{d}"' for d in ALLOWED_DATABASES)
        (self.home / "bastion.toml").write_text(
            "# Written by bench/psycopg_suite.py\n"
            f'[approvals]\ntimeout = "{self.approval_timeout}"\n\n'
            f"[targets.{TARGET}]\nstatements = []\ndatabases = [{databases}]\n"
        )
        self.bastion(
            "target", "add-postgres", TARGET, "--host", LOOPBACK, "--port", str(self.pg.port),
            "--database", DATABASE, "--user", ROLE, "--password-env", PASSWORD_ENV,
        )  # fmt: skip
        self.serve_port = peers.free_port()
        with self.serve_log.open("ab") as out:
            self.serve = self.procs.popen(
                [BASTION, "--home", str(self.home), "serve",
                 "--listen", f"{LOOPBACK}:{self.serve_port}"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=self.env,
            )  # fmt: skip
        self._wait(lambda: f"listening on {LOOPBACK}:{self.serve_port}" in self._serve_log(),
                   self.serve, "bastion serve", 30)  # fmt: skip
        log(f"bastion serve on port {self.serve_port} (pid {self.serve.pid})")
        keys = self.work / "agent"
        self.grant = json.loads(self.bastion(
            "grant", "issue", "--agent", "psycopg-suite", "--target", TARGET,
            "--task", "psycopg-suite", "--ttl", "4h", "--reason", "psycopg's test suite",
            "--generate-key", str(keys), "--json",
        ))  # fmt: skip
        known_hosts = self.work / "known_hosts"
        host_pub = (self.home / "keys" / "host_ed25519.pub").read_text().strip()
        peers.write_known_hosts(known_hosts, self.serve_port, host_pub)
        self.tunnel_port = peers.free_port()
        argv = peers.ssh_command(
            self.serve_port, keys / "id_ed25519", TARGET, known_hosts,
            extra_opts=["-N", "-o", "ExitOnForwardFailure=yes",
                        "-o", "ServerAliveInterval=30",
                        "-L", f"{LOOPBACK}:{self.tunnel_port}:{TARGET}:5432"],
        )  # fmt: skip
        with self.tunnel_log.open("ab") as out:
            self.tunnel = self.procs.popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        self._wait(lambda: _listening(self.tunnel_port), self.tunnel, "ssh -L", 20)
        log(f"tunnel: ssh -N -L {self.tunnel_port}:{TARGET}:5432 (pid {self.tunnel.pid}),"
            f" grant {self.grant['id']}")  # fmt: skip

    def _serve_log(self) -> str:
        return self.serve_log.read_text(errors="replace") if self.serve_log.exists() else ""

    def _wait(self, ready: Any, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited {proc.returncode}:\n{self.logs_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout}s:\n{self.logs_tail()}")
            time.sleep(0.05)

    def logs_tail(self) -> str:
        parts = []
        for path in (self.serve_log, self.tunnel_log):
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def check_tunnel(self) -> None:
        if self.tunnel is None or self.tunnel.poll() is not None:
            raise RuntimeError(f"the ssh tunnel is gone:\n{self.logs_tail()}")
        if self.serve is None or self.serve.poll() is not None:
            raise RuntimeError(f"bastion serve is gone:\n{self.logs_tail()}")

    def dsn(self, path: str) -> str:
        """The same DSN on both paths but the port: the bastion ignores user and password
        (it logs in upstream with the target's role), the server checks them."""
        assert self.pg is not None
        port = self.pg.port if path == "direct" else self.tunnel_port
        return (f"host={LOOPBACK} port={port} dbname={DATABASE} user={ROLE}"
                f" password={self.password}")  # fmt: skip

    def stop(self) -> None:
        try:
            for proc in (self.tunnel, self.serve):
                if proc is not None:
                    self.procs.stop(proc, timeout=10.0)
        finally:
            if self.pg is not None:
                self.pg.stop()


# -- running pytest and reading its JUnit XML --------------------------------------------

# A client blocked inside libpq (PQexec waiting for an answer that never comes) is deaf to
# pytest-timeout's SIGALRM (libpq retries its poll() on EINTR), may hold the GIL (no
# watchdog thread in pytest's process can run), and pytest-timeout's thread method would
# end the whole run. So a small pytest plugin of this script's (written to the work dir,
# loaded with `-p`) writes when each test starts and ends, and this script, when a test
# has been running longer than the limit, takes pytest's TCP sockets to the database port
# (pidfd_getfd, by pytest's PID) and shuts them down (not close: libpq still owns them).
# libpq sees the connection end, the test fails with that error, and the run goes on; the
# report lists the test as cut.
PROGRESS_PLUGIN = """\
import os, time

import pytest

_LOG = open(os.environ["BENCH_PROGRESS_LOG"], "a", buffering=1)


def _sockets():
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            found.append(link[8:-1])
    return ",".join(found)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # The sockets open before the test (session-wide connections) are spared at first.
    _LOG.write(f"S\\t{time.time()}\\t{_sockets()}\\t{item.nodeid}\\n")
    try:
        yield
    finally:
        _LOG.write(f"E\\t{time.time()}\\t\\t{item.nodeid}\\n")


def pytest_unconfigure(config):
    _LOG.close()
"""
_SYS_PIDFD_OPEN, _SYS_PIDFD_GETFD = 434, 438  # x86_64 and aarch64 alike


def _socket_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets (IPv4, IPv6) whose remote port is `port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def cut_connections(pid: int, port: int, spare: frozenset[str] = frozenset()) -> int:
    """Shut down process `pid`'s TCP connections to 127.0.0.1:`port` (but those whose
    socket inode is in `spare`); how many."""
    import ctypes
    import socket

    inodes = _socket_inodes(port) - spare
    fds = []
    with contextlib.suppress(OSError):
        for entry in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{entry}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    fds.append(int(entry))
    if not fds:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    pidfd = libc.syscall(_SYS_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        return 0
    cut = 0
    try:
        for fd in fds:
            mine = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
            if mine < 0:
                continue
            sock = socket.socket(fileno=mine)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
                cut += 1
            sock.close()
    finally:
        os.close(pidfd)
    return cut


class Watchdog:
    """Reads the progress plugin's log; cuts the connections of a test past the limit."""

    def __init__(self, path: Path, pid: int, port: int, limit: float) -> None:
        self.path, self.pid, self.port, self.limit = path, pid, port, limit
        self.offset = 0
        # nodeid, started (time.time()), the sockets open before it started
        self.current: tuple[str, float, frozenset[str]] | None = None
        self.last_cut = 0.0
        self.cuts = 0  # of the current test
        self.cut: dict[str, int] = {}

    def check(self) -> None:
        with contextlib.suppress(OSError), self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
            end = data.rfind(b"\n") + 1
            self.offset += end
            for line in data[:end].decode(errors="replace").splitlines():
                kind, when, open_before, nodeid = line.split("\t", 3)
                self.cuts = 0
                self.current = None
                if kind == "S":
                    self.current = (nodeid, float(when), frozenset(open_before.split(",")))
        if self.current is None:
            return
        nodeid, started, before = self.current
        now = time.time()
        if now - started > self.limit and now - self.last_cut > self.limit:
            self.last_cut = now
            # First the test's own connections; if it still hangs, the session's too.
            self.cuts += 1
            spare = before if self.cuts == 1 else frozenset()
            count = cut_connections(self.pid, self.port, spare)
            self.cut[nodeid] = self.cut.get(nodeid, 0) + count
            log(f"  {nodeid} still running after {now - started:.0f}s:"
                f" shut down its {count} connection(s)")  # fmt: skip


def run_suite(
    procs: Procs,
    python: Path,
    checkout: Path,
    dsn: str,
    name: str,
    out_dir: Path,
    args: argparse.Namespace,
    port: int,
    alive: Any = None,
) -> dict[str, Any]:
    plugins = checkout / "bench-plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / "bench_progress.py").write_text(PROGRESS_PLUGIN)
    progress = checkout / f"progress-{name}.log"
    junit = out_dir / f"{args.out.stem}-{name}.xml"
    output = out_dir / f"{args.out.stem}-{name}.log"
    argv = [
        str(python), "-m", "pytest", *args.paths,
        *(f"--ignore={p}" for p in IGNORED),
        "-m", args.markers, "-p", "no:randomly", "-p", "bench_progress", "-q", "-rN",
        "-o", f"cache_dir={checkout / f'.pytest_cache-{name}'}",
        f"--junitxml={junit}", "-o", "junit_family=xunit2",
        f"--timeout={args.test_timeout * 2}",
        *(["-k", args.k] if args.k else []),
    ]  # fmt: skip
    home = checkout / f"home-{name}"  # no ~/.pgpass, no pg_service.conf from anywhere
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PSYCOPG"))}
    env.update(PSYCOPG_TEST_DSN=dsn, HOME=str(home), LANG="C.UTF-8", PYTHONDONTWRITEBYTECODE="1")
    env.update(PYTHONPATH=str(plugins), BENCH_PROGRESS_LOG=str(progress))
    log(f"{name}: pytest {' '.join(argv[3:])}")
    started = time.monotonic()
    with output.open("wb") as out:
        proc = procs.popen(
            argv, cwd=checkout, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    watchdog = Watchdog(progress, proc.pid, port, args.test_timeout)
    interrupted = False
    try:
        while proc.poll() is None:
            if time.monotonic() - started > args.run_timeout and not interrupted:
                # Ctrl-C for pytest: it stops and still writes the JUnit XML of what ran.
                log(f"{name}: still running after {args.run_timeout}s: interrupting pytest")
                interrupted = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(60)
                break
            if alive is not None:
                alive()
            watchdog.check()
            time.sleep(1)
    finally:
        if proc.poll() is None:
            # Its own session (start_new_session): pytest and whatever it started.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            procs.stop(proc, timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        else:
            procs.stop(proc)
    seconds = time.monotonic() - started
    lines = output.read_text(errors="replace").strip().splitlines()
    tail = [x for x in lines if re.search(r"\d+ (passed|failed|error)", x)][-1:] or lines[-1:]
    log(f"{name}: exit {proc.returncode} after {seconds:.0f}s: {tail[0] if tail else ''}")
    if not junit.exists():
        raise RuntimeError(f"{name}: no JUnit XML; see {output}")
    tests = read_junit(junit)
    cut = watchdog.cut
    if cut:
        log(f"{name}: the watchdog cut the connections of {len(cut)} tests after"
            f" {args.test_timeout}s: {', '.join(cut)}")  # fmt: skip
    return {
        "interrupted": interrupted,
        "watchdog_cut": cut,
        "exit": proc.returncode,
        "duration_s": round(seconds, 1),
        "summary": tail[0] if tail else "",
        "counts": dict(Counter(t["outcome"] for t in tests.values())),
        "tests": tests,
        "junit": str(junit),
        "output": str(output),
    }


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def read_junit(path: Path) -> dict[str, dict[str, str]]:
    """test id -> {"outcome": passed|failed|error|skipped|xfailed, "message": first line}."""
    found: dict[str, dict[str, str]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                kind = "failed" if child.tag == "failure" else "error"
                # An error in teardown after a failure: the failure is what counts.
                if outcome != "failed":
                    outcome = kind
                    message = _first_line(child.get("message")) or _first_line(child.text)
            elif child.tag == "skipped":
                outcome = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
                message = _first_line(child.get("message"))
        before = found.get(test)
        # The same test twice: a failed call and an error in its teardown. The first
        # failure counts; an error in the teardown of a passed test is an error.
        if before is not None and (before["outcome"] in ("failed", "error") or outcome == "passed"):
            continue
        found[test] = {"outcome": outcome, "message": message}
    return found


def compare(direct: dict[str, Any], tunnel: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    d, t = direct["tests"], tunnel["tests"]
    regressions, other = [], []
    for test in sorted(set(d) | set(t)):
        a = d.get(test, {"outcome": "absent", "message": ""})
        b = t.get(test, {"outcome": "absent", "message": ""})
        if a["outcome"] == b["outcome"]:
            continue
        entry = {"test": test, "direct": a["outcome"], "tunnel": b["outcome"],
                 "direct_message": a["message"], "tunnel_message": b["message"]}  # fmt: skip
        if a["outcome"] == "passed" and b["outcome"] in ("failed", "error"):
            regressions.append(entry)
        else:
            other.append(entry)
    return {"pass_direct_fail_tunnel": regressions, "other_changes": other}


# -- main -------------------------------------------------------------------------------


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.psycopg_suite", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    default_src = os.environ.get("PSYCOPG_SRC") or (
        str(DEFAULT_MIRROR) if DEFAULT_MIRROR.exists() else None
    )
    p.add_argument("--psycopg-src", default=default_src, required=default_src is None,
                   help="psycopg git dir or checkout (env PSYCOPG_SRC)")  # fmt: skip
    p.add_argument(
        "--ref", help="git ref of psycopg's tests (default: the installed version's tag)"
    )
    p.add_argument("--bastion-rev", help="run this commit's bastion/ (default: the work tree)")
    p.add_argument(
        "--venv", type=Path, help="the suite's venv, kept for reuse (default: a temp one)"
    )
    p.add_argument(
        "--markers", default=DEFAULT_MARKERS, help=f"pytest -m (default {DEFAULT_MARKERS!r})"
    )
    p.add_argument("-k", help="pytest -k expression (a subset, to try things)")
    p.add_argument("--paths", nargs="+", default=["tests"], help="test paths (default: tests)")
    p.add_argument("--only", choices=("direct", "tunnel"), help="run one side only")
    p.add_argument("--approval-timeout", default="3s", help="[approvals] timeout (default 3s)")
    p.add_argument("--test-timeout", type=int, default=30, help="per test, seconds (default 30)")
    p.add_argument("--run-timeout", type=int, default=2400, help="per run, seconds (default 2400)")
    p.add_argument("--out", type=Path, default=RESULTS / "psycopg_suite.json")
    p.add_argument("--keep", action="store_true", help="keep the temp work dir (logs, home)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()  # pytest runs in the checkout: no relative paths
    signal.signal(signal.SIGTERM, _terminate)
    version = metadata.version("psycopg")
    out_dir = args.out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bastion-psycopg-suite-", dir="/tmp"))
    procs = Procs()
    world: World | None = None
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "psycopg_installed": version,
        "markers": args.markers,
        "ignored": list(IGNORED),
        "k": args.k,
        "paths": args.paths,
    }
    status = 0
    try:
        checkout = work / "psycopg"
        report["tests_source"] = extract_tests(Path(args.psycopg_src), args.ref, version, checkout)
        if note := report["tests_source"]["note"]:
            log(f"NOTE: {note}")
        log(f"psycopg's tests: {report['tests_source']['ref']}"
            f" ({report['tests_source']['commit']}) in {checkout}")  # fmt: skip
        venv_dir = args.venv or work / "venv"
        report["suite_venv"] = make_venv(venv_dir)
        python = venv_dir / "bin" / "python"
        bastion_src, report["bastion"] = bastion_code(args.bastion_rev, work)
        b = report["bastion"]
        log(f"bastion code: {b['code']} ({(b.get('commit') or b['head'])[:10]})"
            + (f", {len(b['uncommitted'])} uncommitted files under bastion/"
               if b.get("uncommitted") else ""))  # fmt: skip
        world = World(work, procs, args.approval_timeout, bastion_src)
        world.start()
        report["grant"] = world.grant["id"]
        runs: dict[str, Any] = {}
        for name in ("direct", "tunnel"):
            if args.only and args.only != name:
                continue
            alive = world.check_tunnel if name == "tunnel" else None
            port = world.pg.port if name == "direct" else world.tunnel_port  # type: ignore[union-attr]
            runs[name] = run_suite(procs, python, checkout, world.dsn(name), name, out_dir,
                                   args, port, alive)  # fmt: skip
        report["runs"] = {k: {x: y for x, y in v.items() if x != "tests"} for k, v in runs.items()}
        if len(runs) == 2:
            report.update(compare(runs["direct"], runs["tunnel"]))
        report["failing"] = {
            name: {t: r["message"] for t, r in run_["tests"].items()
                   if r["outcome"] in ("failed", "error")}
            for name, run_ in runs.items()
        }  # fmt: skip
        print_summary(report)
    except Exception as exc:  # the setup or a run broke
        traceback.print_exc()
        report["error"] = f"{type(exc).__name__}: {exc}"
        status = 1
    except BaseException as exc:  # SIGTERM (SystemExit), Ctrl-C: stop everything, say so
        report["error"] = f"interrupted: {type(exc).__name__} {exc}"
        raise
    finally:
        try:
            if world is not None:
                with contextlib.suppress(Exception):
                    shutil.copy(world.serve_log, out_dir / f"{args.out.stem}-bastion-serve.log")
                world.stop()
        finally:
            procs.stop_all()
            if args.keep:
                log(f"work dir kept: {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
            report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
            args.out.write_text(json.dumps(report, indent=2) + "\n")
            log(f"report: {args.out}")
    return status


def print_summary(report: dict[str, Any]) -> None:
    runs = report["runs"]
    kinds = ("passed", "failed", "error", "skipped", "xfailed")
    print()
    source = report["tests_source"]
    b = report["bastion"]
    print(f"bastion: {b['code']} at {(b.get('commit') or b['head'])[:10]}"
          + (f" + {len(b['uncommitted'])} uncommitted files under bastion/"
             if b.get("uncommitted") else ""))  # fmt: skip
    print(f"psycopg {report['psycopg_installed']}, tests of {source['ref']}"
          f" ({(source['commit'] or '')[:10]}),"
          f" -m {report['markers']!r}")  # fmt: skip
    print(f"{'run':8} " + " ".join(f"{k:>8}" for k in kinds) + f" {'total':>7} {'time':>7}")
    for name, r in runs.items():
        c = r["counts"]
        print(f"{name:8} " + " ".join(f"{c.get(k, 0):>8}" for k in kinds)
              + f" {sum(c.values()):>7} {r['duration_s']:>6.0f}s")  # fmt: skip
    if "pass_direct_fail_tunnel" not in report:
        return
    regressions = report["pass_direct_fail_tunnel"]
    print(f"\npassed directly, failed through the tunnel: {len(regressions)}")
    for e in regressions:
        print(f"  {e['test']}  [{e['tunnel']}]\n      {e['tunnel_message']}")
    other = report["other_changes"]
    if other:
        print(f"\nother outcome changes (direct -> tunnel): {len(other)}")
        for e in other:
            print(f"  {e['test']}: {e['direct']} -> {e['tunnel']}  {e['tunnel_message'][:160]}")


if __name__ == "__main__":
    sys.exit(main())
