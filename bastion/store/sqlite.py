"""The default state store: one SQLite file in WAL mode.

WAL lets the CLI read and write while `bastion serve` does; writers take the
database's write lock up front (`BEGIN IMMEDIATE`) so that the audit chain's
read-last-hash-then-append is never interleaved, and wait up to `busy_timeout` for
each other instead of failing. The file is created 0600: it holds target secrets.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from bastion.auditchain import GENESIS_HASH, event_hash
from bastion.errors import StoreError
from bastion.models import (
    AccessRequest,
    Agent,
    Approval,
    ApprovalState,
    AuditEvent,
    EndReason,
    Grant,
    Recording,
    RecordingState,
    RequestState,
    Revocation,
    Session,
    SessionKind,
    SslMode,
    Target,
    TargetKind,
    TargetSecret,
)
from bastion.store.migrations import LATEST_VERSION, MIGRATIONS

_BUSY_TIMEOUT_MS = 10_000
# The key under which an audit event's details that aren't a JSON object are returned.
UNREADABLE_DETAILS = "unreadable_details"


@contextmanager
def _setup_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `<path>.lock`, waited for up to the busy timeout."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"can't open state store {path}: {lock_path} is held by another"
                        " process that is setting the store up"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.02)
        yield  # the lock goes with the descriptor
    finally:
        os.close(fd)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _ts(when: datetime) -> str:
    # Fixed width, so that text order is time order.
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


class SqliteStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Creating the file, switching it to WAL and migrating it are serialized between
            # processes: SQLite's busy timeout does not cover the switch to WAL, so two
            # processes opening a new file at once would otherwise fail "database is locked".
            with _setup_lock(path):
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                self._db = sqlite3.connect(
                    path,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=_BUSY_TIMEOUT_MS / 1000,
                )
                try:
                    self._db.row_factory = sqlite3.Row
                    self._db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
                    self._enable_wal()
                    self._db.execute("PRAGMA synchronous=NORMAL")
                    self._db.execute("PRAGMA foreign_keys=ON")
                    self._migrate()
                except BaseException:
                    self._db.close()
                    raise
        except sqlite3.Error as exc:
            raise StoreError(f"can't open state store {path}: {exc}") from None
        except OSError as exc:
            raise StoreError(f"can't open state store {path}: {exc.strerror}") from None

    def _enable_wal(self) -> None:
        """`PRAGMA journal_mode=WAL`, retried while another connection holds the file.

        Switching a new file to WAL needs it to itself and does not wait on the busy
        timeout; another program reading the file at that moment makes it fail at once.
        """
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
                continue
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"can't open state store {self._path}: it can't use WAL mode ({mode})"
                )
            return

    # -- schema ---------------------------------------------------------------

    def _migrate(self) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
                )
                row = self._db.execute("SELECT max(version) FROM schema_version").fetchone()
                current = row[0] or 0
                if current > LATEST_VERSION:
                    raise StoreError(
                        f"state store {self._path} has schema version {current}, newer than "
                        f"this bastion ({LATEST_VERSION}); upgrade bastion"
                    )
                for version, statements in MIGRATIONS:
                    if version <= current:
                        continue
                    for statement in statements:
                        self._db.execute(statement)
                    self._db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def schema_version(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT max(version) FROM schema_version").fetchone()
            return int(row[0] or 0)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes ---------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[_SqliteTx]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"state store {self._path} is busy or unwritable: {exc}") from None
            try:
                yield _SqliteTx(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StoreError(f"can't commit to state store {self._path}: {exc}") from None

    # -- reads ----------------------------------------------------------------

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def get_target(self, name: str) -> Target | None:
        rows = self._query("SELECT * FROM targets WHERE name = ?", (name,))
        return _target(rows[0]) if rows else None

    def list_targets(self) -> list[Target]:
        return [_target(r) for r in self._query("SELECT * FROM targets ORDER BY name")]

    def get_target_secret(self, name: str) -> TargetSecret | None:
        rows = self._query("SELECT secret FROM target_secrets WHERE target = ?", (name,))
        return TargetSecret(rows[0]["secret"]) if rows else None

    def get_grant(self, grant_id: str) -> Grant | None:
        with self._lock:
            return _load_grant(self._db, grant_id)

    def list_grants(
        self, *, active_at: datetime | None = None, task: str | None = None
    ) -> list[Grant]:
        sql = "SELECT g.id FROM grants g"
        clauses: list[str] = []
        params: list[Any] = []
        if active_at is not None:
            clauses.append(
                "g.valid_before > ? AND g.valid_after <= ? AND NOT EXISTS "
                "(SELECT 1 FROM revocations r WHERE r.grant_id = g.id)"
            )
            params += [_ts(active_at), _ts(active_at)]
        if task is not None:
            clauses.append("g.task = ?")
            params.append(task)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY g.created_at, g.id"
        with self._lock:
            ids = [r["id"] for r in self._db.execute(sql, params).fetchall()]
            grants = [_load_grant(self._db, gid) for gid in ids]
        return [g for g in grants if g is not None]

    def audit_events(self, since: datetime | None = None) -> Iterator[AuditEvent]:
        if since is None:
            rows = self._query("SELECT * FROM audit_events ORDER BY seq")
        else:
            rows = self._query(
                "SELECT * FROM audit_events WHERE at >= ? ORDER BY seq", (_ts(since),)
            )
        for row in rows:
            yield _audit(row)

    def audit_events_after(self, seq: int, actions: tuple[str, ...]) -> list[AuditEvent]:
        marks = ",".join("?" for _ in actions)
        rows = self._query(
            f"SELECT * FROM audit_events WHERE seq > ? AND action IN ({marks}) ORDER BY seq",
            (seq, *actions),
        )
        return [_audit(r) for r in rows]

    def last_audit_seq(self) -> int:
        rows = self._query("SELECT max(seq) FROM audit_events")
        return int(rows[0][0] or 0)

    def get_session(self, session_id: str) -> Session | None:
        rows = self._query("SELECT * FROM sessions WHERE id = ?", (session_id,))
        return _session(rows[0]) if rows else None

    def list_sessions(self, *, active_only: bool = False, limit: int = 1000) -> list[Session]:
        where = " WHERE ended_at IS NULL" if active_only else ""
        rows = self._query(
            f"SELECT * FROM sessions{where} ORDER BY started_at DESC, id LIMIT ?", (limit,)
        )
        return [_session(r) for r in rows]

    def get_approval(self, approval_id: str) -> Approval | None:
        rows = self._query("SELECT * FROM approvals WHERE id = ?", (approval_id,))
        return _approval(rows[0]) if rows else None

    def list_approvals(self, *, pending_only: bool = True) -> list[Approval]:
        where = " WHERE state = 'pending'" if pending_only else ""
        rows = self._query(f"SELECT * FROM approvals{where} ORDER BY requested_at, id")
        return [_approval(r) for r in rows]

    def get_agent(self, name: str) -> Agent | None:
        rows = self._query("SELECT * FROM agents WHERE name = ?", (name,))
        return _agent(rows[0]) if rows else None

    def get_agent_by_fingerprint(self, fingerprint: str) -> Agent | None:
        rows = self._query("SELECT * FROM agents WHERE key_fingerprint = ?", (fingerprint,))
        return _agent(rows[0]) if rows else None

    def list_agents(self) -> list[Agent]:
        return [_agent(r) for r in self._query("SELECT * FROM agents ORDER BY name")]

    def get_request(self, request_id: str) -> AccessRequest | None:
        rows = self._query("SELECT * FROM access_requests WHERE id = ?", (request_id,))
        return _request(rows[0]) if rows else None

    def list_requests(
        self, *, pending_only: bool = True, task: str | None = None
    ) -> list[AccessRequest]:
        clauses, params = [], []
        if pending_only:
            clauses.append("state = 'pending'")
        if task is not None:
            clauses.append("task = ?")
            params.append(task)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(
            f"SELECT * FROM access_requests{where} ORDER BY requested_at, id", tuple(params)
        )
        return [_request(r) for r in rows]

    def get_recording(self, session_id: str) -> Recording | None:
        rows = self._query("SELECT * FROM recordings WHERE session_id = ?", (session_id,))
        return _recording(rows[0]) if rows else None

    def list_recordings(
        self,
        *,
        agent: str | None = None,
        target: str | None = None,
        task: str | None = None,
        since: datetime | None = None,
        states: tuple[RecordingState, ...] | None = None,
        ended_before: datetime | None = None,
    ) -> list[Recording]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("agent", agent), ("target", target), ("task", task)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            clauses.append("started_at >= ?")
            params.append(_ts(since))
        if ended_before is not None:
            clauses.append("ended_at IS NOT NULL AND ended_at < ?")
            params.append(_ts(ended_before))
        if states:
            clauses.append(f"state IN ({','.join('?' for _ in states)})")
            params += [s.value for s in states]
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(
            f"SELECT * FROM recordings{where} ORDER BY started_at, session_id", tuple(params)
        )
        return [_recording(r) for r in rows]


class _SqliteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def next_serial(self) -> int:
        row = self._db.execute(
            "UPDATE counters SET value = value + 1 WHERE name = 'ca_serial' RETURNING value"
        ).fetchone()
        return int(row[0])

    def grant_id_taken(self, grant_id: str) -> bool:
        return (
            self._db.execute("SELECT 1 FROM grants WHERE id = ?", (grant_id,)).fetchone()
            is not None
        )

    def get_target(self, name: str) -> Target | None:
        row = self._db.execute("SELECT * FROM targets WHERE name = ?", (name,)).fetchone()
        return _target(row) if row else None

    def get_grant(self, grant_id: str) -> Grant | None:
        return _load_grant(self._db, grant_id)

    def insert_target(self, target: Target, secret: TargetSecret) -> None:
        self._db.execute(
            "INSERT INTO targets (name, kind, host, port, login, host_key, dbname, sslmode,"
            " sslrootcert, created_at, created_by) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                target.name,
                target.kind.value,
                target.host,
                target.port,
                target.user,
                target.host_key,
                target.database,
                target.sslmode.value if target.sslmode else None,
                target.sslrootcert,
                _ts(target.created_at),
                target.created_by,
            ),
        )
        self._db.execute(
            "INSERT INTO target_secrets (target, secret) VALUES (?, ?)", (target.name, secret.value)
        )

    def delete_target(self, name: str) -> None:
        self._db.execute("DELETE FROM target_secrets WHERE target = ?", (name,))
        self._db.execute("DELETE FROM targets WHERE name = ?", (name,))

    def insert_grant(self, grant: Grant) -> None:
        self._db.execute(
            "INSERT INTO grants (id, agent, task, reason, valid_after, valid_before, created_at,"
            " created_by, permit_pty, permit_port_forwarding, source_addresses, force_command)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                grant.id,
                grant.agent,
                grant.task,
                grant.reason,
                _ts(grant.valid_after),
                _ts(grant.valid_before),
                _ts(grant.created_at),
                grant.created_by,
                int(grant.permit_pty),
                int(grant.permit_port_forwarding),
                json.dumps(list(grant.source_addresses)),
                grant.force_command,
            ),
        )
        self._db.executemany(
            "INSERT INTO grant_targets (grant_id, target, position) VALUES (?, ?, ?)",
            [(grant.id, name, i) for i, name in enumerate(grant.targets)],
        )
        self._db.execute(
            "INSERT INTO certificates (serial, grant_id, key_id, key_fingerprint) VALUES (?,?,?,?)",
            (grant.serial, grant.id, grant.key_id, grant.key_fingerprint),
        )

    def insert_revocation(self, grant_id: str, revocation: Revocation) -> None:
        self._db.execute(
            "INSERT INTO revocations (grant_id, revoked_at, revoked_by, reason) VALUES (?,?,?,?)",
            (grant_id, _ts(revocation.at), revocation.by, revocation.reason),
        )

    def append_audit(
        self, at: datetime, actor: str, action: str, details: dict[str, Any]
    ) -> AuditEvent:
        row = self._db.execute(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        seq, prev = (row["seq"] + 1, row["hash"]) if row else (1, GENESIS_HASH)
        at = datetime.fromisoformat(_ts(at))  # the precision that is stored is the one hashed
        digest = event_hash(seq, at, actor, action, details, prev)
        self._db.execute(
            "INSERT INTO audit_events (seq, at, actor, action, details, prev_hash, hash)"
            " VALUES (?,?,?,?,?,?,?)",
            (seq, _ts(at), actor, action, json.dumps(details, sort_keys=True), prev, digest),
        )
        return AuditEvent(seq, at, actor, action, details, prev, digest)

    def get_session(self, session_id: str) -> Session | None:
        row = self._db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
        return _session(row) if row else None

    def insert_session(self, session: Session) -> None:
        self._db.execute(
            "INSERT INTO sessions (id, grant_id, agent, task, target, kind, client, command,"
            " started_at, node) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                session.id,
                session.grant_id,
                session.agent,
                session.task,
                session.target,
                session.kind.value,
                session.client,
                session.command,
                _ts(session.started_at),
                session.node,
            ),
        )

    def end_session(self, session: Session) -> None:
        assert session.ended_at is not None and session.end_reason is not None
        self._db.execute(
            "UPDATE sessions SET ended_at = ?, end_reason = ?, exit_status = ?, bytes_up = ?,"
            " bytes_down = ?, detail = ? WHERE id = ? AND ended_at IS NULL",
            (
                _ts(session.ended_at),
                session.end_reason.value,
                session.exit_status,
                session.bytes_up,
                session.bytes_down,
                session.detail,
                session.id,
            ),
        )

    def end_active_sessions(self, node: str, at: datetime, reason: EndReason) -> list[str]:
        rows = self._db.execute(
            "UPDATE sessions SET ended_at = ?, end_reason = ? WHERE node = ? AND ended_at IS NULL"
            " RETURNING id",
            (_ts(at), reason.value, node),
        ).fetchall()
        return sorted(r[0] for r in rows)

    def get_approval(self, approval_id: str) -> Approval | None:
        row = self._db.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        return _approval(row) if row else None

    def insert_recording(self, recording: Recording) -> None:
        self._db.execute(
            "INSERT INTO recordings (session_id, path, node, agent, grant_id, task, target, kind,"
            " started_at, state) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                recording.session_id,
                recording.path,
                recording.node,
                recording.agent,
                recording.grant_id,
                recording.task,
                recording.target,
                recording.kind.value,
                _ts(recording.started_at),
                recording.state.value,
            ),
        )

    def update_recording(
        self,
        session_id: str,
        state: RecordingState,
        *,
        ended_at: datetime | None = None,
        size: int | None = None,
        sha256: str | None = None,
    ) -> None:
        self._db.execute(
            "UPDATE recordings SET state = ?, ended_at = coalesce(?, ended_at),"
            " size = coalesce(?, size), sha256 = coalesce(?, sha256) WHERE session_id = ?",
            (state.value, _ts(ended_at) if ended_at else None, size, sha256, session_id),
        )

    def insert_approval(self, approval: Approval) -> None:
        self._db.execute(
            "INSERT INTO approvals (id, kind, session_id, grant_id, agent, task, target, body,"
            " reasons, requested_at, expires_at, state) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                approval.id,
                approval.kind,
                approval.session_id,
                approval.grant_id,
                approval.agent,
                approval.task,
                approval.target,
                approval.text,
                json.dumps(list(approval.reasons)),
                _ts(approval.requested_at),
                _ts(approval.expires_at),
                approval.state.value,
            ),
        )

    def decide_approval(
        self, approval_id: str, state: ApprovalState, at: datetime, by: str, reason: str
    ) -> None:
        self._db.execute(
            "UPDATE approvals SET state = ?, decided_at = ?, decided_by = ?, decision_reason = ?"
            " WHERE id = ? AND state = 'pending'",
            (state.value, _ts(at), by, reason, approval_id),
        )

    def insert_agent(self, agent: Agent) -> None:
        self._db.execute(
            "INSERT INTO agents (name, public_key, key_fingerprint, may_request,"
            " max_ttl_seconds, created_at, created_by) VALUES (?,?,?,?,?,?,?)",
            (
                agent.name,
                agent.public_key,
                agent.key_fingerprint,
                json.dumps(list(agent.may_request)),
                int(agent.max_ttl.total_seconds()) if agent.max_ttl else None,
                _ts(agent.created_at),
                agent.created_by,
            ),
        )

    def get_agent(self, name: str) -> Agent | None:
        row = self._db.execute("SELECT * FROM agents WHERE name = ?", (name,)).fetchone()
        return _agent(row) if row else None

    def get_agent_by_fingerprint(self, fingerprint: str) -> Agent | None:
        row = self._db.execute(
            "SELECT * FROM agents WHERE key_fingerprint = ?", (fingerprint,)
        ).fetchone()
        return _agent(row) if row else None

    def delete_agent(self, name: str) -> None:
        self._db.execute("DELETE FROM agents WHERE name = ?", (name,))

    def get_request(self, request_id: str) -> AccessRequest | None:
        row = self._db.execute(
            "SELECT * FROM access_requests WHERE id = ?", (request_id,)
        ).fetchone()
        return _request(row) if row else None

    def insert_request(self, request: AccessRequest) -> None:
        self._db.execute(
            "INSERT INTO access_requests (id, agent, key_fingerprint, targets, task, reason,"
            " ttl_seconds, client, node, requested_at, expires_at, state)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                request.id,
                request.agent,
                request.key_fingerprint,
                json.dumps(list(request.targets)),
                request.task,
                request.reason,
                int(request.ttl.total_seconds()),
                request.client,
                request.node,
                _ts(request.requested_at),
                _ts(request.expires_at),
                request.state.value,
            ),
        )

    def decide_request(
        self,
        request_id: str,
        state: RequestState,
        at: datetime,
        by: str,
        reason: str,
        *,
        grant_id: str | None = None,
        certificate: str | None = None,
        ttl: timedelta | None = None,
    ) -> None:
        seconds = int(ttl.total_seconds()) if ttl is not None else None
        self._db.execute(
            "UPDATE access_requests SET state = ?, decided_at = ?, decided_by = ?,"
            " decision_reason = ?, grant_id = ?, certificate = ?,"
            " ttl_seconds = COALESCE(?, ttl_seconds)"
            " WHERE id = ? AND state = 'pending'",
            (state.value, _ts(at), by, reason, grant_id, certificate, seconds, request_id),
        )


def _agent(row: sqlite3.Row) -> Agent:
    seconds = row["max_ttl_seconds"]
    return Agent(
        name=row["name"],
        public_key=row["public_key"],
        key_fingerprint=row["key_fingerprint"],
        may_request=tuple(json.loads(row["may_request"])),
        max_ttl=timedelta(seconds=seconds) if seconds is not None else None,
        created_at=_dt(row["created_at"]),
        created_by=row["created_by"],
    )


def _request(row: sqlite3.Row) -> AccessRequest:
    return AccessRequest(
        id=row["id"],
        agent=row["agent"],
        key_fingerprint=row["key_fingerprint"],
        targets=tuple(json.loads(row["targets"])),
        task=row["task"],
        reason=row["reason"],
        ttl=timedelta(seconds=row["ttl_seconds"]),
        client=row["client"],
        node=row["node"],
        requested_at=_dt(row["requested_at"]),
        expires_at=_dt(row["expires_at"]),
        state=RequestState(row["state"]),
        decided_at=_dt(row["decided_at"]) if row["decided_at"] else None,
        decided_by=row["decided_by"],
        decision_reason=row["decision_reason"],
        grant_id=row["grant_id"],
        certificate=row["certificate"],
    )


def _session(row: sqlite3.Row) -> Session:
    return Session(
        id=row["id"],
        grant_id=row["grant_id"],
        agent=row["agent"],
        task=row["task"],
        target=row["target"],
        kind=SessionKind(row["kind"]),
        client=row["client"],
        command=row["command"],
        started_at=_dt(row["started_at"]),
        node=row["node"],
        ended_at=_dt(row["ended_at"]) if row["ended_at"] else None,
        end_reason=EndReason(row["end_reason"]) if row["end_reason"] else None,
        exit_status=row["exit_status"],
        bytes_up=row["bytes_up"],
        bytes_down=row["bytes_down"],
        detail=row["detail"],
    )


def _approval(row: sqlite3.Row) -> Approval:
    return Approval(
        id=row["id"],
        kind=row["kind"],
        session_id=row["session_id"],
        grant_id=row["grant_id"],
        agent=row["agent"],
        task=row["task"],
        target=row["target"],
        text=row["body"],
        reasons=tuple(json.loads(row["reasons"])),
        requested_at=_dt(row["requested_at"]),
        expires_at=_dt(row["expires_at"]),
        state=ApprovalState(row["state"]),
        decided_at=_dt(row["decided_at"]) if row["decided_at"] else None,
        decided_by=row["decided_by"],
        decision_reason=row["decision_reason"],
    )


def _recording(row: sqlite3.Row) -> Recording:
    return Recording(
        session_id=row["session_id"],
        path=row["path"],
        node=row["node"],
        agent=row["agent"],
        grant_id=row["grant_id"],
        task=row["task"],
        target=row["target"],
        kind=SessionKind(row["kind"]),
        started_at=_dt(row["started_at"]),
        state=RecordingState(row["state"]),
        ended_at=_dt(row["ended_at"]) if row["ended_at"] else None,
        size=row["size"],
        sha256=row["sha256"],
    )


def _target(row: sqlite3.Row) -> Target:
    return Target(
        name=row["name"],
        kind=TargetKind(row["kind"]),
        host=row["host"],
        port=row["port"],
        user=row["login"],
        host_key=row["host_key"],
        database=row["dbname"],
        sslmode=SslMode(row["sslmode"]) if row["sslmode"] else None,
        sslrootcert=row["sslrootcert"],
        created_at=_dt(row["created_at"]),
        created_by=row["created_by"],
    )


def _load_grant(db: sqlite3.Connection, grant_id: str) -> Grant | None:
    row = db.execute(
        "SELECT g.*, c.serial, c.key_id, c.key_fingerprint, r.revoked_at, r.revoked_by, r.reason"
        " AS revoke_reason FROM grants g JOIN certificates c ON c.grant_id = g.id"
        " LEFT JOIN revocations r ON r.grant_id = g.id WHERE g.id = ?",
        (grant_id,),
    ).fetchone()
    if row is None:
        return None
    targets = tuple(
        r["target"]
        for r in db.execute(
            "SELECT target FROM grant_targets WHERE grant_id = ? ORDER BY position", (grant_id,)
        )
    )
    revocation = (
        Revocation(_dt(row["revoked_at"]), row["revoked_by"], row["revoke_reason"])
        if row["revoked_at"]
        else None
    )
    return Grant(
        id=row["id"],
        agent=row["agent"],
        task=row["task"],
        reason=row["reason"],
        targets=targets,
        valid_after=_dt(row["valid_after"]),
        valid_before=_dt(row["valid_before"]),
        created_at=_dt(row["created_at"]),
        created_by=row["created_by"],
        serial=row["serial"],
        key_id=row["key_id"],
        key_fingerprint=row["key_fingerprint"],
        permit_pty=bool(row["permit_pty"]),
        permit_port_forwarding=bool(row["permit_port_forwarding"]),
        source_addresses=tuple(json.loads(row["source_addresses"])),
        force_command=row["force_command"],
        revocation=revocation,
    )


class UnreadableTime(datetime):
    """A stored event time that is not ISO 8601, kept as the text that was found.

    It hashes and prints as that text, so the audit chain check names the event as
    edited instead of failing to read it; as a point in time it is the epoch.
    """

    raw: str

    def __new__(cls, raw: str) -> UnreadableTime:
        self = super().__new__(cls, 1970, 1, 1, tzinfo=UTC)
        self.raw = raw
        return self

    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        return self.raw

    def astimezone(self, tz: tzinfo | None = None) -> UnreadableTime:
        return self

    def strftime(self, format: str) -> str:
        return f"unreadable time {self.raw!r}"

    def __str__(self) -> str:
        return self.raw

    def __repr__(self) -> str:
        return f"UnreadableTime({self.raw!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (UnreadableTime, (self.raw,))


def _audit(row: sqlite3.Row) -> AuditEvent:
    """One stored event; a field that can't be read comes back as the text that is stored.

    Such an event no longer hashes to its stored hash, so `audit verify` names it
    rather than crashing on it, and `audit list` still shows it.
    """
    raw_details = row["details"]
    try:
        details = json.loads(raw_details)
    except (TypeError, ValueError):
        details = None
    if not isinstance(details, dict):
        details = {UNREADABLE_DETAILS: raw_details}
    try:
        at = _dt(row["at"])
        if at.tzinfo is None:
            raise ValueError("no time zone")
    except (TypeError, ValueError):
        at = UnreadableTime(str(row["at"]))
    return AuditEvent(
        seq=row["seq"],
        at=at,
        actor=row["actor"],
        action=row["action"],
        details=details,
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )
