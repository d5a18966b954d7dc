"""One agent's SSH connection to the gateway, from authentication to the forced close.

Authentication: asyncssh verifies the certificate's signature and what sshd would
check (principal, validity, source-address, critical options); the wrapped
`validate_public_key` then captures the certificate and asks the gatekeeper what
asyncssh can't know: is this the certificate of a live grant? Plain keys, passwords
and keyboard-interactive are never offered. A refused connection is audited once,
with every reason seen, when it closes.

The monitor: once authenticated, a timer is armed on the absolute deadline (the
earlier of the certificate's and the grant's end). When it fires, or when the
gateway learns of a revocation or kill, `close_all` tells every session channel why
on stderr, exits it with 255, closes the target side and the forwards, waits briefly
for the channels to close, then disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncssh

from bastion import access, sshalgs
from bastion.access import Denial, LoginPermit
from bastion.approvalnotice import LINE_TEXT_LIMIT, printable, ssh_reminder
from bastion.cmdpolicy import NeedsApproval, classify_command
from bastion.models import Agent, ApprovalState, EndReason, SessionKind, Target, TargetKind
from bastion.recording.writer import RecordingFailed
from bastion.requestpolicy import REQUEST_LOGIN, request_line
from bastion.transport import certs, upstream
from bastion.transport.pgrelay import CancelOnly, PgRelay
from bastion.transport.recording import recording_header
from bastion.transport.relay import ForwardRelay, SessionRelay
from bastion.transport.requestchan import RequestSession

if TYPE_CHECKING:
    from bastion.transport.gateway import Gateway

log = logging.getLogger("bastion.gateway")


class GatewayConnection(asyncssh.SSHServer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.gate = gateway.gate
        self.conn: Any = None
        self.client = "unknown"
        self.username = ""
        self.permit: LoginPermit | None = None
        # Set when an enrolled agent logged in as `request@` with its plain key.
        self.enrolled: Agent | None = None
        # The end of the expiry and revocation notices: how to ask for access again.
        self.ask_again = "ask a human for a new grant to continue"
        self.refusals: list[str] = []
        self.sessions: set[SessionRelay] = set()
        # Sessions accepted whose channel is not open yet (asyncssh opens it in a task).
        self._sessions_opening = 0
        self.forwards: set[ForwardRelay | PgRelay] = set()
        # Forwards decided on whose channel is not open yet (the target is being reached):
        # counted with `forwards` against the limits, so a burst of opens can't slip past.
        self._forwards_opening = 0
        self._cancel_channel = 0  # a PostgreSQL channel past the limit, for a cancel only
        # Forwards that have ended (their target connection closed) while their channel is
        # still closing: no longer counted, so a client that closes one and opens another
        # at once is not refused.
        self._forwards_ended: set[ForwardRelay | PgRelay] = set()
        self.closing = False
        self.closing_reason = EndReason.CLIENT_CLOSED  # what close_all was given, once called
        self._upstream: asyncio.Task[asyncssh.SSHClientConnection] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closer: asyncio.Task[None] | None = None
        # The source netblock this connection counts under in the gateway's `startups`
        # while it authenticates; None once it is authenticated or gone (or was refused).
        self._startup_block: str | None = None

    # -- authentication ---------------------------------------------------------

    def connection_made(self, conn: Any) -> None:
        self.conn = conn
        self._socket = conn.get_extra_info("socket")  # for the deadline guard
        peer = conn.get_extra_info("peername")
        if peer:
            self.client = f"{peer[0]}:{peer[1]}"
        # Read per connection: a reload's limits apply to the next one.
        limits = self.gateway.config.server.startup_limits
        block = self.gateway.startups.admit(limits, peer[0] if peer else "unknown", self.client)
        if block is None:
            # Before asyncssh sends its banner: the client reads nothing, the socket closes.
            conn.abort()
            return
        self._startup_block = block
        original = conn.validate_public_key

        async def validate_public_key(
            username: str, key_data: bytes, msg: bytes, signature: bytes
        ) -> bool:
            return await self._validate(original, username, key_data, msg, signature)

        # auth.py calls conn.validate_public_key(); an instance attribute shadows it.
        conn.validate_public_key = validate_public_key
        check_permission = conn.check_certificate_permission

        def check_certificate_permission(permission: str) -> bool:
            # asyncssh would refuse a forward without permit-port-forwarding before asking
            # us, unaudited; `access.decide_forward` refuses it from the grant (whose flag
            # is the certificate's) and audits the refusal.
            return permission == "port-forwarding" or check_permission(permission)

        conn.check_certificate_permission = check_certificate_permission
        self.gateway.connections.add(self)

    async def _validate(
        self, original: Any, username: str, key_data: bytes, msg: bytes, signature: bytes
    ) -> bool:
        cert = certs.parse_key_blob(key_data)
        weak = sshalgs.refused_signature(signature) or certs.weak_key(key_data, cert)
        if weak is not None:
            self._refusal(weak)
            return False
        if username == REQUEST_LOGIN:
            return await self._validate_enrolled(original, cert, username, key_data, msg, signature)
        if cert is None:
            self._refusal("a plain key is not accepted: a grant certificate is required")
            return False
        if not cert.valid_principals:
            self._refusal("certificate has no principals")
            return False
        if not certs.signed_by(cert, self.gateway.ca_public_line):
            self._refusal("certificate is not signed by this bastion's CA")
            return False
        facts = certs.presented(cert)
        if not await original(username, key_data, msg, signature):
            # asyncssh's own checks refused it; say which, for the audit trail.
            reason = self._why_asyncssh_refused(facts, username)
            self._refusal(reason)
            return False
        if not msg:
            return True  # a query: the signature comes in the next round
        # On a thread: a store that stops answering holds this login, not the event loop.
        decision = await asyncio.to_thread(self.gate.authenticate, facts, username, self.client)
        if isinstance(decision, Denial):
            self.refusals.append(decision.reason)  # already audited by the gatekeeper
            return False
        self.permit = decision
        self.refusals.clear()
        # Worked out now (on a thread), not at the forced close, where every connection of
        # a grant would read the store before its notice could go out.
        self.ask_again = await asyncio.to_thread(self._ask_again)
        return True

    async def _validate_enrolled(
        self, original: Any, cert: Any, username: str, key_data: bytes, msg: bytes, signature: bytes
    ) -> bool:
        """`request@`: an enrolled agent's plain key, which can do nothing but ask."""
        if cert is not None:
            self._refusal("request@ takes the agent's enrolled key, not a certificate")
            return False
        # asyncssh asks `validate_public_key` below whether the key is allowed, then checks
        # the signature.
        if not await original(username, key_data, msg, signature):
            return False
        if not msg:
            return True
        # The signature checked out: look the key up again rather than trust a query's state.
        fingerprint = certs.blob_fingerprint(key_data)
        self.enrolled = await asyncio.to_thread(self.gate.enrolled_agent, fingerprint)
        if self.enrolled is None:
            return False
        self.refusals.clear()
        await asyncio.to_thread(self.gate.request_login, self.enrolled, self.client)
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if username != REQUEST_LOGIN:
            return False
        # On a thread: anyone may try request@, and a store that stops answering must hold
        # that attempt only, not the event loop.
        fingerprint = key.get_fingerprint("sha256")
        if await asyncio.to_thread(self.gate.enrolled_agent, fingerprint) is None:
            self._refusal("request@: this key is not enrolled (`bastion agent enroll`)")
            return False
        return True

    def _why_asyncssh_refused(self, facts: Any, username: str) -> str:
        decision = access.decide_login(facts, username, None, None, self.gate.now())
        if isinstance(decision, Denial) and "no grant" not in decision.reason:
            return decision.reason
        unknown = sorted(set(facts.critical_options) - {"force-command", "source-address"})
        if unknown:
            return f"certificate has unsupported critical options: {', '.join(unknown)}"
        if "source-address" in facts.critical_options:
            return (
                f"client address not in source-address {facts.critical_options['source-address']}"
            )
        return "certificate refused by SSH certificate checks"

    def _refusal(self, reason: str) -> None:
        if reason not in self.refusals:
            self.refusals.append(reason)

    def begin_auth(self, username: str) -> bool:
        self.username = username
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def auth_completed(self) -> None:
        self._authenticated()
        self.gateway.metrics.login(accepted=True)
        if self.enrolled is not None:
            return  # no grant, no deadline: the request waits on its own timer
        assert self.permit is not None
        self._arm(self.permit.deadline)
        if self._socket is not None:
            loop = asyncio.get_running_loop()
            self.gateway.guard.watch(
                self,
                self._socket,
                self.permit.deadline,
                f"the connection from {self.client} (grant {self.permit.grant.id})",
                on_due=lambda: loop.call_soon_threadsafe(self._guard_due),
            )

    def _authenticated(self) -> None:
        """No longer counts against `server.max_startups` and
        `server.per_source_max_startups` (authenticated, or gone)."""
        block, self._startup_block = self._startup_block, None
        if block is not None:
            self.gateway.startups.release(block)

    def connection_lost(self, exc: Exception | None) -> None:
        self._authenticated()
        self.gateway.connections.discard(self)
        self.gateway.guard.release(self)
        if self._timer is not None:
            self._timer.cancel()
        if self.permit is None and self.enrolled is None and self.refusals:
            self.gateway.metrics.login(accepted=False, reason="; ".join(self.refusals))
            reasons = "; ".join(self.refusals)
            self.gateway.write_later(self.gate.refuse, self.username, self.client, reasons)
        for relay in list(self.sessions):
            relay.connection_lost(None)
        if self._upstream is not None:
            if self._upstream.done() and self._upstream.exception() is None:
                self._upstream.result().close()
            else:
                self._upstream.cancel()

    # -- the deadline -----------------------------------------------------------

    def _arm(self, deadline: datetime, again: bool = False) -> None:
        when = self.gateway.deadlines.loop_time_of(deadline, resample=again)
        self._timer = asyncio.get_running_loop().call_at(when, self._deadline_reached, deadline)
        self.gateway.collect_before(when)

    @property
    def deadline_timer(self) -> asyncio.TimerHandle | None:
        return self._timer

    def _deadline_reached(self, deadline: datetime) -> None:
        now = self.gate.now()
        if now < deadline:  # the wall clock moved back: wait the rest
            self._arm(deadline, again=True)
            return
        self._expire(deadline)
        # Every other connection past its deadline closes in this same turn of the loop,
        # whichever millisecond its own timer fell on: one a turn later would wait behind
        # the store writes of all the others (see `close_record`).
        for conn in list(self.gateway.connections):
            if conn is not self:
                conn.expire_if_due(now)

    def _guard_due(self) -> None:
        """Queued by the deadline guard as it cuts the socket: the first thing the loop
        does once it moves again, so the records say why the connection ended."""
        self.expire_if_due(self.gate.now())

    def expire_if_due(self, now: datetime) -> None:
        if self.permit is None or self.closing or self._timer is None:
            return
        deadline = self.permit.deadline
        if deadline <= now:
            self._timer.cancel()
            self._expire(deadline)

    def _expire(self, deadline: datetime) -> None:
        assert self.permit is not None
        grant = self.permit.grant
        stamp = deadline.strftime("%H:%M:%SZ")
        self.close_all(
            EndReason.EXPIRED,
            f"grant {grant.id} (task {grant.task}) expired at {stamp} - session closed;"
            f" {self.ask_again}",
        )

    def _ask_again(self) -> str:
        """How to get back in: the exact `request@` line when the agent is enrolled."""
        assert self.permit is not None
        grant = self.permit.grant
        try:
            enrolled = self.gate.may_request(grant.agent)
        except Exception:
            enrolled = False
        if not enrolled:
            return "ask a human for a new grant to continue"
        host, port = self.gateway.advertised
        return "to ask again: " + request_line(host, port, grant.targets, grant.task)

    def close_all(self, reason: EndReason, message: str) -> None:
        if self.closing:
            return
        self.closing = True
        self.closing_reason = reason
        self.gateway.metrics.forced_close(reason.value)
        log.info(
            "closing connection from %s: %s",
            self.client,
            message,
            extra={
                "event": "connection.forced_close",
                "client": self.client,
                "reason": reason.value,
            },
        )
        self._closer = asyncio.ensure_future(self._close_all(reason, message))

    async def _close_all(self, reason: EndReason, message: str) -> None:
        channels = [r.chan for r in self.sessions] + [f.chan for f in self.forwards]
        for relay in list(self.sessions):
            relay.fail(reason, message)
        for forward in list(self.forwards):
            forward.fail(reason, message)
        waits = [asyncio.ensure_future(c.wait_closed()) for c in channels if c is not None]
        if waits:
            # The stderr line must reach the client before the disconnect, or a PTY loses it.
            await asyncio.wait(waits, timeout=self.gateway.close_grace)
        with contextlib.suppress(Exception):
            self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, f"bastion: {message}")

    # -- sessions ---------------------------------------------------------------

    def session_requested(self) -> SessionRelay | RequestSession:
        if self.enrolled is not None:
            return RequestSession(self, self.enrolled)
        assert self.permit is not None
        denial = access.decide_session(self.permit.target, "session")
        if denial is not None:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, denial.reason
            )
        if self.closing:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "connection is closing"
            )
        limit = self.gateway.config.server.max_sessions
        if len(self.sessions) + self._sessions_opening >= limit:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"too many sessions on this connection (at most {limit})",
            )
        self._sessions_opening += 1
        return SessionRelay(self)

    def session_opened(self, relay: SessionRelay) -> None:
        """A session's channel is open: it counts among `sessions` from now on."""
        self._sessions_opening -= 1
        self.sessions.add(relay)

    def open_record(self, kind: SessionKind, command: str | None) -> Any:
        assert self.permit is not None
        return self.gate.open_session(
            self.permit, self.permit.target.name, kind, self.client, command
        )

    def close_record(
        self,
        relay: SessionRelay | ForwardRelay | PgRelay,
        reason: EndReason,
        status: int | None,
        detail: str,
    ) -> None:
        if not isinstance(relay, SessionRelay) and relay in self.forwards:
            # Its connection to the target is closed: its slot is free (`forwards_open`).
            self._forwards_ended = {f for f in self._forwards_ended if f in self.forwards}
            self._forwards_ended.add(relay)
        self.gateway.metrics.session_closed(relay)
        end = (relay.record, reason, status, relay.bytes_up, relay.bytes_down, detail)
        # On the writes thread, after this turn of the loop: a forced close (expiry,
        # revocation, shutdown) often comes to many connections at once, and each one's
        # notice and exit go out first instead of every client waiting for the records of
        # those before it; and a store that stops answering holds up no other session.
        self.gateway.write_later(self._write_end, *end)

    def _write_end(
        self,
        record: Any,
        reason: EndReason,
        status: int | None,
        bytes_up: int,
        bytes_down: int,
        detail: str,
    ) -> None:
        try:
            self.gate.close_session(
                record,
                reason,
                exit_status=status,
                bytes_up=bytes_up,
                bytes_down=bytes_down,
                detail=detail,
            )
        except Exception:
            log.exception("could not record the end of session %s", record.id)

    # -- recordings -------------------------------------------------------------

    @property
    def recording_mode(self) -> str:
        assert self.permit is not None
        return self.gateway.config.target_policy(self.permit.target.name).recording

    async def gate_session(
        self, relay: SessionRelay, kind: SessionKind, command: str | None
    ) -> bool:
        """Hold a destructive command (or a shell, where so configured) for a human."""
        assert self.permit is not None
        target = self.permit.target.name
        config = self.gateway.config
        if kind is SessionKind.EXEC and command is not None:
            verdict = classify_command(command, config.command_rules(target))
            if not isinstance(verdict, NeedsApproval):
                return True
            reasons, text = verdict.reasons, command
        elif kind is SessionKind.SHELL and config.target_policy(target).shell_requires_approval:
            reasons, text = ("shell_requires_approval",), "<interactive shell>"
        else:
            return True
        timeout = config.approvals.timeout
        approval = await asyncio.to_thread(
            self.gate.request_approval, relay.record, kind.value, text, reasons, timeout
        )
        relay.recording.marker(f"approval requested {approval.id}")
        minutes = int(timeout.total_seconds() // 60)
        wait = f"{minutes}m" if minutes else f"{int(timeout.total_seconds())}s"
        shown = printable(text, LINE_TEXT_LIMIT)  # a newline or escape can't break the line
        relay.notify(
            f"[bastion] approval required (request {approval.id}): {shown} - waiting up to {wait}"
        )
        decided = await self.gateway.wait_for_decision(
            approval,
            timeout,
            remind=lambda waited: relay.notify(ssh_reminder(approval, waited, timeout)),
        )
        relay.recording.marker(f"approval {decided.state.value} {approval.id}")
        if decided.state is ApprovalState.APPROVED:
            relay.approved = True  # a reload's re-check doesn't hold it up again
            relay.notify(f"[bastion] approved by {decided.decided_by} (request {approval.id})")
            return True
        if decided.state is ApprovalState.DENIED:
            message = (
                f"denied by {decided.decided_by}:"
                f" {printable(decided.decision_reason or '', LINE_TEXT_LIMIT)}"
                f" (request {approval.id})"
            )
        else:
            message = (
                f"approval request {approval.id} timed out after {wait}; the command did not run"
            )
        relay.fail(EndReason.DENIED, message, exit_status=126)
        return False

    async def upstream(self) -> asyncssh.SSHClientConnection:
        """The bastion's own connection to the target, opened once per agent connection."""
        if self._upstream is None:
            assert self.permit is not None
            self._upstream = asyncio.ensure_future(self._connect_upstream())
        return await asyncio.shield(self._upstream)

    async def _connect_upstream(self) -> asyncssh.SSHClientConnection:
        assert self.permit is not None
        target = self.permit.target
        secret = await asyncio.to_thread(self.gate.target_secret, target.name)
        if secret is None:
            raise upstream.UpstreamError(f"target {target.name} has no stored credential")
        try:
            return await upstream.connect(target, secret)
        except upstream.UpstreamError as exc:
            await asyncio.to_thread(
                self.gate.target_error,
                target.name,
                self.permit.grant.id,
                str(exc),
                exc.host_key_mismatch,
            )
            raise

    # -- forwards ---------------------------------------------------------------

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        if self.enrolled is not None:
            reason = "an enrolled key can only request access; it opens no forward"
            agent = f"(agent {self.enrolled.name})"
            self.gateway.write_later(self.gate.forward_refused, agent, dest_host, dest_port, reason)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, reason)
        return self._forward(dest_host, dest_port)  # asyncssh awaits it before answering

    async def _forward(self, dest_host: str, dest_port: int) -> ForwardRelay | PgRelay:
        """Decide on a forward (the targets read on a thread), then open it."""
        assert self.permit is not None
        targets = await asyncio.to_thread(self.gate.targets)
        config = self.gateway.config
        decision = access.decide_forward(
            self.permit.grant,
            self.permit.grant.permit_port_forwarding,
            dest_host,
            targets,
            lambda name: config.target_policy(name).raw_forwarding,
        )
        if isinstance(decision, Denial) or self.closing:
            reason = decision.reason if isinstance(decision, Denial) else "connection is closing"
            grant_id = self.permit.grant.id
            self.gateway.write_later(
                self.gate.forward_refused, grant_id, dest_host, dest_port, reason
            )
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, reason)
        # Counted and reserved in this one turn of the loop (no await since `config` was
        # read: a reload applies to the next open).
        grant = self.permit.grant
        limits = access.ForwardLimits(config.server.max_forwards, config.grants.max_forwards)
        over = access.decide_forward_count(
            grant, self.forwards_open, self._forwards_of_grant(grant.id), limits
        )
        cancel_only: CancelOnly | None = None
        if over is not None:
            if decision.kind is TargetKind.POSTGRES and not self._cancel_channel:
                # psql's Ctrl-C and a driver's cancel() open a connection of their own: at
                # the limit one more channel may carry a CancelRequest (no login on the
                # target), so a query can still be stopped. A StartupMessage on it is
                # refused (53300) with the limit's reason.
                cancel_only = CancelOnly(over.reason, dest_host, dest_port)
            else:
                self.gateway.write_later(
                    self.gate.forward_refused, grant.id, dest_host, dest_port, over.reason
                )
                raise asyncssh.ChannelOpenError(
                    asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"[bastion] {over.reason}"
                )
        self._forwards_opening += 1
        self._cancel_channel += cancel_only is not None
        try:
            return await self._open_forward(decision, dest_host, dest_port, cancel_only)
        except BaseException:
            self._cancel_channel -= cancel_only is not None
            raise
        finally:
            # asyncssh calls the relay's `connection_made` (which adds it to `forwards`)
            # right after this returns, in the same turn: it is never counted twice or not
            # at all.
            self._forwards_opening -= 1

    @property
    def forwards_open(self) -> int:
        """Forwards being opened, or open and not yet ended, on this connection."""
        return len(self.forwards - self._forwards_ended) + self._forwards_opening

    def _forwards_of_grant(self, grant_id: str) -> int:
        """Forwards open or being opened under `grant_id` on this node (all its connections)."""
        return sum(
            conn.forwards_open
            for conn in self.gateway.connections
            if conn.permit is not None and conn.permit.grant.id == grant_id
        )

    async def _open_forward(
        self, target: Target, dest_host: str, dest_port: int, cancel_only: CancelOnly | None = None
    ) -> ForwardRelay | PgRelay:
        assert self.permit is not None
        record = await asyncio.to_thread(
            self.gate.open_session,
            self.permit,
            target.name,
            SessionKind.FORWARD,
            self.client,
            f"-L {dest_host}:{dest_port} -> {target.host}:{target.port}",
        )
        if self.closing:  # the grant ended (or was revoked) while the record was written
            reason = "connection is closing"
            self.gateway.write_later(
                self.gate.close_session, record, self.closing_reason, detail=reason
            )
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, reason)
        if target.kind is TargetKind.POSTGRES:
            return await self._open_pg_forward(target, record, cancel_only)
        try:
            relay = await ForwardRelay.open(self, target.host, target.port, record)
            relay.target = target
            return relay
        except OSError as exc:
            reason = (
                f"can't reach target {target.name} ({target.host}:{target.port}): {exc.strerror}"
            )
            await asyncio.to_thread(
                self.gate.close_session, record, EndReason.TARGET_ERROR, detail=reason
            )
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason) from None

    async def _open_pg_forward(
        self, target: Target, record: Any, cancel_only: CancelOnly | None = None
    ) -> PgRelay:
        """A PostgreSQL forward: its query log lives in its recording, started (file and
        row on a thread) before the channel opens."""
        relay = PgRelay(self, target, record, cancel_only=cancel_only)
        try:
            await relay.recording.start(recording_header(record, "postgres"))
        except RecordingFailed as exc:  # mandatory: never a session running unrecorded
            await asyncio.to_thread(
                self.gate.close_session, record, EndReason.RECORDING_FAILED, detail=str(exc)
            )
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"{exc} - session refused"
            ) from None
        return relay

    def end_forward(self, relay: PgRelay, reason: EndReason, detail: str) -> None:
        if relay.cancel_only is not None:
            self._cancel_channel -= 1
        relay.recording.close(reason, None, detail)
        self.close_record(relay, reason, None, detail)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False  # no remote forwards (-R) through the bastion
