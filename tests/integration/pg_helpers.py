"""Helpers for the PostgreSQL end-to-end tests (`test_postgres.py`).

The pieces: a bastion home with PostgreSQL targets at the session's real server
(`tests.peers.Postgres`), the agent's `ssh -N -L` tunnel, and the clients an agent runs
through it: `psql` and `pgbench` as subprocesses, psycopg 3, and a raw protocol client
(`RawPg`, on `bastion.pgwire`) for what libpq keeps to itself (the BackendKeyData secret).

Processes started here go through `tests.integration.conftest` (`Server.spawn`, `Spawned`),
so its autouse fixture stops them by PID after each test.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bastion import pgwire
from bastion.recording import format as recfmt
from tests.integration.conftest import (
    Grant,
    Server,
    Spawned,
    cli,
    cli_json,
    wait_until,
)
from tests.peers import PG_BIN, Postgres, free_port

LOOPBACK = "127.0.0.1"
TARGET = "prod-db"  # the target the spec's examples use: default statement rules
BENCH_TARGET = "bench-db"  # the same database, `statements = []` (pgbench -i drops tables)
REDACTED_TARGET = "redacted-db"  # the same database, `redact_parameters = true`
BAD_TARGET = "bad-db"  # the same server, registered with a wrong password
APP_USER = "app"
APP_PASSWORD = "app-secret"
APP_DB = "appdb"
APPROVAL_TIMEOUT_S = 5
NO_PASSFILE = "/nonexistent/bastion-tests/pgpass"  # no password from a file either
PSQL = str(PG_BIN / "psql")
PGBENCH = str(PG_BIN / "pgbench")

APPROVAL_NOTICE = (
    r"NOTICE:  \[bastion\] approval required, request (a-[0-9a-f]+); waiting up to (\S+)"
)


def config_text(alt_db: str) -> str:
    return f"""\
[grants]
min_ttl = "2s"

[approvals]
timeout = "{APPROVAL_TIMEOUT_S}s"

[targets.{TARGET}]
databases = ["{APP_DB}", "{alt_db}"]

[targets.{BENCH_TARGET}]
statements = []

[targets.{REDACTED_TARGET}]
redact_parameters = true
"""


def make_pg_home(base: Path, postgres: Postgres, alt_db: str) -> Path:
    """An initialized home whose PostgreSQL targets all point at the real server."""
    home = base / "home"
    cli(home, "init")
    (home / "bastion.toml").write_text(config_text(alt_db))
    for name, password in (
        (TARGET, APP_PASSWORD),
        (BENCH_TARGET, APP_PASSWORD),
        (REDACTED_TARGET, APP_PASSWORD),
        (BAD_TARGET, "not-the-password"),
    ):
        cli(
            home,
            *("target", "add-postgres", name, "--host", LOOPBACK, "--port", str(postgres.port)),
            *("--database", APP_DB, "--user", APP_USER, "--password-env", "PW"),
            *(["--no-check"] if name == BAD_TARGET else []),  # wrong on purpose
            env={"PW": password},
        )
    return home


def issue(server: Server, target: str = TARGET, *, agent: str = "bot", ttl: str = "10m") -> Grant:
    """`bastion grant issue --agent AGENT --target TARGET --task T --ttl TTL --generate-key`."""
    task = f"pg-{agent}-{os.urandom(3).hex()}"
    key_dir = server.work / "agents" / task
    data = cli_json(
        server.home,
        *("grant", "issue", "--agent", agent, "--target", target, "--task", task),
        *("--ttl", ttl, "--generate-key", str(key_dir)),
    )
    return Grant(id=data["id"], task=task, key=key_dir / "id_ed25519", data=data)


# -- the agent's tunnel ---------------------------------------------------------------


def _listening(port: int) -> bool:
    """Whether a socket is in LISTEN on 127.0.0.1:`port` (read from /proc: connecting
    to probe it would open a forward, and a session record, of its own)."""
    needle = f"0100007F:{port:04X}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == needle and fields[3] == "0A":
                return True
    return False


@dataclass
class Tunnel:
    """`ssh -N -o ExitOnForwardFailure=yes -L PORT:TARGET:5432 TARGET@127.0.0.1 -p BASTION`."""

    ssh: Spawned
    port: int
    grant: Grant

    def stop(self) -> None:
        self.ssh.stop()


def open_tunnel(server: Server, grant: Grant, target: str = TARGET) -> Tunnel:
    port = free_port()
    ssh = server.spawn(
        target,
        grant.key,
        opts=["-N", "-o", "ExitOnForwardFailure=yes", "-L", f"{port}:{target}:5432"],
    )

    def ready() -> bool:
        if not ssh.running():
            raise AssertionError(f"ssh -L exited {ssh.proc.returncode}: {ssh.stderr!r}")
        return _listening(port)

    wait_until(ready, timeout=15)
    return Tunnel(ssh, port, grant)


# -- clients --------------------------------------------------------------------------


def client_env() -> dict[str, str]:
    """The environment for libpq programs: no password from anywhere, no user config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSFILE=NO_PASSFILE, PGSERVICEFILE=NO_PASSFILE, PGCONNECT_TIMEOUT="10")
    return env


def psql_argv(port: int, *args: str, user: str = "mallory", db: str | None = APP_DB) -> list[str]:
    argv = [PSQL, "-X", "-w", "-v", "ON_ERROR_STOP=1", "-h", LOOPBACK, "-p", str(port)]
    argv += ["-U", user]
    if db is not None:
        argv += ["-d", db]
    return [*argv, *args]


def psql(
    port: int,
    sql: str,
    *,
    user: str = "mallory",
    db: str | None = APP_DB,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """`psql -X -w -v ON_ERROR_STOP=1 -At -c SQL` through the tunnel (no password given)."""
    return subprocess.run(
        psql_argv(port, "-At", "-c", sql, user=user, db=db),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=client_env(),
        stdin=subprocess.DEVNULL,
    )


def spawn_psql(port: int, sql: str, *, user: str = "mallory", db: str | None = APP_DB) -> Spawned:
    """`psql ... -c SQL` in the background (stopped by PID after the test). `env` execs
    psql, so the PID is psql's own (for SIGINT)."""
    env = [f"{k}={v}" for k, v in client_env().items()]
    return Spawned(["env", "-i", *env, *psql_argv(port, "-At", "-c", sql, user=user, db=db)])


def connect(port: int, **kwargs: Any) -> psycopg.Connection[Any]:
    """psycopg 3 through the tunnel, as some agent, with no password."""
    params: dict[str, Any] = {
        "host": LOOPBACK,
        "port": port,
        "user": "agent-asks-for-this-role",
        "dbname": APP_DB,
        "connect_timeout": 10,
        "passfile": NO_PASSFILE,
        "application_name": "pytest",
    }
    params.update(kwargs)
    return psycopg.connect(**params)


@contextlib.contextmanager
def connection(port: int, **kwargs: Any) -> Iterator[psycopg.Connection[Any]]:
    conn = connect(port, **kwargs)
    try:
        yield conn
    finally:
        conn.close()


class RawPg:
    """A PostgreSQL client on a plain socket, on `bastion.pgwire`: it keeps the
    BackendKeyData secret that libpq (and so psycopg) does not expose."""

    def __init__(self, port: int, user: str = "raw-agent", database: str = APP_DB) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=10)
        self.parser = pgwire.BackendParser()
        self.key: pgwire.BackendKeyData | None = None
        self.startup = self.send_and_read(
            pgwire.StartupMessage({"user": user, "database": database})
        )
        for message in self.startup:
            if isinstance(message, pgwire.BackendKeyData):
                self.key = message
            if isinstance(message, pgwire.ErrorResponse):
                raise AssertionError(f"startup refused: {message.message}")

    def send(self, *messages: pgwire.Message) -> None:
        self.sock.sendall(b"".join(pgwire.encode(m) for m in messages))

    def read_until_ready(self, timeout: float = 30.0) -> list[pgwire.Message]:
        """Messages up to and including the next ReadyForQuery."""
        return self.read_until(pgwire.ReadyForQuery, timeout)

    def read_until(self, kind: type[pgwire.Message], timeout: float) -> list[pgwire.Message]:
        """Messages up to and including the next one of type `kind`."""
        found: list[pgwire.Message] = []
        deadline = time.monotonic() + timeout
        while not (found and isinstance(found[-1], kind)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind.__name__} within {timeout}s, got {found}")
            found.extend(self.read_for(left, stop_after=1))
        return found

    def read_for(self, seconds: float, stop_after: int | None = None) -> list[pgwire.Message]:
        """What arrives within `seconds` (at most `stop_after` messages)."""
        found: list[pgwire.Message] = []
        deadline = time.monotonic() + seconds
        while stop_after is None or len(found) < stop_after:
            event = self.parser.next_event()
            if event is pgwire.NEED_DATA:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.sock.settimeout(left)
                try:
                    self.parser.receive_data(self.sock.recv(65536))
                except TimeoutError:
                    break
                continue
            if event is pgwire.CLOSED:
                raise AssertionError(f"connection closed after {found}")
            assert not isinstance(event, pgwire.Signal)
            found.append(event)
        return found

    def send_and_read(self, *messages: pgwire.Message) -> list[pgwire.Message]:
        self.send(*messages)
        return self.read_until_ready()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send(pgwire.Terminate())
        self.sock.close()


def send_cancel_request(port: int, pid: int, key: bytes) -> bytes:
    """The 16-byte CancelRequest on a fresh connection; what came back before the close."""
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        request = pgwire.encode(pgwire.CancelRequest(pid, key))
        assert len(request) == 16
        sock.sendall(request)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(4096):
                answer += chunk
        return answer


def errors_of(messages: Sequence[pgwire.Message]) -> list[pgwire.ErrorResponse]:
    return [m for m in messages if isinstance(m, pgwire.ErrorResponse)]


# -- approvals --------------------------------------------------------------------------


def pending_approvals(server: Server, grant: Grant) -> list[dict[str, Any]]:
    return [a for a in cli_json(server.home, "approvals", "list") if a["grant"] == grant.id]


def pending_approval(server: Server, grant: Grant, timeout: float = 10.0) -> dict[str, Any]:
    """The one pending approval request of `grant`, once there is one."""

    def pending() -> dict[str, Any] | None:
        found = pending_approvals(server, grant)
        assert len(found) <= 1, found
        return found[0] if found else None

    return wait_until(pending, timeout)  # type: ignore[no-any-return]


def approval_record(server: Server, approval_id: str) -> dict[str, Any]:
    found = cli_json(server.home, "approvals", "list", "--all")
    [record] = [a for a in found if a["id"] == approval_id]
    return record  # type: ignore[no-any-return]


# -- the server's side ------------------------------------------------------------------


def active_backends(postgres: Postgres, needle: str) -> list[str]:
    """`pid|state|query` of the server's backends whose query contains `needle`, as the
    superuser sees them in pg_stat_activity (not counting the asking backend)."""
    out = postgres.psql(
        "SELECT pid || '|' || state || '|' || query FROM pg_stat_activity"
        " WHERE pid <> pg_backend_pid() AND state = 'active'"
        " AND position(:'needle' in query) > 0",
        variables={"needle": needle},
    )
    return [line for line in out.splitlines() if line]


def terminate_backends(postgres: Postgres, needle: str) -> None:
    """Clean-up: end whatever backend still runs a query containing `needle`."""
    postgres.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE pid <> pg_backend_pid() AND position(:'needle' in query) > 0",
        variables={"needle": needle},
    )


# -- records and the query log -----------------------------------------------------------


def forward_sessions(server: Server, grant: Grant) -> list[dict[str, Any]]:
    return [s for s in server.sessions(grant) if s["kind"] == "forward"]


def query_log(server: Server, session_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The `q` frames (JSON) of a session's recording, once the recording is closed."""

    def closed() -> dict[str, Any] | None:
        for entry in cli_json(server.home, "recordings", "list"):
            if entry["session"] == session_id and entry["state"] != "recording":
                return entry  # type: ignore[no-any-return]
        return None

    entry = wait_until(closed, timeout)
    assert entry["state"] == "closed", entry
    data = (server.home / "recordings" / entry["path"]).read_bytes()
    parsed = recfmt.parse(data)
    assert parsed.complete
    return [json.loads(f.payload) for f in parsed.frames if f.kind == recfmt.QUERY]


def statements(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The statement entries of a query log (not the events such as `connected`)."""
    return [entry for entry in log if "sql" in entry and "event" not in entry]


@contextlib.contextmanager
def scratch_table(
    postgres: Postgres, columns: str = "id int, v text", values: str = "i, 'v' || i"
) -> Iterator[str]:
    """A fresh table `t_<hex>(columns)` owned by app with three rows (`values` over
    i = 1..3), dropped after."""
    name = f"t_{os.urandom(4).hex()}"
    postgres.psql(
        f"SET ROLE {APP_USER}; CREATE TABLE {name} ({columns});"
        f" INSERT INTO {name} SELECT {values} FROM generate_series(1, 3) i;",
        db=APP_DB,
    )
    try:
        yield name
    finally:
        postgres.psql(f"DROP TABLE IF EXISTS {name}", db=APP_DB)
