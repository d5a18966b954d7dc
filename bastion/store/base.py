"""The store interface, shared by every backend (SQLite now, PostgreSQL for several nodes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

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

# How opening a store treats its schema version. "check": refuse one that is behind
# (SQLite upgrades it instead, see sqlite.py); "upgrade": apply what is missing (init,
# migrate); "any": open as it is (`migrate --dry-run`). A newer schema is always refused.
SchemaPolicy = Literal["check", "upgrade", "any"]


@dataclass(frozen=True)
class MigrationReport:
    """What `Store.migrate` found and did (or, for a dry run, would do)."""

    location: str  # the store, as it may be shown (a URL without its password)
    from_version: int
    to_version: int
    pending: tuple[int, ...]  # the versions that were (or would be) applied


class StoreTx(Protocol):
    """Writes (and the reads they depend on) inside one serialized transaction."""

    def next_serial(self) -> int: ...

    def grant_id_taken(self, grant_id: str) -> bool: ...

    def get_target(self, name: str) -> Target | None: ...

    def get_grant(self, grant_id: str) -> Grant | None: ...

    def insert_target(self, target: Target, secret: TargetSecret) -> None: ...

    def delete_target(self, name: str) -> None: ...

    def insert_grant(self, grant: Grant) -> None: ...

    def insert_revocation(self, grant_id: str, revocation: Revocation) -> None: ...

    def append_audit(
        self, at: datetime, actor: str, action: str, details: dict[str, Any]
    ) -> AuditEvent: ...

    def get_session(self, session_id: str) -> Session | None: ...

    def insert_session(self, session: Session) -> None: ...

    def end_session(self, session: Session) -> None:
        """Store the end fields (ended_at, end_reason, exit status, byte counts, detail)."""
        ...

    def end_active_sessions(self, node: str, at: datetime, reason: EndReason) -> list[str]: ...

    def get_approval(self, approval_id: str) -> Approval | None: ...

    def insert_recording(self, recording: Recording) -> None: ...

    def update_recording(
        self,
        session_id: str,
        state: RecordingState,
        *,
        ended_at: datetime | None = None,
        size: int | None = None,
        sha256: str | None = None,
    ) -> None: ...

    def insert_approval(self, approval: Approval) -> None: ...

    def decide_approval(
        self, approval_id: str, state: ApprovalState, at: datetime, by: str, reason: str
    ) -> None: ...

    def insert_agent(self, agent: Agent) -> None: ...

    def get_agent(self, name: str) -> Agent | None: ...

    def get_agent_by_fingerprint(self, fingerprint: str) -> Agent | None: ...

    def delete_agent(self, name: str) -> None: ...

    def get_request(self, request_id: str) -> AccessRequest | None: ...

    def insert_request(self, request: AccessRequest) -> None: ...

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
        """Decide a pending request (a request already decided is left as it is)."""
        ...

    def register_node(self, name: str, address: str, at: datetime) -> None: ...

    def heartbeat_node(self, name: str, at: datetime) -> Node | None: ...

    def stop_node(self, name: str, at: datetime) -> None: ...

    def silent_nodes(self, silent_since: datetime) -> list[Node]: ...

    def mark_node_lost(self, name: str, at: datetime) -> None: ...

    def get_web_user(self, name: str) -> WebUser | None: ...

    def insert_web_user(self, user: WebUser) -> None: ...

    def delete_web_user(self, name: str) -> None:
        """Remove the account and, with it, its sessions and login links."""
        ...

    def insert_web_token(self, token: WebToken) -> None: ...

    def delete_web_token(self, token_hash: str) -> bool:
        """Remove one token; False if it was not there (a login link used twice)."""
        ...

    def delete_expired_web_tokens(self, now: datetime) -> int: ...


class Store(Protocol):
    def transaction(self) -> AbstractContextManager[StoreTx]: ...

    def get_target(self, name: str) -> Target | None: ...

    def list_targets(self) -> list[Target]: ...

    def get_target_secret(self, name: str) -> TargetSecret | None: ...

    def get_grant(self, grant_id: str) -> Grant | None: ...

    def list_grants(
        self, *, active_at: datetime | None = None, task: str | None = None
    ) -> list[Grant]: ...

    def audit_events(self, since: datetime | None = None) -> Iterator[AuditEvent]: ...

    def audit_events_after(self, seq: int, actions: tuple[str, ...]) -> list[AuditEvent]:
        """Events newer than `seq` with one of these actions (how nodes learn of changes)."""
        ...

    def last_audit_seq(self) -> int: ...

    def get_session(self, session_id: str) -> Session | None: ...

    def list_sessions(self, *, active_only: bool = False, limit: int = 1000) -> list[Session]: ...

    def get_approval(self, approval_id: str) -> Approval | None: ...

    def list_approvals(self, *, pending_only: bool = True) -> list[Approval]: ...

    def get_agent(self, name: str) -> Agent | None: ...

    def get_agent_by_fingerprint(self, fingerprint: str) -> Agent | None: ...

    def list_agents(self) -> list[Agent]: ...

    def get_request(self, request_id: str) -> AccessRequest | None: ...

    def list_requests(
        self, *, pending_only: bool = True, task: str | None = None
    ) -> list[AccessRequest]: ...

    def get_recording(self, session_id: str) -> Recording | None: ...

    def get_web_user(self, name: str) -> WebUser | None: ...

    def list_web_users(self) -> list[WebUser]: ...

    def get_web_token(self, token_hash: str) -> WebToken | None: ...

    def list_recordings(
        self,
        *,
        agent: str | None = None,
        target: str | None = None,
        task: str | None = None,
        since: datetime | None = None,
        states: tuple[RecordingState, ...] | None = None,
        ended_before: datetime | None = None,
    ) -> list[Recording]: ...

    def list_nodes(self) -> list[Node]: ...

    @property
    def location(self) -> str:
        """The store as it may be shown: a file path, or a URL without its password."""
        ...

    def schema_version(self) -> int: ...

    def migrate(self, *, dry_run: bool = False) -> MigrationReport:
        """Apply the pending schema migrations (none with `dry_run`) in one transaction."""
        ...

    def listen_for_changes(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Call `wake` (from any thread) soon after each audit append by any process.

        Returns a function that stops listening, or None when the backend can't push
        (SQLite): the caller then polls.
        """
        ...

    def close(self) -> None: ...
