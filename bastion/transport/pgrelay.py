"""The protocol-aware relay for a `-L` forward to a PostgreSQL target.

The agent's psql (or psycopg, pgbench) speaks to the bastion through the SSH channel;
the bastion speaks to the target over its own connection. Three things happen on the way:

Credential injection. The agent's SSLRequest/GSSENCRequest get `N` (the SSH channel is
already encrypted). Its StartupMessage is taken for its parameters, never its password:
the agent was authenticated by its certificate, so the bastion logs in upstream with the
target's registered role (`pgupstream.login`) and answers the agent AuthenticationOk, the
server's ParameterStatus messages, a BackendKeyData of its own, and ReadyForQuery.

The statement gate and the query log. Frontend frames are read whole (`pgwire`) and
forwarded unchanged, except that each simple Query and each Parse is classified
(`sqlclass`, the real PostgreSQL grammar). A statement that needs approval is held, with
everything after it, until a human decides; the agent gets a NoticeResponse meanwhile.
Refused, the relay makes the *server* raise the error: it sends, instead of the
statement, a `DO` block that raises SQLSTATE 42501 with the reason. The server then
answers ErrorResponse and ReadyForQuery with the transaction status it really has (an
open transaction becomes aborted), so the agent's session and the server stay in step.
An approval covers one execution: a prepared statement whose Parse was approved runs
once, and each later Bind of it (running it again) is held for a new approval. For a
refused Parse or Bind the client's messages before its Sync are dropped, the relay sends
the DO as a Query, and the client's own Sync is forwarded: the DO's ReadyForQuery is
swallowed and the Sync's answers the batch (if the server was already skipping to Sync
after an earlier error, it skips the DO too, and nothing needs swallowing).

Responses are tracked in a queue of pending statements (a simple Query or an extended
Sync each end at one ReadyForQuery; an Execute ends at its CommandComplete or error) to
time each statement and count its rows for the query log written into the recording.
Row data (DataRow, CopyData) is forwarded in runs without being decoded.

Cancels and the end. A CancelRequest from the agent (psql's Ctrl-C opens a new forward)
quotes the bastion's key; the gateway maps it to the real backend key, only within the
same grant. When the grant ends, the agent gets a FATAL ErrorResponse naming the reason,
a running query is cancelled on the server, and both sides are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncssh

from bastion import pggate, pgwire, sqlclass
from bastion.approvalnotice import pg_reminder
from bastion.models import Approval, ApprovalState, EndReason, Target
from bastion.recording import format as fmt
from bastion.transport import pgupstream
from bastion.transport.recording import SessionRecording

if TYPE_CHECKING:
    from bastion.transport.connection import GatewayConnection

log = logging.getLogger("bastion.postgres")

# The backend messages the gate has nothing to do with, passed on unread (rows, in runs).
_PASSED_TYPES = frozenset(bytes([i]) for i in range(256)) - pggate.WATCHED
_SQL_LIMIT = pggate.SQL_LIMIT
_HELD_LIMIT = 1 << 20
_PASSED_PARAMETERS = (
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
    "search_path",
)
deny_statement = pggate.deny_statement


@dataclass(frozen=True, slots=True)
class CancelOnly:
    """A channel opened past the forward limits, for a CancelRequest only: why a login on
    it is refused, and the destination the agent asked for (for the audit)."""

    reason: str
    host: str
    port: int


class PgRelay(asyncssh.SSHTCPSession[bytes]):
    def __init__(
        self,
        conn: GatewayConnection,
        target: Target,
        record: Any,
        *,
        cancel_only: CancelOnly | None = None,
    ) -> None:
        self.conn = conn
        self.gateway = conn.gateway
        self.target = target
        self.record = record
        self.recording = SessionRecording(conn, self)  # started by the connection
        self.cancel_only = cancel_only  # opened past the forward limits
        self.chan: Any = None
        self.bytes_up = 0
        self.bytes_down = 0
        self._client = pgwire.FrontendParser()
        self._login: pgupstream.PgLogin | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._phase = "startup"
        self._holding = False
        self._waiting: pgwire.Frame | None = None  # fed to the gate again once it can judge
        self._client_cancel: asyncio.Event | None = None
        self._client_paused = False  # the SSH channel's buffer is full: stop reading the target
        self._server: _ServerSide | None = None
        self._ended = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.fake_key = pgwire.BackendKeyData(
            secrets.randbelow(2**31 - 1) + 1, secrets.token_bytes(4)
        )
        policy = self.gateway.config.target_policy(target.name)
        self._now = conn.gate.bastion.clock.monotonic  # statement timing for the query log
        self.gate = pggate.StatementGate(
            self.gateway.config.statement_rules(target.name),
            redact=policy.redact_parameters,
            now=self._now,
            on_done=self._write_log,
        )
        self._databases = policy.databases
        self.recording_mode = policy.recording
        self.database: str | None = None  # once logged in upstream

    # -- the agent's side ---------------------------------------------------------

    def connection_made(self, chan: Any) -> None:
        self.chan = chan
        self.conn.forwards.add(self)

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.bytes_up += len(data)
        try:
            if self._phase == "ready" and not self._holding and self._waiting is None:
                # The usual read, one whole Query: what `_pump` does, without buffering it.
                frame = self._client.lone_frame(data)
                if frame is not None and frame[0] == b"Q":
                    if self._decide(frame, []):
                        self._flush([data])
                    return
            self._client.receive_data(data)
            if self._phase == "startup":
                self._startup()
            if self._phase == "ready":
                self._pump()
        except pgwire.ProtocolError as exc:
            self._fatal("08P01", f"protocol violation: {exc}", EndReason.CLIENT_CLOSED)

    def eof_received(self) -> bool:
        self._close(EndReason.CLIENT_CLOSED, "")
        return False

    def pause_writing(self) -> None:
        self._client_paused = True

    def resume_writing(self) -> None:
        self._client_paused = False
        if self._server is not None and not self._ended:
            self._server.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.forwards.discard(self)
        self._close(EndReason.CLIENT_CLOSED, "")

    def _send(self, *messages: pgwire.Message) -> None:
        data = b"".join(pgwire.encode(m) for m in messages)
        self.bytes_down += len(data)
        with contextlib.suppress(OSError, asyncssh.Error):
            self.chan.write(data)

    def _startup(self) -> None:
        while True:
            event = self._client.next_event()
            if event is pgwire.NEED_DATA:
                return
            if event is pgwire.CLOSED:
                self._close(EndReason.CLIENT_CLOSED, "")
                return
            if isinstance(event, pgwire.SSLRequest | pgwire.GSSENCRequest):
                # The SSH channel already encrypts: decline, and the client goes on in clear.
                self.bytes_down += 1
                self.chan.write(pgwire.ENCRYPTION_REFUSED)
            elif isinstance(event, pgwire.CancelRequest):
                self._phase = "closed"
                self._spawn(self._cancel(event))
                return
            elif isinstance(event, pgwire.StartupMessage) and self.cancel_only is not None:
                refused = self.cancel_only
                self.gateway.write_later(
                    self.conn.gate.forward_refused,
                    self.record.grant_id,
                    refused.host,
                    refused.port,
                    refused.reason,
                )
                self._fatal(
                    "53300",
                    f"[bastion] {refused.reason}; this connection may only carry a cancel request",
                    EndReason.DENIED,
                )
                return
            elif isinstance(event, pgwire.StartupMessage):
                self._phase = "connecting"
                self.chan.pause_reading()
                self._spawn(self._connect(event))
                return

    async def _cancel(self, request: pgwire.CancelRequest) -> None:
        relay = self.gateway.pg_backends.get((request.pid, request.key))
        if relay is not None and relay.record.grant_id == self.record.grant_id:
            await relay.cancel_running()
            self._finish(EndReason.EXIT, "cancel request forwarded")
        else:
            self._finish(EndReason.DENIED, "cancel request for an unknown backend")
        with contextlib.suppress(OSError, asyncssh.Error):
            self.chan.close()

    async def _connect(self, startup: pgwire.StartupMessage) -> None:
        params = startup.parameters
        wanted = params.get("database") or params.get("user") or ""
        allowed = tuple(dict.fromkeys([self.target.database or "", *self._databases]))
        if wanted not in allowed:
            # As PostgreSQL itself would refuse a database it doesn't have (3D000), and
            # never another database than the one asked for.
            self._fatal(
                "3D000",
                f"[bastion] database {wanted!r} is not allowed through target"
                f" {self.target.name} (allowed: {', '.join(allowed)})",
                EndReason.DENIED,
            )
            return
        database = wanted
        extra = {k: params[k] for k in _PASSED_PARAMETERS if k in params}
        agent = self.record.agent
        extra["application_name"] = f"{extra.get('application_name', 'client')} (bastion: {agent})"
        secret = await asyncio.to_thread(self.conn.gate.target_secret, self.target.name)
        try:
            if secret is None:
                raise pgupstream.PgUpstreamError(
                    f"target {self.target.name} has no stored credential"
                )
            login = await pgupstream.login(self.target, secret.value, database, extra)
        except pgupstream.PgUpstreamError as exc:
            await asyncio.to_thread(
                self.conn.gate.target_error, self.target.name, self.record.grant_id, str(exc), False
            )
            if self._ended:
                return
            self._fatal(exc.sqlstate, str(exc), EndReason.TARGET_ERROR)
            return
        if self._ended:
            login.writer.close()
            return
        self._login = login
        self._writer = login.writer
        self.database = database
        if login.backend_key is not None:
            # The server's real PID (pg_backend_pid(), pg_stat_activity, notifications
            # agree); only the secret is the bastion's, mapped back for cancel requests.
            self.fake_key = pgwire.BackendKeyData(login.backend_key.pid, self.fake_key.key)
        self.gateway.pg_backends[(self.fake_key.pid, self.fake_key.key)] = self
        self.gate.startup_parameters(login.parameters)
        self._send(
            pgwire.AuthenticationOk(),
            *login.parameters,
            self.fake_key,
            pgwire.ReadyForQuery(login.status),
        )
        self._log_event("connected", {"database": database, "user": self.target.user})
        self._phase = "ready"
        self._attach_server(login)
        self.chan.resume_reading()
        self._pump()

    # -- frontend frames ------------------------------------------------------------

    def _pump(self) -> None:
        """Forward the agent's whole frames as the gate decides: hold at a statement that
        needs approval, wait where the gate can't judge yet."""
        out: list[bytes] = []
        while not self._holding and self._phase == "ready":
            frame: pgwire.Frame | pgwire.Signal
            if self._waiting is not None:
                frame, self._waiting = self._waiting, None
            else:
                frame = self._client.next_frame()
            if frame is pgwire.NEED_DATA:
                break
            if frame is pgwire.CLOSED:
                self._flush(out)
                self._close(EndReason.CLIENT_CLOSED, "")
                return
            if self._decide(frame, out):
                out.append(frame[1])
            elif self._phase != "ready" or self._holding or self._waiting is not None:
                break
        self._flush(out)

    def _decide(self, frame: pgwire.Frame, out: list[bytes]) -> bool:
        """The gate's decision on `frame`, carried out; True when it is to be sent."""
        decision = self.gate.client(frame)
        if decision is pggate.FORWARD:
            return True
        if decision is pggate.DROP:
            return False
        if decision is pggate.WAIT:
            # Until the server answers what is in flight: `_server_data` pumps again.
            self._flush(out)
            out.clear()
            self._waiting = frame
            self.chan.pause_reading()
            return False
        if decision is pggate.TERMINATE:
            self._flush(out)
            out.clear()
            self._close(EndReason.CLIENT_CLOSED, "")
            return False
        if isinstance(decision, pggate.Fatal):
            self._flush(out)
            out.clear()
            self._fatal(decision.sqlstate, decision.message, EndReason.CLIENT_CLOSED)
            return False
        assert isinstance(decision, pggate.Hold)
        self._flush(out)
        out.clear()
        self._holding = True
        self.chan.pause_reading()
        self._spawn(self._approve(decision))
        return False

    def _flush(self, out: list[bytes]) -> None:
        if out and self._writer is not None:
            self._writer.write(b"".join(out))
            if self._writer.transport.get_write_buffer_size() > 1 << 20:
                self.chan.pause_reading()
                self._spawn(self._drain_upstream())

    async def _drain_upstream(self) -> None:
        assert self._server is not None
        await self._server.writable.wait()
        if not self._ended:
            self.chan.resume_reading()

    # -- approvals ------------------------------------------------------------------

    async def _approve(self, hold: pggate.Hold) -> None:
        """Wait for a human's decision on `hold`, then send the statement or its refusal.
        Whatever fails on the way ends in a refusal the client sees, never a hang."""
        try:
            data = await self._decision(hold)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("approval of a statement failed; refusing it")
            data = self.gate.refused(
                hold,
                "refused: the approval failed",
                f"[bastion] statement refused: its approval failed ({type(exc).__name__})",
            )
        if self._ended or data is None:
            return
        self._flush([data])
        self._holding = False
        self.chan.resume_reading()
        self._pump()

    async def _decision(self, hold: pggate.Hold) -> bytes | None:
        gate = self.conn.gate
        sql = hold.sql
        timeout = self.gateway.config.approvals.timeout
        approval = await asyncio.to_thread(
            gate.request_approval, self.record, "statement", sql, hold.reasons, timeout
        )
        if self._ended:
            ended = "the session ended while waiting"
            await asyncio.to_thread(gate.expire_approval, approval, ended)
            return None
        wait = _duration_text(timeout.total_seconds())
        self._send(
            pgwire.NoticeResponse.build(
                "NOTICE",
                "01000",
                f"[bastion] approval required, request {approval.id}; waiting up to {wait}",
            )
        )
        self._log_event("approval requested", {"approval": approval.id, "sql": sql[:_SQL_LIMIT]})
        waiting = asyncio.ensure_future(
            self.gateway.wait_for_decision(
                approval, timeout, remind=lambda waited: self._remind(approval, waited, timeout)
            )
        )
        self._client_cancel = asyncio.Event()
        cancelled = asyncio.ensure_future(self._client_cancel.wait())
        try:
            await asyncio.wait({waiting, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            waiting.cancel()  # the session ended while waiting: that expires the request
            raise
        finally:
            cancelled.cancel()
        if not waiting.done():
            # psql's Ctrl-C while the statement waits: abandon it, as a cancel would.
            decided = await asyncio.to_thread(
                gate.expire_approval, approval, "cancelled by the client"
            )
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
        else:
            decided = waiting.result()
        if self._ended:
            return None
        if decided.state is ApprovalState.APPROVED:
            self._send(
                pgwire.NoticeResponse.build(
                    "NOTICE", "01000", f"[bastion] approved by {decided.decided_by} ({approval.id})"
                )
            )
            return self.gate.approved(hold, f"approved {approval.id} by {decided.decided_by}")
        sqlstate = "42501"
        if decided.state is ApprovalState.DENIED:
            reason = f"denied by {decided.decided_by}: {decided.decision_reason}"
        elif decided.decision_reason == "cancelled by the client":
            reason, sqlstate = "canceling statement due to user request", "57014"
        else:
            reason = f"approval timed out after {wait}"
        text = f"[bastion] statement refused ({approval.id}): {reason}"
        return self.gate.refused(hold, f"{decided.state.value} {approval.id}", text, sqlstate)

    def _remind(self, approval: Approval, waited: float, timeout: timedelta) -> None:
        """Another NOTICE while the statement waits: psql prints it, pg_dump -v logs it.
        A NoticeResponse may come at any time, between any two messages of the server's."""
        if not self._ended and self._holding:
            self._send(
                pgwire.NoticeResponse.build(
                    "NOTICE", "01000", pg_reminder(approval, waited, timeout)
                )
            )

    # -- the server's side ----------------------------------------------------------

    def _attach_server(self, login: pgupstream.PgLogin) -> None:
        """Take the target's socket from the login's stream and read it by callback.

        A task awaiting `StreamReader.read` cost a wake-up and a turn of the event loop
        per answer; `pgbench -S` spent a tenth of the relay's CPU there.
        """
        self._server = _ServerSide(self, login.parser, login.writer.transport)
        leftover, at_eof = pgupstream.hand_over(login, self._server)
        if leftover:
            self._server_data(leftover)
        if at_eof:
            self._server._end(None)

    def _server_data(self, data: bytes) -> None:
        """Frames from the target (b"" at its end of stream), passed on as they come."""
        assert self._server is not None
        parser = self._server.parser
        try:
            parser.receive_data(data)
            out: list[bytes] = []
            while True:
                frame = parser.next_frame()
                if frame is pgwire.NEED_DATA:
                    break
                if frame is pgwire.CLOSED:
                    if out:
                        self._to_client(out)
                    self._close(EndReason.EXIT, "the target closed the connection")
                    return
                if frame[0] in _PASSED_TYPES:
                    # Rows (and a RowDescription before them) come in runs: the rest of
                    # this run, as one slice.
                    out.append(frame[1])
                    run = parser.next_run(_PASSED_TYPES)
                    if run:
                        out.append(run)
                    continue
                decision = self.gate.server(frame)
                if decision is pggate.PASS:
                    out.append(frame[1])
                elif decision is not pggate.SWALLOW:
                    assert isinstance(decision, bytes)
                    out.append(decision)
            if out:
                self._to_client(out)
                if self._client_paused:
                    self._server.transport.pause_reading()  # until the agent's side drains
        except pgwire.ProtocolError as exc:
            self._server_lost(exc)
            return
        if self._waiting is not None and not self._holding:
            self._pump()  # the gate may judge the frame it made wait now
            if self._waiting is None and not self._holding and not self._ended:
                self.chan.resume_reading()

    def _server_lost(self, exc: Exception) -> None:
        if not self._ended:
            self._fatal("08006", f"connection to the target failed: {exc}", EndReason.TARGET_ERROR)

    def _to_client(self, out: list[bytes]) -> None:
        data = b"".join(out)
        self.bytes_down += len(data)
        try:  # noqa: SIM105 (not contextlib.suppress: an object per answer)
            self.chan.write(data)
        except (OSError, asyncssh.Error):
            pass

    # -- the query log ----------------------------------------------------------------

    def _write_log(self, entry: pggate.Pending) -> None:
        if not self.recording.active:
            return
        line = fmt.query_entry(
            entry.sql[:_SQL_LIMIT],
            entry.params,
            round((self._now() - entry.started) * 1000, 3),
            entry.rows,
            entry.tags,
            entry.error,
            entry.verdict,
        )
        self._record(line)

    def _log_event(self, event: str, details: dict[str, Any]) -> None:
        if self.recording.active:
            self._append({"event": event, **details})

    def _append(self, record: dict[str, Any]) -> None:
        self._record(json.dumps(record).encode())

    def _record(self, line: bytes) -> None:
        self.recording.query(line)  # a failed write is the recording's to handle

    # -- the end ----------------------------------------------------------------------

    async def cancel_running(self) -> None:
        if self._holding and self._client_cancel is not None:
            self._client_cancel.set()
            return
        if self._login is not None and self._login.backend_key is not None:
            await pgupstream.cancel(self.target, self._login.backend_key)

    def tighten(
        self,
        rules: tuple[sqlclass.StatementRule, ...],
        redact: bool,
        databases: tuple[str, ...],
        recording_mode: str,
    ) -> None:
        """A reloaded bastion.toml's policy, where stricter than the one this session
        started with: statements the new rules hold are held from now on too."""
        self.gate.tighten(rules, redact)
        self._databases = tuple(d for d in self._databases if d in databases)
        if recording_mode == "mandatory":
            self.recording_mode = recording_mode

    def fail(self, reason: EndReason, message: str) -> None:
        """Forced close (expiry, revocation, kill, shutdown): say why, cancel, close."""
        if self._ended:
            return
        if self.gate.in_flight and self._login is not None and not self._holding:
            # Not one of the relay's own tasks: those are cancelled as it closes.
            self.gateway.run_detached(self.cancel_running())
        self._fatal("57P01", f"[bastion] {message}", reason)

    def _fatal(self, sqlstate: str, message: str, reason: EndReason) -> None:
        if self._ended:
            return
        self._send(pgwire.ErrorResponse.build("FATAL", sqlstate, message))
        self._close(reason, message)

    def _close(self, reason: EndReason, detail: str) -> None:
        if self._ended:
            return
        self._phase = "closed"
        if self._writer is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write(pgwire.encode(pgwire.Terminate()))
                self._writer.close()
        self._finish(reason, detail)
        with contextlib.suppress(OSError, asyncssh.Error):
            self.chan.close()

    def _finish(self, reason: EndReason, detail: str) -> None:
        if self._ended:
            return
        self._ended = True
        self.gateway.pg_backends.pop((self.fake_key.pid, self.fake_key.key), None)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.conn.end_forward(self, reason, detail)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _ServerSide(asyncio.Protocol):
    """The target's socket once logged in: data straight to the relay, and its flow control."""

    def __init__(
        self, relay: PgRelay, parser: pgwire.BackendParser, transport: asyncio.BaseTransport
    ) -> None:
        self.relay = relay
        self.parser = parser
        self.transport: Any = transport
        self.writable = asyncio.Event()  # the target takes what the agent sends
        self.writable.set()
        self.ended = False  # end of stream seen

    def data_received(self, data: bytes) -> None:
        self.relay._server_data(data)

    def eof_received(self) -> bool:
        self._end(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        self._end(exc)

    def _end(self, exc: Exception | None) -> None:
        if self.ended or self.relay._ended:
            return
        self.ended = True
        if exc is None:
            self.relay._server_data(b"")
        else:
            self.relay._server_lost(exc)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


def _duration_text(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes}m" if minutes and seconds % 60 == 0 else f"{int(seconds)}s"
