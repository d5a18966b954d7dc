"""The SQL both backends share: every query and write of the store, written once.

`SqlReads` is the read half of `Store` and `SqlTx` the whole of `StoreTx`, over an
`Executor` that each backend provides: it runs one statement written with `?`
placeholders (the PostgreSQL executor rewrites them as `%s`) and returns the rows.
What differs between the backends (connections, locking, the transaction itself,
notifications) stays in `sqlite.py` and `postgres.py`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

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
    Node,
    Recording,
    RecordingState,
    RequestState,
    Revocation,
    Session,
    Target,
    TargetSecret,
    WebToken,
    WebUser,
)
from bastion.store import rows
from bastion.store.base import MigrationReport
from bastion.store.migrations import LATEST_VERSION, MIGRATIONS
from bastion.store.rows import Row, ts


class Executor(Protocol):
    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement (`?` placeholders); its rows, or [] for one that returns none."""
        ...

    def many(self, sql: str, params: Iterable[Sequence[Any]]) -> None: ...


T = TypeVar("T")


def _one(found: list[Row], make: Callable[[Row], T]) -> T | None:
    return make(found[0]) if found else None


# -- schema ---------------------------------------------------------------------------


def current_version(x: Executor) -> int:
    x.rows("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    return int(x.rows("SELECT max(version) AS v FROM schema_version")[0]["v"] or 0)


def migrate(x: Executor, location: str, *, apply: bool, behind_ok: bool) -> MigrationReport:
    """Check the schema version inside a write transaction; apply what is missing if `apply`.

    A schema newer than this code is always refused; one that is behind is refused
    unless `apply` or `behind_ok` (what `bastion migrate --dry-run` needs to report it).
    """
    current = current_version(x)
    if current > LATEST_VERSION:
        raise StoreError(
            f"state store {location} has schema version {current}, newer than "
            f"this bastion ({LATEST_VERSION}); upgrade bastion"
        )
    pending = [(v, statements) for v, statements in MIGRATIONS if v > current]
    if pending and not apply and not behind_ok:
        raise StoreError(
            f"state store {location} has schema version {current}, this bastion needs"
            f" {LATEST_VERSION}: run `bastion migrate`"
        )
    if apply:
        for version, statements in pending:
            for statement in statements:
                x.rows(statement)
            x.rows("INSERT INTO schema_version (version) VALUES (?)", (version,))
    return MigrationReport(
        location=location,
        from_version=current,
        to_version=LATEST_VERSION if apply else current,
        pending=tuple(v for v, _ in pending),
    )


# -- reads ------------------------------------------------------------------------------


def load_grant(x: Executor, grant_id: str) -> Grant | None:
    found = x.rows(
        "SELECT g.*, c.serial, c.key_id, c.key_fingerprint, r.revoked_at, r.revoked_by, r.reason"
        " AS revoke_reason FROM grants g JOIN certificates c ON c.grant_id = g.id"
        " LEFT JOIN revocations r ON r.grant_id = g.id WHERE g.id = ?",
        (grant_id,),
    )
    if not found:
        return None
    row = found[0]
    targets = tuple(
        r["target"]
        for r in x.rows(
            "SELECT target FROM grant_targets WHERE grant_id = ? ORDER BY position", (grant_id,)
        )
    )
    revocation = (
        Revocation(rows.dt(row["revoked_at"]), row["revoked_by"], row["revoke_reason"])
        if row["revoked_at"]
        else None
    )
    return Grant(
        id=row["id"],
        agent=row["agent"],
        task=row["task"],
        reason=row["reason"],
        targets=targets,
        valid_after=rows.dt(row["valid_after"]),
        valid_before=rows.dt(row["valid_before"]),
        created_at=rows.dt(row["created_at"]),
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


class SqlReads:
    """The read half of `Store`; a backend supplies `_reader()` (an executor to read with)."""

    def _reader(self) -> Executor:
        raise NotImplementedError

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._reader().rows(sql, params)

    def schema_version(self) -> int:
        return int(self._query("SELECT max(version) AS v FROM schema_version")[0]["v"] or 0)

    def get_target(self, name: str) -> Target | None:
        return _one(self._query("SELECT * FROM targets WHERE name = ?", (name,)), rows.target)

    def list_targets(self) -> list[Target]:
        return [rows.target(r) for r in self._query("SELECT * FROM targets ORDER BY name")]

    def get_target_secret(self, name: str) -> TargetSecret | None:
        found = self._query("SELECT secret FROM target_secrets WHERE target = ?", (name,))
        return TargetSecret(found[0]["secret"]) if found else None

    def get_grant(self, grant_id: str) -> Grant | None:
        return load_grant(self._reader(), grant_id)

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
            params += [ts(active_at), ts(active_at)]
        if task is not None:
            clauses.append("g.task = ?")
            params.append(task)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY g.created_at, g.id"
        reader = self._reader()
        ids = [r["id"] for r in reader.rows(sql, params)]
        grants = [load_grant(reader, gid) for gid in ids]
        return [g for g in grants if g is not None]

    def audit_events(self, since: datetime | None = None) -> Iterator[AuditEvent]:
        if since is None:
            found = self._query("SELECT * FROM audit_events ORDER BY seq")
        else:
            found = self._query(
                "SELECT * FROM audit_events WHERE at >= ? ORDER BY seq", (ts(since),)
            )
        for row in found:
            yield rows.audit(row)

    def audit_events_after(self, seq: int, actions: tuple[str, ...]) -> list[AuditEvent]:
        marks = ",".join("?" for _ in actions)
        found = self._query(
            f"SELECT * FROM audit_events WHERE seq > ? AND action IN ({marks}) ORDER BY seq",
            (seq, *actions),
        )
        return [rows.audit(r) for r in found]

    def last_audit_seq(self) -> int:
        return int(self._query("SELECT max(seq) AS seq FROM audit_events")[0]["seq"] or 0)

    def get_session(self, session_id: str) -> Session | None:
        found = self._query("SELECT * FROM sessions WHERE id = ?", (session_id,))
        return _one(found, rows.session)

    def list_sessions(self, *, active_only: bool = False, limit: int = 1000) -> list[Session]:
        where = " WHERE ended_at IS NULL" if active_only else ""
        found = self._query(
            f"SELECT * FROM sessions{where} ORDER BY started_at DESC, id LIMIT ?", (limit,)
        )
        return [rows.session(r) for r in found]

    def get_approval(self, approval_id: str) -> Approval | None:
        found = self._query("SELECT * FROM approvals WHERE id = ?", (approval_id,))
        return _one(found, rows.approval)

    def list_approvals(self, *, pending_only: bool = True) -> list[Approval]:
        where = " WHERE state = 'pending'" if pending_only else ""
        found = self._query(f"SELECT * FROM approvals{where} ORDER BY requested_at, id")
        return [rows.approval(r) for r in found]

    def get_agent(self, name: str) -> Agent | None:
        return _one(self._query("SELECT * FROM agents WHERE name = ?", (name,)), rows.agent)

    def get_agent_by_fingerprint(self, fingerprint: str) -> Agent | None:
        found = self._query("SELECT * FROM agents WHERE key_fingerprint = ?", (fingerprint,))
        return _one(found, rows.agent)

    def list_agents(self) -> list[Agent]:
        return [rows.agent(r) for r in self._query("SELECT * FROM agents ORDER BY name")]

    def get_request(self, request_id: str) -> AccessRequest | None:
        found = self._query("SELECT * FROM access_requests WHERE id = ?", (request_id,))
        return _one(found, rows.request)

    def get_web_user(self, name: str) -> WebUser | None:
        return _one(self._query("SELECT * FROM web_users WHERE name = ?", (name,)), rows.web_user)

    def list_web_users(self) -> list[WebUser]:
        return [rows.web_user(r) for r in self._query("SELECT * FROM web_users ORDER BY name")]

    def get_web_token(self, token_hash: str) -> WebToken | None:
        found = self._query("SELECT * FROM web_tokens WHERE token_hash = ?", (token_hash,))
        return _one(found, rows.web_token)

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
        found = self._query(
            f"SELECT * FROM access_requests{where} ORDER BY requested_at, id", tuple(params)
        )
        return [rows.request(r) for r in found]

    def get_recording(self, session_id: str) -> Recording | None:
        found = self._query("SELECT * FROM recordings WHERE session_id = ?", (session_id,))
        return _one(found, rows.recording)

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
            params.append(ts(since))
        if ended_before is not None:
            clauses.append("ended_at IS NOT NULL AND ended_at < ?")
            params.append(ts(ended_before))
        if states:
            clauses.append(f"state IN ({','.join('?' for _ in states)})")
            params += [s.value for s in states]
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        found = self._query(
            f"SELECT * FROM recordings{where} ORDER BY started_at, session_id", tuple(params)
        )
        return [rows.recording(r) for r in found]

    def list_nodes(self) -> list[Node]:
        return [rows.node(r) for r in self._query("SELECT * FROM nodes ORDER BY name")]


# -- writes -----------------------------------------------------------------------------


class SqlTx:
    """`StoreTx` over one backend's transaction; `_appended` is the backend's hook."""

    def __init__(self, x: Executor) -> None:
        self._x = x

    @property
    def executor(self) -> Executor:
        return self._x

    def _appended(self, event: AuditEvent) -> None:
        """Called after each audit append, in the same transaction."""

    def next_serial(self) -> int:
        found = self._x.rows(
            "UPDATE counters SET value = value + 1 WHERE name = 'ca_serial' RETURNING value"
        )
        return int(found[0]["value"])

    def grant_id_taken(self, grant_id: str) -> bool:
        return bool(self._x.rows("SELECT 1 AS taken FROM grants WHERE id = ?", (grant_id,)))

    def get_target(self, name: str) -> Target | None:
        return _one(self._x.rows("SELECT * FROM targets WHERE name = ?", (name,)), rows.target)

    def get_grant(self, grant_id: str) -> Grant | None:
        return load_grant(self._x, grant_id)

    def insert_target(self, target: Target, secret: TargetSecret) -> None:
        self._x.rows(
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
                ts(target.created_at),
                target.created_by,
            ),
        )
        self._x.rows(
            "INSERT INTO target_secrets (target, secret) VALUES (?, ?)", (target.name, secret.value)
        )

    def delete_target(self, name: str) -> None:
        self._x.rows("DELETE FROM target_secrets WHERE target = ?", (name,))
        self._x.rows("DELETE FROM targets WHERE name = ?", (name,))

    def insert_grant(self, grant: Grant) -> None:
        self._x.rows(
            "INSERT INTO grants (id, agent, task, reason, valid_after, valid_before, created_at,"
            " created_by, permit_pty, permit_port_forwarding, source_addresses, force_command)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                grant.id,
                grant.agent,
                grant.task,
                grant.reason,
                ts(grant.valid_after),
                ts(grant.valid_before),
                ts(grant.created_at),
                grant.created_by,
                int(grant.permit_pty),
                int(grant.permit_port_forwarding),
                json.dumps(list(grant.source_addresses)),
                grant.force_command,
            ),
        )
        self._x.many(
            "INSERT INTO grant_targets (grant_id, target, position) VALUES (?, ?, ?)",
            [(grant.id, name, i) for i, name in enumerate(grant.targets)],
        )
        self._x.rows(
            "INSERT INTO certificates (serial, grant_id, key_id, key_fingerprint) VALUES (?,?,?,?)",
            (grant.serial, grant.id, grant.key_id, grant.key_fingerprint),
        )

    def insert_revocation(self, grant_id: str, revocation: Revocation) -> None:
        self._x.rows(
            "INSERT INTO revocations (grant_id, revoked_at, revoked_by, reason) VALUES (?,?,?,?)",
            (grant_id, ts(revocation.at), revocation.by, revocation.reason),
        )

    def append_audit(
        self, at: datetime, actor: str, action: str, details: dict[str, Any]
    ) -> AuditEvent:
        # Safe only because the backend's write transaction is serialized (SQLite's write
        # lock, PostgreSQL's advisory lock): the last hash read here is still the last.
        found = self._x.rows("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        seq, prev = (found[0]["seq"] + 1, found[0]["hash"]) if found else (1, GENESIS_HASH)
        at = rows.dt(ts(at))  # the precision that is stored is the one hashed
        digest = event_hash(seq, at, actor, action, details, prev)
        self._x.rows(
            "INSERT INTO audit_events (seq, at, actor, action, details, prev_hash, hash)"
            " VALUES (?,?,?,?,?,?,?)",
            (seq, ts(at), actor, action, json.dumps(details, sort_keys=True), prev, digest),
        )
        event = AuditEvent(seq, at, actor, action, details, prev, digest)
        self._appended(event)
        return event

    def get_session(self, session_id: str) -> Session | None:
        found = self._x.rows("SELECT * FROM sessions WHERE id = ?", (session_id,))
        return _one(found, rows.session)

    def insert_session(self, session: Session) -> None:
        self._x.rows(
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
                ts(session.started_at),
                session.node,
            ),
        )

    def end_session(self, session: Session) -> None:
        assert session.ended_at is not None and session.end_reason is not None
        self._x.rows(
            "UPDATE sessions SET ended_at = ?, end_reason = ?, exit_status = ?, bytes_up = ?,"
            " bytes_down = ?, detail = ? WHERE id = ? AND ended_at IS NULL",
            (
                ts(session.ended_at),
                session.end_reason.value,
                session.exit_status,
                session.bytes_up,
                session.bytes_down,
                session.detail,
                session.id,
            ),
        )

    def end_active_sessions(self, node: str, at: datetime, reason: EndReason) -> list[str]:
        found = self._x.rows(
            "UPDATE sessions SET ended_at = ?, end_reason = ? WHERE node = ? AND ended_at IS NULL"
            " RETURNING id",
            (ts(at), reason.value, node),
        )
        return sorted(r["id"] for r in found)

    def get_approval(self, approval_id: str) -> Approval | None:
        found = self._x.rows("SELECT * FROM approvals WHERE id = ?", (approval_id,))
        return _one(found, rows.approval)

    def insert_recording(self, recording: Recording) -> None:
        self._x.rows(
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
                ts(recording.started_at),
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
        self._x.rows(
            "UPDATE recordings SET state = ?, ended_at = coalesce(?, ended_at),"
            " size = coalesce(?, size), sha256 = coalesce(?, sha256) WHERE session_id = ?",
            (state.value, ts(ended_at) if ended_at else None, size, sha256, session_id),
        )

    def insert_approval(self, approval: Approval) -> None:
        self._x.rows(
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
                ts(approval.requested_at),
                ts(approval.expires_at),
                approval.state.value,
            ),
        )

    def decide_approval(
        self, approval_id: str, state: ApprovalState, at: datetime, by: str, reason: str
    ) -> None:
        self._x.rows(
            "UPDATE approvals SET state = ?, decided_at = ?, decided_by = ?, decision_reason = ?"
            " WHERE id = ? AND state = 'pending'",
            (state.value, ts(at), by, reason, approval_id),
        )

    def insert_agent(self, agent: Agent) -> None:
        self._x.rows(
            "INSERT INTO agents (name, public_key, key_fingerprint, may_request,"
            " max_ttl_seconds, created_at, created_by) VALUES (?,?,?,?,?,?,?)",
            (
                agent.name,
                agent.public_key,
                agent.key_fingerprint,
                json.dumps(list(agent.may_request)),
                int(agent.max_ttl.total_seconds()) if agent.max_ttl else None,
                ts(agent.created_at),
                agent.created_by,
            ),
        )

    def get_agent(self, name: str) -> Agent | None:
        return _one(self._x.rows("SELECT * FROM agents WHERE name = ?", (name,)), rows.agent)

    def get_agent_by_fingerprint(self, fingerprint: str) -> Agent | None:
        found = self._x.rows("SELECT * FROM agents WHERE key_fingerprint = ?", (fingerprint,))
        return _one(found, rows.agent)

    def delete_agent(self, name: str) -> None:
        self._x.rows("DELETE FROM agents WHERE name = ?", (name,))

    def get_web_user(self, name: str) -> WebUser | None:
        return _one(self._x.rows("SELECT * FROM web_users WHERE name = ?", (name,)), rows.web_user)

    def insert_web_user(self, user: WebUser) -> None:
        self._x.rows(
            "INSERT INTO web_users (name, role, password_hash, created_at, created_by)"
            " VALUES (?,?,?,?,?)",
            (user.name, user.role.value, user.password_hash, ts(user.created_at), user.created_by),
        )

    def delete_web_user(self, name: str) -> None:
        self._x.rows("DELETE FROM web_tokens WHERE user_name = ?", (name,))
        self._x.rows("DELETE FROM web_users WHERE name = ?", (name,))

    def insert_web_token(self, token: WebToken) -> None:
        self._x.rows(
            "INSERT INTO web_tokens (token_hash, kind, user_name, created_at, expires_at, client)"
            " VALUES (?,?,?,?,?,?)",
            (
                token.token_hash,
                token.kind.value,
                token.user,
                ts(token.created_at),
                ts(token.expires_at),
                token.client,
            ),
        )

    def delete_web_token(self, token_hash: str) -> bool:
        found = self._x.rows(
            "DELETE FROM web_tokens WHERE token_hash = ? RETURNING token_hash", (token_hash,)
        )
        return len(found) == 1

    def delete_expired_web_tokens(self, now: datetime) -> int:
        found = self._x.rows(
            "DELETE FROM web_tokens WHERE expires_at <= ? RETURNING token_hash", (ts(now),)
        )
        return len(found)

    def get_request(self, request_id: str) -> AccessRequest | None:
        found = self._x.rows("SELECT * FROM access_requests WHERE id = ?", (request_id,))
        return _one(found, rows.request)

    def insert_request(self, request: AccessRequest) -> None:
        self._x.rows(
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
                ts(request.requested_at),
                ts(request.expires_at),
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
        self._x.rows(
            "UPDATE access_requests SET state = ?, decided_at = ?, decided_by = ?,"
            " decision_reason = ?, grant_id = ?, certificate = ?,"
            " ttl_seconds = COALESCE(CAST(? AS BIGINT), ttl_seconds)"
            " WHERE id = ? AND state = 'pending'",
            (state.value, ts(at), by, reason, grant_id, certificate, seconds, request_id),
        )

    # -- nodes ------------------------------------------------------------------------

    def register_node(self, name: str, address: str, at: datetime) -> None:
        """This node starts (or starts again): alive from now, neither stopped nor lost."""
        self._x.rows(
            "INSERT INTO nodes (name, address, started_at, heartbeat_at) VALUES (?,?,?,?)"
            " ON CONFLICT (name) DO UPDATE SET address = excluded.address,"
            " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,"
            " stopped_at = NULL, lost_at = NULL",
            (name, address, ts(at), ts(at)),
        )

    def heartbeat_node(self, name: str, at: datetime) -> Node | None:
        """Record that `name` is alive at `at`; the node as stored (None: not registered)."""
        found = self._x.rows(
            "UPDATE nodes SET heartbeat_at = ? WHERE name = ? RETURNING *", (ts(at), name)
        )
        return _one(found, rows.node)

    def stop_node(self, name: str, at: datetime) -> None:
        self._x.rows("UPDATE nodes SET stopped_at = ? WHERE name = ?", (ts(at), name))

    def silent_nodes(self, silent_since: datetime) -> list[Node]:
        """Nodes neither stopped nor lost whose last heartbeat is older than `silent_since`."""
        found = self._x.rows(
            "SELECT * FROM nodes WHERE stopped_at IS NULL AND lost_at IS NULL"
            " AND heartbeat_at < ? ORDER BY name",
            (ts(silent_since),),
        )
        return [rows.node(r) for r in found]

    def mark_node_lost(self, name: str, at: datetime) -> None:
        self._x.rows("UPDATE nodes SET lost_at = ? WHERE name = ?", (ts(at), name))
