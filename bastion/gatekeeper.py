"""The gateway's side of the service API: logins, sessions, approvals, and the change feed.

`transport/` calls this for every decision and every record; it owns no sockets.
Each decision is made by the pure functions in `access.py` and `cmdpolicy.py`, and
each outcome is written to the store together with its audit event.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import replace
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import ed25519

from bastion import access
from bastion.access import Denial, LoginPermit
from bastion.accessrequests import AccessRequests
from bastion.config import Config
from bastion.models import (
    AccessRequest,
    Agent,
    Approval,
    ApprovalState,
    AuditEvent,
    EndReason,
    PresentedCertificate,
    Recording,
    RecordingState,
    Session,
    SessionKind,
    Target,
    TargetSecret,
)
from bastion.recording import seal
from bastion.recording.writer import Recorder, RecordingFailed
from bastion.requestpolicy import REQUEST_LOGIN
from bastion.service import Bastion
from bastion.store import Store

log = logging.getLogger("bastion.gatekeeper")

# Audit actions that running gateways react to.
WATCHED_ACTIONS = (
    "grant.revoked",
    "session.kill_requested",
    "approval.decided",
    "request.decided",
)


class Gatekeeper:
    def __init__(
        self,
        bastion: Bastion,
        node: str,
        signing_key: ed25519.Ed25519PrivateKey | None = None,
        recording_executor: Executor | None = None,
    ) -> None:
        self.bastion = bastion
        self.node = node
        self.signing_key = signing_key
        self.recording_executor = recording_executor
        self.recordings_dir = bastion.home.recordings_dir
        self.requests = AccessRequests(bastion)

    @property
    def store(self) -> Store:
        return self.bastion.store

    def now(self) -> datetime:
        return self.bastion.clock.now()

    # -- logins ---------------------------------------------------------------

    def authenticate(
        self, cert: PresentedCertificate, username: str, client: str
    ) -> LoginPermit | Denial:
        now = self.now()
        grant_id = access.grant_id_from_key_id(cert.key_id)
        grant = self.store.get_grant(grant_id) if grant_id else None
        target = self.store.get_target(username)
        decision = access.decide_login(cert, username, grant, target, now)
        details = {
            "login": username,
            "client": client,
            "node": self.node,
            "serial": cert.serial,
            "key_id": cert.key_id,
            "key_fingerprint": cert.key_fingerprint,
        }
        with self.store.transaction() as tx:
            if isinstance(decision, Denial):
                tx.append_audit(
                    now, "gateway", "login.refused", {**details, "reason": decision.reason}
                )
            else:
                tx.append_audit(
                    now,
                    decision.grant.agent,
                    "login.accepted",
                    {**details, "grant": decision.grant.id, "task": decision.grant.task},
                )
                _log_login(username, client, agent=decision.grant.agent, grant=decision.grant.id)
        return decision

    def enrolled_agent(self, key_fingerprint: str) -> Agent | None:
        return self.requests.agent_for_key(key_fingerprint)

    def request_login(self, agent: Agent, client: str) -> None:
        with self.store.transaction() as tx:
            tx.append_audit(
                self.now(),
                agent.name,
                "login.accepted",
                {
                    "login": REQUEST_LOGIN,
                    "client": client,
                    "agent": agent.name,
                    "key_fingerprint": agent.key_fingerprint,
                },
            )

    def refuse(self, username: str, client: str, reason: str) -> None:
        """Audit a refusal that never reached certificate checks (plain key, password...)."""
        with self.store.transaction() as tx:
            tx.append_audit(
                self.now(),
                "gateway",
                "login.refused",
                {"login": username, "client": client, "reason": reason},
            )
        _log_login(username, client, reason=reason)

    def target_error(
        self, target: str, grant_id: str, message: str, host_key_mismatch: bool
    ) -> None:
        with self.store.transaction() as tx:
            tx.append_audit(
                self.now(),
                "gateway",
                "target.host_key_mismatch" if host_key_mismatch else "target.unreachable",
                {"target": target, "grant": grant_id, "reason": message},
            )

    def forward_refused(self, grant_id: str, host: str, port: int, reason: str) -> None:
        with self.store.transaction() as tx:
            tx.append_audit(
                self.now(),
                "gateway",
                "forward.refused",
                {"grant": grant_id, "destination": f"{host}:{port}", "reason": reason},
            )
        fields = {
            "event": "forward.refused",
            "grant": grant_id,
            "destination": f"{host}:{port}",
            "reason": reason,
        }
        log.info("forward refused: %s to %s:%d: %s", grant_id, host, port, reason, extra=fields)

    def connection_killed(
        self, session_id: str, by: str, reason: str, client: str, sessions: list[str]
    ) -> None:
        """A kill carried out: the connection that held `session_id` is closing, with
        `sessions` (each also ends `killed` in its own `session.ended`)."""
        with self.store.transaction() as tx:
            tx.append_audit(
                self.now(),
                "gateway",
                "connection.killed",
                {
                    "session": session_id,
                    "by": by,
                    "reason": reason,
                    "node": self.node,
                    "client": client,
                    "sessions": sessions,
                },
            )

    def target(self, name: str) -> Target | None:
        return self.store.get_target(name)

    def targets(self) -> dict[str, Target]:
        return {t.name: t for t in self.store.list_targets()}

    def target_secret(self, name: str) -> TargetSecret | None:
        return self.store.get_target_secret(name)

    # -- sessions -------------------------------------------------------------

    def open_session(
        self, permit: LoginPermit, target: str, kind: SessionKind, client: str, command: str | None
    ) -> Session:
        session = Session(
            id="s-" + secrets.token_hex(6),
            grant_id=permit.grant.id,
            agent=permit.grant.agent,
            task=permit.grant.task,
            target=target,
            kind=kind,
            client=client,
            command=command,
            started_at=self.now(),
            node=self.node,
        )
        with self.store.transaction() as tx:
            tx.insert_session(session)
            tx.append_audit(
                session.started_at,
                session.agent,
                "session.started",
                {
                    "session": session.id,
                    "grant": session.grant_id,
                    "task": session.task,
                    "target": target,
                    "kind": kind.value,
                    "client": client,
                    "command": command,
                },
            )
        log.info(
            "session %s started: %s on %s (%s)",
            session.id,
            session.agent,
            target,
            kind.value,
            extra=_session_fields(session, "session.started"),
        )
        return session

    def close_session(
        self,
        session: Session,
        reason: EndReason,
        *,
        exit_status: int | None = None,
        bytes_up: int = 0,
        bytes_down: int = 0,
        detail: str = "",
    ) -> Session:
        ended = replace(
            session,
            ended_at=self.now(),
            end_reason=reason,
            exit_status=exit_status,
            bytes_up=bytes_up,
            bytes_down=bytes_down,
            detail=detail,
        )
        assert ended.ended_at is not None
        with self.store.transaction() as tx:
            tx.end_session(ended)
            tx.append_audit(
                ended.ended_at,
                "gateway",
                "session.ended",
                {
                    "session": session.id,
                    "grant": session.grant_id,
                    "agent": session.agent,
                    "reason": reason.value,
                    "exit_status": exit_status,
                    "bytes_up": bytes_up,
                    "bytes_down": bytes_down,
                    "detail": detail,
                },
            )
        log.info(
            "session %s ended: %s",
            session.id,
            reason.value,
            extra={**_session_fields(ended, "session.ended"), "exit_status": exit_status},
        )
        return ended

    def recover(self) -> list[str]:
        """At start: sessions this node left open were cut short by a crash."""
        now = self.now()
        with self.store.transaction() as tx:
            ids = tx.end_active_sessions(self.node, now, EndReason.BASTION_CRASH)
            if ids:
                tx.append_audit(
                    now, "gateway", "sessions.recovered", {"node": self.node, "sessions": ids}
                )
        for recording in self.store.list_recordings(states=(RecordingState.RECORDING,)):
            if recording.node == self.node:
                self._seal(recording.session_id, RecordingState.CRASHED, "recording.recovered")
        self.requests.abandon_node(self.node)
        return ids

    # -- recordings -------------------------------------------------------------

    def start_recording(self, session: Session, header: dict[str, object]) -> Recorder:
        """Create the session's recording and index it; raises RecordingFailed."""
        relative = f"{session.started_at:%Y-%m-%d}/{session.id}.rec"
        recorder = Recorder(
            self.recordings_dir / relative, self.bastion.clock, header, self.recording_executor
        )
        with self.store.transaction() as tx:
            tx.insert_recording(
                Recording(
                    session_id=session.id,
                    path=relative,
                    node=self.node,
                    agent=session.agent,
                    grant_id=session.grant_id,
                    task=session.task,
                    target=session.target,
                    kind=session.kind,
                    started_at=session.started_at,
                )
            )
        return recorder

    def finish_recording(
        self, session: Session, recorder: Recorder, end: Mapping[str, object]
    ) -> None:
        """Close the file and seal its hash into the audit chain."""
        if recorder.failed is None:
            try:
                written = recorder.close(end)
            except RecordingFailed:
                pass
            else:
                self._seal(session.id, RecordingState.CLOSED, "recording.closed", written)
                return
        self.seal_failed(session, recorder)

    def seal_recording(
        self, session: Session, recorder: Recorder, written: tuple[str, int] | None
    ) -> None:
        """Seal a recording closed in the background (`written` None: its close failed)."""
        if written is None:
            self.seal_failed(session, recorder)
        else:
            self._seal(session.id, RecordingState.CLOSED, "recording.closed", written)

    def seal_failed(self, session: Session, recorder: Recorder) -> None:
        """A recording whose writing failed: audit the loss, seal what reached the file."""
        recorder.abandon()
        if not recorder.loss_reported:
            recorder.loss_reported = True
            self.recording_lost(session, recorder.failed or "closing failed", False)
        self._seal(session.id, RecordingState.FAILED, "recording.closed", recorder.written())

    def recording_off(self, session: Session) -> None:
        with self.store.transaction() as tx:
            tx.append_audit(
                self.now(),
                "gateway",
                "recording.off",
                {"session": session.id, "target": session.target, "reason": "target policy"},
            )

    def recording_lost(self, session: Session, reason: str, ended_session: bool) -> None:
        with self.store.transaction() as tx:
            tx.append_audit(
                self.now(),
                "gateway",
                "recording.failed",
                {"session": session.id, "reason": reason, "session_ended": ended_session},
            )

    def _seal(
        self,
        session_id: str,
        state: RecordingState,
        action: str,
        written: tuple[str, int] | None = None,
    ) -> None:
        """Put the recording's SHA-256, signed, into the audit chain."""
        recording = self.store.get_recording(session_id)
        if recording is None:
            return
        path = self.recordings_dir / recording.path
        now = self.now()
        details: dict[str, object] = {"session": session_id, "path": recording.path}
        digest: str | None = None
        size: int | None = None
        try:
            digest, size = written if written is not None else seal.file_sha256(path)
        except OSError as exc:
            details["error"] = exc.strerror or str(exc)
        else:
            details.update(sha256=digest, size=size)
            if self.signing_key is not None:
                details["signature"] = seal.sign(self.signing_key, session_id, digest, size)
        with self.store.transaction() as tx:
            tx.update_recording(session_id, state, ended_at=now, size=size, sha256=digest)
            tx.append_audit(now, "gateway", action, {**details, "state": state.value})

    # -- approvals ------------------------------------------------------------

    def request_approval(
        self,
        session: Session,
        kind: str,
        text: str,
        reasons: tuple[str, ...],
        timeout: timedelta,
    ) -> Approval:
        now = self.now()
        approval = Approval(
            id="a-" + secrets.token_hex(4),
            kind=kind,
            session_id=session.id,
            grant_id=session.grant_id,
            agent=session.agent,
            task=session.task,
            target=session.target,
            text=text,
            reasons=reasons,
            requested_at=now,
            expires_at=now + timeout,
        )
        with self.store.transaction() as tx:
            tx.insert_approval(approval)
            tx.append_audit(now, session.agent, "approval.requested", approval.to_dict())
        log.info(
            "approval %s requested by %s on %s",
            approval.id,
            approval.agent,
            approval.target,
            extra={
                **_session_fields(session, "approval.requested"),
                "approval": approval.id,
                "reasons": list(reasons),
            },
        )
        return approval

    def approval(self, approval_id: str) -> Approval | None:
        return self.store.get_approval(approval_id)

    def expire_approval(self, approval: Approval, why: str) -> Approval:
        """The wait ended without a decision: record it, unless a human decided meanwhile."""
        now = self.now()
        with self.store.transaction() as tx:
            current = tx.get_approval(approval.id)
            if current is None or current.state is not ApprovalState.PENDING:
                return current or approval
            tx.decide_approval(approval.id, ApprovalState.EXPIRED, now, "gateway", why)
            tx.append_audit(
                now,
                "gateway",
                "approval.decided",
                {
                    "approval": approval.id,
                    "state": "expired",
                    "session": approval.session_id,
                    "reason": why,
                },
            )
        log.info(
            "approval %s expired: %s",
            approval.id,
            why,
            extra={
                "event": "approval.expired",
                "approval": approval.id,
                "session": approval.session_id,
            },
        )
        found = self.store.get_approval(approval.id)
        assert found is not None
        return found

    # -- access requests ------------------------------------------------------

    def open_request(self, agent: Agent, command: str | None, client: str) -> AccessRequest:
        return self.requests.open(agent, command, client, self.node)

    def access_request(self, request_id: str) -> AccessRequest | None:
        return self.store.get_request(request_id)

    def expire_request(self, request_id: str) -> AccessRequest:
        return self.requests.expire(request_id)

    def withdraw_request(self, request_id: str) -> AccessRequest:
        return self.requests.withdraw(request_id)

    def may_request(self, agent_name: str) -> bool:
        """Whether this agent has an enrolled key (expiry messages then say how to ask)."""
        return self.store.get_agent(agent_name) is not None

    # -- change feed ----------------------------------------------------------

    def last_change(self) -> int:
        return self.store.last_audit_seq()

    def changes_after(self, seq: int) -> list[AuditEvent]:
        return self.store.audit_events_after(seq, WATCHED_ACTIONS)

    def listen_for_changes(self, wake: Callable[[], None]) -> Callable[[], None] | None:
        """Have `wake` called on each change (PostgreSQL); None: poll instead (SQLite)."""
        return self.store.listen_for_changes(wake)

    # -- nodes ------------------------------------------------------------------

    def register_node(self, address: str) -> None:
        now = self.now()
        with self.store.transaction() as tx:
            tx.register_node(self.node, address, now)
            tx.append_audit(now, "gateway", "node.started", {"node": self.node, "address": address})

    def heartbeat(self) -> bool:
        """Say this node is alive; False if another node has meanwhile declared it lost."""
        with self.store.transaction() as tx:
            node = tx.heartbeat_node(self.node, self.now())
        return node is not None and node.lost_at is None

    def stop_node(self) -> None:
        now = self.now()
        with self.store.transaction() as tx:
            tx.stop_node(self.node, now)
            tx.append_audit(now, "gateway", "node.stopped", {"node": self.node})

    # -- configuration reloads ---------------------------------------------------

    def use_config(self, config: Config) -> None:
        """The service's side of a reload: access requests read their policy from here."""
        self.bastion.home = replace(self.bastion.home, config=config)

    def config_reloaded(self, details: Mapping[str, object]) -> None:
        with self.store.transaction() as tx:
            tx.append_audit(
                self.now(), "gateway", "config.reloaded", {"node": self.node, **details}
            )

    def config_reload_failed(self, error: str) -> None:
        with self.store.transaction() as tx:
            tx.append_audit(
                self.now(), "gateway", "config.reload_failed", {"node": self.node, "error": error}
            )

    def reap_lost_nodes(self, timeout: timedelta) -> dict[str, list[str]]:
        """End the live sessions of nodes silent for longer than `timeout` (`node-lost`).

        Every surviving node runs this; the silent nodes are chosen again inside the
        (serialized) write transaction, so a node is declared lost, and audited, once.
        Returns node -> the session ids ended.
        """
        now = self.now()
        silent_since = now - timeout
        if not any(
            n.stopped_at is None and n.lost_at is None and n.heartbeat_at < silent_since
            for n in self.store.list_nodes()
        ):
            return {}
        ended: dict[str, list[str]] = {}
        with self.store.transaction() as tx:
            for node in tx.silent_nodes(silent_since):
                if node.name == self.node:
                    continue
                ids = tx.end_active_sessions(node.name, now, EndReason.NODE_LOST)
                tx.mark_node_lost(node.name, now)
                tx.append_audit(
                    now,
                    "gateway",
                    "node.lost",
                    {
                        "node": node.name,
                        "declared_by": self.node,
                        "last_heartbeat": node.heartbeat_at.isoformat(),
                        "sessions": ids,
                    },
                )
                ended[node.name] = ids
        return ended


def _log_login(
    login: str, client: str, *, agent: str = "", grant: str = "", reason: str = ""
) -> None:
    fields: dict[str, object] = {"login": login, "client": client}
    if reason:
        fields.update(event="login.refused", reason=reason)
        log.info("login refused: %s from %s: %s", login, client, reason, extra=fields)
    else:
        fields.update(event="login.accepted", agent=agent, grant=grant)
        log.info(
            "login accepted: %s as %s (grant %s) from %s", agent, login, grant, client, extra=fields
        )


def _session_fields(session: Session, event: str) -> dict[str, object]:
    return {
        "event": event,
        "session": session.id,
        "agent": session.agent,
        "grant": session.grant_id,
        "target": session.target,
        "kind": session.kind.value,
        "client": session.client,
        "end_reason": session.end_reason.value if session.end_reason else None,
    }
