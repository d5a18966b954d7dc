"""A PostgreSQL session's query log while the session is live: the real `bastion serve`,
`ssh -L`, psycopg 3 and PostgreSQL 15.

The query log is written like a terminal recording (`transport/recording.py`): the
flusher writes it out at least every quarter second, so a `kill -9` of the bastion loses
at most the last half second of statements, and `recordings text`, `recordings search`
and the web console's live view (`web/live.py`'s `Tail`) read a live session's
statements from the file within about a second.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bastion.recording import format as fmt
from bastion.web.live import Tail
from tests.integration import pg_helpers as pg
from tests.integration.conftest import Server, wait_until
from tests.integration.test_recordings import TmpfsServer, fill
from tests.peers import Postgres

# The answer to a statement is queued for the file before the client has it, and the
# flusher hands the queue to the writer every quarter second: half a second is the promise.
LOSS_BOUND_S = 0.5


@pytest.fixture
def make_pg_gateway(postgres: Postgres, tmp_path: Path) -> Iterator[Callable[[], Server]]:
    """A factory of `bastion serve` processes on fresh homes with the PostgreSQL targets."""
    servers: list[Server] = []

    def make() -> Server:
        base = tmp_path / f"pg-gw{len(servers)}"
        base.mkdir()
        # `postgres` as the allowed second database: these tests never pick one.
        server = Server(pg.make_pg_home(base, postgres, "postgres"), base)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.stop(signal.SIGKILL)


def recording_entry(server: Server, session_id: str) -> dict[str, Any]:
    [entry] = [r for r in server.cli_json_all("recordings", "list") if r["session"] == session_id]
    return entry  # type: ignore[no-any-return]


def logged_sql(data: bytes) -> list[str]:
    """The SQL of each statement in a recording's query log (whole frames only)."""
    found = []
    for frame in fmt.parse(data).frames:
        if frame.kind == fmt.QUERY:
            entry = json.loads(frame.payload)
            if "sql" in entry and "event" not in entry:
                found.append(entry["sql"])
    return found


class Statements(threading.Thread):
    """psycopg through the tunnel, one small statement after another until stopped (or
    the connection dies); keeps when each answer arrived."""

    def __init__(self, port: int, token: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.token = token
        self.answered: list[tuple[str, float]] = []  # (sql, monotonic time of the answer)
        self.error: BaseException | None = None
        self.stopped = threading.Event()

    def sql(self, n: int) -> str:
        return f"select '{self.token}', {n}"

    def run(self) -> None:
        try:
            with pg.connection(self.port, autocommit=True) as conn:
                n = 0
                while not self.stopped.is_set():
                    sql = self.sql(n)
                    row = conn.execute(sql).fetchone()
                    self.answered.append((sql, time.monotonic()))
                    assert row == (self.token, n), row
                    n += 1
                    time.sleep(0.01)
        except BaseException as exc:  # the bastion was killed under it: expected
            self.error = exc


def test_kill_9_keeps_the_query_log_of_a_live_database_session(
    make_pg_gateway: Callable[[], Server],
) -> None:
    server = make_pg_gateway()
    grant = pg.issue(server)
    tunnel = pg.open_tunnel(server, grant)
    token = f"crash-{secrets.token_hex(4)}"
    client = Statements(tunnel.port, token)
    client.start()
    try:
        live = server.active_session(grant)
        wait_until(lambda: len(client.answered) >= 30, timeout=15)
        time.sleep(1.0)  # the session runs on: statements keep coming up to the kill

        killed_at = time.monotonic()
        server.stop(signal.SIGKILL)
        client.join(15)
    finally:
        client.stopped.set()
        tunnel.stop()
    assert not client.is_alive()
    answered = list(client.answered)
    assert len(answered) >= 40, answered[-3:]

    # Before the restart: the file parses, has no end frame, and holds every statement
    # answered more than half a second before the kill, in order, and nothing made up.
    entry = recording_entry(server, live["id"])
    assert entry["state"] == "recording"
    path = server.home / "recordings" / entry["path"]
    data = path.read_bytes()
    rec = fmt.parse(data)
    assert [f for f in rec.frames if f.kind == fmt.END] == []
    assert rec.frames[0].json()["session"] == live["id"]
    logged = [sql for sql in logged_sql(data) if token in sql]
    expected = [sql for sql, at in answered if at < killed_at - LOSS_BOUND_S]
    assert len(expected) >= 30
    assert logged[: len(expected)] == expected, (len(logged), len(expected), logged[-3:])
    assert logged == [client.sql(n) for n in range(len(logged))]

    server.start()

    [record] = server.ended_sessions(grant)
    assert (record["id"], record["kind"]) == (live["id"], "forward")
    assert record["end_reason"] == "bastion-crash"
    entry = recording_entry(server, live["id"])
    assert entry["state"] == "crashed"
    # Recovery sealed exactly what was on disk.
    assert path.read_bytes() == data
    assert (entry["size"], entry["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    [recovered] = [
        e for e in server.audit("recording.recovered") if e["details"]["session"] == live["id"]
    ]
    assert recovered["details"]["state"] == "crashed"
    verified = server.run_cli("recordings", "verify", live["id"])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith(f"OK   {live['id']}")
    audit = server.run_cli("audit", "verify")
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_text_search_and_live_view_show_a_live_database_session(
    make_pg_gateway: Callable[[], Server],
) -> None:
    server = make_pg_gateway()
    grant = pg.issue(server)
    tunnel = pg.open_tunnel(server, grant)
    needle = f"needle-{secrets.token_hex(4)}"
    with pg.connection(tunnel.port, autocommit=True) as conn:
        live = server.active_session(grant)
        assert conn.execute(f"select '{needle}' as found").fetchone() == (needle,)
        answered = time.monotonic()

        def in_text() -> float | None:
            """When the `recordings text` that shows the statement was started."""
            started = time.monotonic()
            shown = server.run_cli("recordings", "text", live["id"])
            assert shown.returncode == 0, shown.stderr
            return started if f"select '{needle}' as found" in shown.stdout else None

        text_after = wait_until(in_text, timeout=3.0, interval=0.05) - answered

        def in_search() -> list[dict[str, Any]]:
            found = server.run_cli("recordings", "search", needle, "--json")
            assert found.returncode == 0, found.stderr
            return [m for m in json.loads(found.stdout) if m["session"] == live["id"]]

        [match] = wait_until(in_search, timeout=2.0, interval=0.1)
        assert (match["kind"], match["line"]) == ("input", f"select '{needle}' as found")

        # The web console's live view reads the same file with `Tail`.
        entry = recording_entry(server, live["id"])
        tail = Tail()
        data = (server.home / "recordings" / entry["path"]).read_bytes()
        shown = "".join(text for _, text in tail.feed(data))
        assert f"select '{needle}' as found\r\n" in shown
        assert not tail.ended

        # All of it while the session is still open.
        assert server.active_session(grant)["id"] == live["id"]
        assert entry["state"] == "recording"
    assert text_after < 1.0, text_after
    tunnel.stop()
    [record] = server.ended_sessions(grant)
    assert record["end_reason"] == "client-closed"


# -- a full disk: the same loss handling as SSH sessions ----------------------------------


@pytest.fixture
def make_tmpfs_pg_gateway(postgres: Postgres, tmp_path: Path) -> Iterator[Callable[[str], Any]]:
    """A factory: `bastion serve` on a PostgreSQL home, its recordings on a 2 MiB tmpfs;
    `mode` is prod-db's recording mode."""
    servers: list[TmpfsServer] = []

    def make(mode: str) -> TmpfsServer:
        base = tmp_path / f"pg-tmpfs{len(servers)}"
        base.mkdir()
        home = pg.make_pg_home(base, postgres, "postgres")
        config = home / "bastion.toml"
        table = f"[targets.{pg.TARGET}]\n"
        config.write_text(config.read_text().replace(table, f'{table}recording = "{mode}"\n'))
        server = TmpfsServer(home, base)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


def run_until_refused(
    conn: psycopg.Connection[Any], statements: int
) -> tuple[int, Exception | None]:
    """Up to `statements` statements of a few KiB each (they fill a tmpfs page quickly);
    how many were answered, and the error that ended the session if one did."""
    filler = "x" * 4000
    answered = 0
    try:
        for n in range(statements):
            assert conn.execute(f"select {n}, '{filler}'").fetchone() == (n, filler)
            answered += 1
            time.sleep(0.02)
    except psycopg.OperationalError as exc:
        return answered, exc
    finally:
        conn.close()
    return answered, None


def test_full_disk_ends_a_mandatory_database_session(
    make_tmpfs_pg_gateway: Callable[[str], TmpfsServer],
) -> None:
    server = make_tmpfs_pg_gateway("mandatory")
    grant = pg.issue(server)
    tunnel = pg.open_tunnel(server, grant)
    conn = pg.connect(tunnel.port, autocommit=True)  # the forward's session and recording
    live = server.active_session(grant)
    seq = server.audit_seq()
    fill(server)

    answered, error = run_until_refused(conn, 200)

    assert error is not None and answered < 200
    assert "- session closed" in str(error) and "No space left on device" in str(error), error
    [record] = server.ended_sessions(grant)
    assert (record["id"], record["end_reason"]) == (live["id"], "recording-failed")
    [failed] = server.audit("recording.failed", after=seq)
    assert failed["details"]["session"] == live["id"]
    assert failed["details"]["session_ended"] is True
    entry = wait_until(lambda: (e := recording_entry(server, live["id"]))["state"] != "recording"
                       and e)  # fmt: skip
    assert entry["state"] == "failed"
    data = (server.root / str(server.home / "recordings").lstrip("/") / entry["path"]).read_bytes()
    assert (entry["size"], entry["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


def test_full_disk_best_effort_database_session_runs_on_and_the_loss_is_audited_once(
    make_tmpfs_pg_gateway: Callable[[str], TmpfsServer],
) -> None:
    server = make_tmpfs_pg_gateway("best-effort")
    grant = pg.issue(server)
    tunnel = pg.open_tunnel(server, grant)
    conn = pg.connect(tunnel.port, autocommit=True)  # the forward's session and recording
    live = server.active_session(grant)
    seq = server.audit_seq()
    fill(server)

    answered, error = run_until_refused(conn, 60)

    assert (answered, error) == (60, None)
    tunnel.stop()
    [record] = server.ended_sessions(grant)
    assert (record["id"], record["end_reason"]) == (live["id"], "client-closed")
    [lost] = server.audit("recording.failed", after=seq)
    assert lost["details"]["session"] == live["id"]
    assert lost["details"]["session_ended"] is False
    assert "No space left on device" in lost["details"]["reason"]
    entry = wait_until(lambda: (e := recording_entry(server, live["id"]))["state"] != "recording"
                       and e)  # fmt: skip
    assert entry["state"] == "failed"
