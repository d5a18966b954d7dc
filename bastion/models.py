"""Frozen value types that cross layers: targets, grants, audit events.

No I/O and no policy here: only the shape of the facts the other layers exchange.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any


class TargetKind(enum.StrEnum):
    SSH = "ssh"
    POSTGRES = "postgres"


class SslMode(enum.StrEnum):
    DISABLE = "disable"
    REQUIRE = "require"
    VERIFY_FULL = "verify-full"


@dataclass(frozen=True)
class Target:
    """Something agents reach through the bastion, and how the bastion logs in to it.

    The login's secret (SSH private key or database password) is not part of this
    value: it lives in the store apart from the target and only the gateway reads it.
    """

    name: str
    kind: TargetKind
    host: str
    port: int
    user: str
    created_at: datetime
    created_by: str
    host_key: str | None = None  # ssh: the pinned OpenSSH public key line
    database: str | None = None  # postgres
    sslmode: SslMode | None = None  # postgres
    sslrootcert: str | None = None  # postgres, verify-full

    def public_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind.value,
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
        }
        if self.kind is TargetKind.SSH:
            data["host_key"] = self.host_key
        else:
            data["database"] = self.database
            data["sslmode"] = self.sslmode.value if self.sslmode else None
            data["sslrootcert"] = self.sslrootcert
        return data


@dataclass(frozen=True)
class TargetSecret:
    """The upstream credential: an OpenSSH private key (ssh) or a password (postgres)."""

    value: str = field(repr=False)


class GrantState(enum.StrEnum):
    ACTIVE = "active"
    NOT_YET_VALID = "not-yet-valid"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True)
class Revocation:
    at: datetime
    by: str
    reason: str


@dataclass(frozen=True)
class Grant:
    """One deliberate permission: this agent, these targets, this task, this window.

    It is also the record of the certificate issued for it (serial, key id, key
    fingerprint), so the gateway can tell the bastion's own certificate from a copy.
    """

    id: str
    agent: str
    task: str
    reason: str
    targets: tuple[str, ...]
    valid_after: datetime
    valid_before: datetime
    created_at: datetime
    created_by: str
    serial: int
    key_id: str
    key_fingerprint: str
    permit_pty: bool
    permit_port_forwarding: bool
    source_addresses: tuple[str, ...] = ()
    force_command: str | None = None
    revocation: Revocation | None = None

    def state(self, now: datetime) -> GrantState:
        if self.revocation is not None:
            return GrantState.REVOKED
        if now >= self.valid_before:
            return GrantState.EXPIRED
        if now < self.valid_after:
            return GrantState.NOT_YET_VALID
        return GrantState.ACTIVE

    def to_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state(now).value,
            "agent": self.agent,
            "task": self.task,
            "reason": self.reason,
            "targets": list(self.targets),
            "valid_after": self.valid_after.isoformat(),
            "valid_before": self.valid_before.isoformat(),
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "serial": self.serial,
            "key_id": self.key_id,
            "key_fingerprint": self.key_fingerprint,
            "permit_pty": self.permit_pty,
            "permit_port_forwarding": self.permit_port_forwarding,
            "source_addresses": list(self.source_addresses),
            "force_command": self.force_command,
            "revoked_at": self.revocation.at.isoformat() if self.revocation else None,
            "revoked_by": self.revocation.by if self.revocation else None,
            "revoke_reason": self.revocation.reason if self.revocation else None,
        }


@dataclass(frozen=True)
class AuditEvent:
    """One link of the tamper-evident audit chain."""

    seq: int
    at: datetime
    actor: str
    action: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


class SessionKind(enum.StrEnum):
    SHELL = "shell"
    EXEC = "exec"
    SFTP = "sftp"
    SUBSYSTEM = "subsystem"
    FORWARD = "forward"


class EndReason(enum.StrEnum):
    EXIT = "exit"
    CLIENT_CLOSED = "client-closed"
    EXPIRED = "expired"
    REVOKED = "revoked"
    KILLED = "killed"
    TARGET_ERROR = "target-error"
    DENIED = "denied"
    BASTION_SHUTDOWN = "bastion-shutdown"
    BASTION_CRASH = "bastion-crash"
    RECORDING_FAILED = "recording-failed"
    # Another node found this session's node silent for longer than `server.node_timeout`.
    NODE_LOST = "node-lost"
    # bastion.toml was reloaded and its new policy for the target refuses the session.
    POLICY_CHANGED = "policy-changed"


@dataclass(frozen=True)
class PresentedCertificate:
    """What the agent's certificate says, captured after the SSH layer verified it."""

    serial: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: datetime
    valid_before: datetime
    key_fingerprint: str
    critical_options: dict[str, str]
    extensions: tuple[str, ...]


@dataclass(frozen=True)
class Session:
    """One channel through the gateway: a shell, a command, sftp, or a forward."""

    id: str
    grant_id: str
    agent: str
    task: str
    target: str
    kind: SessionKind
    client: str
    command: str | None
    started_at: datetime
    node: str
    ended_at: datetime | None = None
    end_reason: EndReason | None = None
    exit_status: int | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    detail: str = ""

    @property
    def active(self) -> bool:
        return self.ended_at is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "grant": self.grant_id,
            "agent": self.agent,
            "task": self.task,
            "target": self.target,
            "kind": self.kind.value,
            "client": self.client,
            "command": self.command,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "end_reason": self.end_reason.value if self.end_reason else None,
            "exit_status": self.exit_status,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "node": self.node,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class SessionKill:
    """A kill asked for: the session named, and what its gateway will close with it.

    A kill ends the whole SSH connection that carried the session (an OpenSSH
    ControlMaster would otherwise open a new session on it at once): `connection` is every
    session of that connection still open when the kill was asked (the named one included).
    `revoked` says whether this kill also revoked `grant`; `grant_sessions` are the grant's
    other open sessions, which a revocation closes too.
    """

    session: Session
    connection: tuple[Session, ...]
    grant: Grant
    revoked: bool = False
    grant_sessions: tuple[Session, ...] = ()


class ApprovalState(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Approval:
    """A human decision a session is waiting for, bound to one exact command."""

    id: str
    kind: str  # "exec" or "shell" (later: "statement")
    session_id: str
    grant_id: str
    agent: str
    task: str
    target: str
    text: str
    reasons: tuple[str, ...]
    requested_at: datetime
    expires_at: datetime
    state: ApprovalState = ApprovalState.PENDING
    decided_at: datetime | None = None
    decided_by: str | None = None
    decision_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state.value,
            "session": self.session_id,
            "grant": self.grant_id,
            "agent": self.agent,
            "task": self.task,
            "target": self.target,
            "text": self.text,
            "reasons": list(self.reasons),
            "requested_at": self.requested_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "decided_by": self.decided_by,
            "decision_reason": self.decision_reason,
        }


class RecordingState(enum.StrEnum):
    RECORDING = "recording"
    CLOSED = "closed"  # ended normally; its SHA-256 is in the audit chain
    CRASHED = "crashed"  # cut short by a crash; what was written was hashed at recovery
    FAILED = "failed"  # a write failed; the session was ended (or, best-effort, went on)
    PRUNED = "pruned"  # deleted by retention


@dataclass(frozen=True)
class Recording:
    """The index entry of one session's recording file."""

    session_id: str
    path: str  # relative to the recordings directory
    node: str
    agent: str
    grant_id: str
    task: str
    target: str
    kind: SessionKind
    started_at: datetime
    state: RecordingState = RecordingState.RECORDING
    ended_at: datetime | None = None
    size: int | None = None
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session_id,
            "path": self.path,
            "node": self.node,
            "agent": self.agent,
            "grant": self.grant_id,
            "task": self.task,
            "target": self.target,
            "kind": self.kind.value,
            "state": self.state.value,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "size": self.size,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class Agent:
    """An enrolled agent key: it may only ask for access (`request@`), never use it."""

    name: str
    public_key: str  # the OpenSSH public key line, comment dropped
    key_fingerprint: str
    may_request: tuple[str, ...]  # target names, or ("*",) for any target
    max_ttl: timedelta | None
    created_at: datetime
    created_by: str

    def may_request_target(self, target: str) -> bool:
        return "*" in self.may_request or target in self.may_request

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "public_key": self.public_key,
            "key_fingerprint": self.key_fingerprint,
            "may_request": list(self.may_request),
            "max_ttl_seconds": int(self.max_ttl.total_seconds()) if self.max_ttl else None,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
        }


class RequestState(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"  # nobody decided in time
    WITHDRAWN = "withdrawn"  # the agent hung up while waiting


@dataclass(frozen=True)
class AccessRequest:
    """An agent's request for a grant, waiting on its SSH connection for a decision."""

    id: str
    agent: str
    key_fingerprint: str
    targets: tuple[str, ...]
    task: str
    reason: str
    ttl: timedelta
    client: str
    node: str
    requested_at: datetime
    expires_at: datetime
    state: RequestState = RequestState.PENDING
    decided_at: datetime | None = None
    decided_by: str | None = None
    decision_reason: str | None = None
    grant_id: str | None = None
    certificate: str | None = None  # the OpenSSH certificate line, delivered to the agent

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "agent": self.agent,
            "key_fingerprint": self.key_fingerprint,
            "targets": list(self.targets),
            "task": self.task,
            "reason": self.reason,
            "ttl_seconds": int(self.ttl.total_seconds()),
            "client": self.client,
            "node": self.node,
            "requested_at": self.requested_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "decided_by": self.decided_by,
            "decision_reason": self.decision_reason,
            "grant": self.grant_id,
        }


@dataclass(frozen=True)
class Node:
    """One `bastion serve` sharing the store: where it listens and when it last said so."""

    name: str
    address: str
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None = None  # a clean stop
    lost_at: datetime | None = None  # declared lost by another node (its sessions ended)

    def state(self, now: datetime, timeout: timedelta) -> str:
        if self.stopped_at is not None:
            return "stopped"
        if self.lost_at is not None:
            return "lost"
        return "alive" if now - self.heartbeat_at <= timeout else "silent"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "started_at": self.started_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat(),
            "stopped_at": self.stopped_at.isoformat() if self.stopped_at else None,
            "lost_at": self.lost_at.isoformat() if self.lost_at else None,
        }


class WebRole(enum.StrEnum):
    """What a web console account may do (the matrix is `webpolicy.allowed`)."""

    AUDITOR = "auditor"
    APPROVER = "approver"
    ADMIN = "admin"


@dataclass(frozen=True)
class WebUser:
    """A person's web console account. The password is kept only as a bcrypt hash."""

    name: str
    role: WebRole
    password_hash: str | None = field(repr=False)  # None: signs in by login link only
    created_at: datetime
    created_by: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role.value,
            "password": self.password_hash is not None,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
        }


class WebTokenKind(enum.StrEnum):
    SESSION = "session"  # a signed-in browser (the cookie)
    LINK = "link"  # a one-time login link, not used yet


@dataclass(frozen=True)
class WebToken:
    """A web session or a one-time login link, known to the store only by its SHA-256."""

    token_hash: str
    kind: WebTokenKind
    user: str
    created_at: datetime
    expires_at: datetime
    client: str = ""
