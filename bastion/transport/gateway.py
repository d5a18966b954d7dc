"""The SSH gateway: the listener, the live connections, and the change feed.

One `Gateway` per `bastion serve`. It listens, keeps the set of live connections,
and watches the store's audit feed for what other processes decided (a revocation,
a kill, an approval) so it can act on it within a fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import random
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Protocol, TypeVar

import asyncssh

from bastion import sshalgs, startups
from bastion.approvalnotice import approval_event
from bastion.config import Config
from bastion.gatekeeper import Gatekeeper
from bastion.metrics import LiveState, Metrics
from bastion.models import (
    AccessRequest,
    Approval,
    ApprovalState,
    AuditEvent,
    EndReason,
    RequestState,
)
from bastion.notify import Notifier
from bastion.transport import asyncssh_fixes
from bastion.transport.connection import GatewayConnection
from bastion.transport.deadlines import DeadlineClock
from bastion.transport.guard import DeadlineGuard
from bastion.transport.pgrelay import PgRelay
from bastion.transport.recording import FLUSH_INTERVAL, SessionRecording
from bastion.transport.reminders import remind_every

# The deadline guard cuts a connection this long after its deadline plus the close grace.
GUARD_SLACK = 2.0
_COLLECT_AHEAD = 0.5  # seconds before a deadline to run the garbage collector
_BURST = 0.2  # deadlines this close to each other are closed together, one collection before

log = logging.getLogger("bastion.gateway")


class _Decidable(Protocol):
    @property
    def state(self) -> object: ...


D = TypeVar("D", bound=_Decidable)
# What waits for a human, by approval or request id: its future, and how to read the
# decision from the store (None while still pending).
_Waiters = dict[str, tuple["asyncio.Future[Any]", Callable[[], Any]]]

# The client picks the cipher from what the server offers; stock OpenSSH prefers
# chacha20-poly1305, which asyncssh runs at half the speed of AES-GCM. Offering only
# AES-GCM (which every OpenSSH since 6.2 supports) makes clients use it.
LISTEN_CIPHERS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
POLL_INTERVAL = 0.2
# With a store that pushes changes (PostgreSQL LISTEN/NOTIFY) the poll is only a fallback.
FALLBACK_POLL_INTERVAL = 2.0


class StartupSlots:
    """The connections still authenticating, counted in all and by source netblock.

    `admit` asks `startups.decide_startup` whether one more may start, under the limits
    of the configuration running now (a reload applies to the next connection); a
    refusal is logged at most once a minute per setting, saying how many were refused in
    between, and counted in the metrics. `release` gives the place back once the
    connection is authenticated or gone.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.authenticating = 0
        self.by_block: dict[str, int] = {}
        self._metrics = metrics
        self._logged_at: dict[str, float] = {}  # setting -> loop time of its last line
        self._unlogged: dict[str, int] = {}  # setting -> refusals since that line

    def admit(self, limits: startups.StartupLimits, host: str, client: str) -> str | None:
        """The netblock the new connection from `host` now counts under, or None: refused."""
        block = startups.source_block(host, limits.ipv4_prefix, limits.ipv6_prefix)
        decision = startups.decide_startup(
            limits, self.authenticating, self.by_block.get(block, 0), block, random.random()
        )
        if isinstance(decision, startups.StartupRefusal):
            self._refused(decision, client)
            return None
        self.authenticating += 1
        self.by_block[block] = self.by_block.get(block, 0) + 1
        return block

    def release(self, block: str) -> None:
        self.authenticating -= 1
        left = self.by_block[block] - 1
        if left:
            self.by_block[block] = left
        else:
            del self.by_block[block]  # a flood from many sources leaves nothing behind

    def _refused(self, refusal: startups.StartupRefusal, client: str) -> None:
        self._metrics.connection_dropped(refusal.setting)
        setting = refusal.setting
        now = asyncio.get_running_loop().time()
        if now - self._logged_at.get(setting, -60.0) < 60:
            self._unlogged[setting] = self._unlogged.get(setting, 0) + 1
            return
        self._logged_at[setting] = now
        since = self._unlogged.pop(setting, 0)
        log.warning(
            "closing the connection from %s: %s (%s; logged once a minute%s)",
            client,
            refusal.reason,
            setting,
            f", {since} more closed since the last line" if since else "",
            extra={"client": client, "event": "connection.dropped", "setting": setting},
        )


class Gateway:
    def __init__(
        self,
        gate: Gatekeeper,
        config: Config,
        ca_public_line: str,
        host_key_path: str,
        close_grace: float = 1.0,
        metrics: Metrics | None = None,
    ) -> None:
        asyncssh_fixes.apply()
        self.gate = gate
        self.config = config
        self.ca_public_line = ca_public_line
        self.host_key_path = host_key_path
        self.close_grace = close_grace
        self.connections: set[GatewayConnection] = set()
        # The recordings of live sessions (SSH and PostgreSQL alike), for the flusher.
        self.recordings: set[SessionRecording] = set()
        # The BackendKeyData each PostgreSQL relay gave its client -> that relay.
        self.pg_backends: dict[tuple[int, bytes], PgRelay] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._detached: set[asyncio.Task[Any]] = set()
        self._waiters: _Waiters = {}  # approvals
        self._request_waiters: _Waiters = {}  # access requests
        self.notifier = Notifier(config.requests)
        self._server: Any = None
        self._watcher: asyncio.Task[None] | None = None
        self._membership: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        # Timers of expiry and revocation: one conversion of deadlines to loop time.
        self.deadlines = DeadlineClock(gate.now, lambda: asyncio.get_running_loop().time())
        # The backstop for those timers, on a thread of its own (see guard.py).
        self.guard = DeadlineGuard(gate.now, timedelta(seconds=close_grace + GUARD_SLACK))
        # Store writes that must not hold the event loop (the records of a forced close,
        # the seals of recordings), in the order they were made: one thread.
        self._writes = ThreadPoolExecutor(1, thread_name_prefix="bastion-store-writes")
        self._collection: asyncio.TimerHandle | None = None
        self._stop_listening: Any = None
        self._address = ""
        self._cursor = 0
        # Where agents reach this gateway, as printed in `ssh` lines it gives them.
        self.advertised = config.server.advertised_host_port
        self.metrics = metrics or Metrics()
        self.metrics.set_live(self.live_state)
        # Connections not yet authenticated (`server.max_startups`), in all and by source
        # netblock (`server.per_source_max_startups`).
        self.startups = StartupSlots(self.metrics)

    def collect_before(self, when: float) -> None:
        """Run the garbage collector just before the deadline at loop time `when`.

        A full collection (25-40 ms with a few hundred connections' worth of cyclic
        garbage, measured) is triggered by allocations, and closing many connections at
        one expiry allocates: it landed in the middle of such closes and held the last
        clients back. Collecting half a second before leaves it nothing to do then.
        """
        loop = asyncio.get_running_loop()
        at = when - _COLLECT_AHEAD
        if at <= loop.time():
            return
        current = self._collection
        if current is not None:
            if current.when() <= at:
                return  # an earlier one is due first, and then schedules the next
            current.cancel()
        self._collection = loop.call_at(at, self._collect)

    def _collect(self) -> None:
        self._collection = None
        gc.collect()
        # Then the same before the next deadline that isn't part of the coming burst (the
        # deadlines within _BURST of the earliest one), and not in the middle of that burst.
        loop = asyncio.get_running_loop()
        now = loop.time()
        upcoming = sorted(
            when
            for conn in self.connections
            if (timer := conn.deadline_timer) is not None
            and not timer.cancelled()
            and (when := timer.when()) > now
        )
        if not upcoming:
            return
        burst_end = upcoming[0] + _BURST
        later = [when for when in upcoming if when > burst_end]
        if later:
            self._collection = loop.call_at(
                max(later[0] - _COLLECT_AHEAD, burst_end), self._collect
            )

    async def listen(self, host: str, port: int) -> int:
        """Start accepting; returns the port (useful with port 0)."""
        authorized = asyncssh.import_authorized_keys(f"cert-authority {self.ca_public_line}\n")
        self._server = await asyncssh.listen(
            host,
            port,
            server_factory=lambda: GatewayConnection(self),
            server_host_keys=[self.host_key_path],
            authorized_client_keys=authorized,
            public_key_auth=True,
            password_auth=False,
            kbdint_auth=False,
            host_based_auth=False,
            gss_host=None,
            line_editor=False,
            encoding=None,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            kex_algs=sshalgs.KEX,
            encryption_algs=LISTEN_CIPHERS,
            compression_algs=["none"],
            login_timeout=self.config.server.login_timeout.total_seconds(),
            keepalive_interval=60,
            reuse_address=True,
        )
        self._cursor = self.gate.last_change()
        loop = asyncio.get_running_loop()

        def wake() -> None:  # called on the store's listener thread
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(self._changed.set)

        self._stop_listening = self.gate.listen_for_changes(wake)
        self.guard.start()
        self._watcher = asyncio.ensure_future(self._watch())
        self._flusher = asyncio.ensure_future(self._flush_recordings())
        sockets = self._server.sockets
        bound = int(sockets[0].getsockname()[1]) if sockets else port
        if not self.config.server.advertise:
            self.advertised = (host, bound)
        self._address = f"{host}:{bound}"
        self.gate.register_node(self._address)
        self._membership = asyncio.ensure_future(self._keep_membership())
        return bound

    def stop_accepting(self) -> None:
        """Close the listener: new connections are refused from now on."""
        if self._server is not None:
            self._server.close()
        for task in (self._watcher, self._membership):
            if task is not None:
                task.cancel()
        stop_listening, self._stop_listening = self._stop_listening, None
        if stop_listening is not None:
            stop_listening()

    async def shutdown(
        self,
        message: str = "the bastion is shutting down - session closed",
        grace: float | None = None,
    ) -> None:
        """Stop accepting, tell every live session why, close them within `grace` seconds.

        Connections still open at the end of `grace` (a client that doesn't read, say) are
        aborted; their session records already say `bastion-shutdown`. Recordings are then
        sealed (at most 10 s more: that is file I/O, not the network).
        """
        self.stop_accepting()
        grace = self.close_grace + 1.0 if grace is None else grace
        live = list(self.connections)
        for conn in live:
            conn.close_all(EndReason.BASTION_SHUTDOWN, message)
        deadline = asyncio.get_running_loop().time() + grace
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            log.warning(
                "connection from %s did not close within %.0fs: aborted",
                conn.client,
                grace,
                extra={"client": conn.client, "event": "connection.aborted"},
            )
            with contextlib.suppress(Exception):
                conn.conn.abort()
        if self._flusher is not None:
            self._flusher.cancel()
        if self._detached:  # recordings still being sealed
            await asyncio.wait(set(self._detached), timeout=10)
        self.guard.stop()
        # The store writes queued by the closes above (bounded: the store may be down).
        writes = asyncio.get_running_loop().run_in_executor(None, self._writes.shutdown, True)
        try:
            await asyncio.wait_for(asyncio.shield(writes), timeout=10)
        except TimeoutError:
            log.error("the state store did not take the last session records within 10s")
        self.notifier.close()

    def write_later(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """`write_behind` for a write nobody waits for: a failure is logged, not lost."""
        call = functools.partial(fn, **kwargs) if kwargs else fn
        self.write_behind(call, *args).add_done_callback(_log_failure)

    def write_behind(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run the store write `fn(*args)` on the writes thread, in order, off the loop."""
        loop = asyncio.get_running_loop()
        try:
            return loop.run_in_executor(self._writes, fn, *args)
        except RuntimeError:  # after shutdown() drained the thread: write it here
            done = loop.create_future()
            try:
                done.set_result(fn(*args))
            except Exception as exc:
                done.set_exception(exc)
            return done

    def live_state(self) -> LiveState:
        """Open sessions by kind, approvals waiting and the bytes of open sessions."""
        state = LiveState(approvals_pending=len(self._waiters))
        for conn in list(self.connections):
            for relay in list(conn.sessions) + list(conn.forwards):
                if relay.record is None or self.metrics.counted(relay):
                    continue
                kind = relay.record.kind.value
                state.sessions[kind] = state.sessions.get(kind, 0) + 1
                state.bytes_up += relay.bytes_up
                state.bytes_down += relay.bytes_down
        return state

    def run_detached(self, coro: Any) -> None:
        """Run a coroutine that must outlive the relay that started it (a cancel at close)."""
        task = asyncio.ensure_future(coro)
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)

    async def _flush_recordings(self) -> None:
        """Hand every live recording's queued frames to the writer each FLUSH_INTERVAL,
        on a fixed schedule (crash durability: see `transport/recording.py`)."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due = max(due + FLUSH_INTERVAL, loop.time())  # no drift; missed ticks skipped
            await asyncio.sleep(due - loop.time())
            for recording in list(self.recordings):
                try:
                    recording.flush()  # a failed write is handled by the recording
                except Exception:
                    log.exception("flushing a recording failed")

    # -- approvals ---------------------------------------------------------------

    async def wait_for_decision(
        self,
        approval: Approval,
        timeout: timedelta,
        remind: Callable[[float], None] | None = None,
    ) -> Approval:
        """Until a human decides, or `timeout` passes (then the approval expires).

        Meanwhile `remind(waited_seconds)` is called every `[approvals] remind_every`
        (the client's reminder). The hooks hear `approval.created` now and
        `approval.decided` when the wait ends, however it ends.
        """
        self.notify_approval("approval.created", approval)
        reminders = None
        if remind is not None:
            reminders = asyncio.ensure_future(
                remind_every(
                    remind,
                    self.config.approvals.remind_every.total_seconds(),
                    until=timeout.total_seconds(),
                )
            )
        decided: Approval | None = None
        try:
            decided = await self._until_decided(
                self._waiters,
                approval.id,
                lambda: _decided(self.gate.approval(approval.id), ApprovalState.PENDING),
                timeout.total_seconds(),
            )
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            self.write_behind(
                self.gate.expire_approval, approval, "the session ended while waiting"
            ).add_done_callback(self._expired_unwatched)
            raise
        finally:
            if reminders is not None:
                reminders.cancel()
        if decided is None:  # timed out
            decided = await asyncio.to_thread(self.gate.expire_approval, approval, "timed out")
            self.notify_approval("approval.decided", decided)
            return decided
        self.notify_approval("approval.decided", decided)
        log.info(
            "approval %s %s by %s",
            decided.id,
            decided.state.value,
            decided.decided_by,
            extra={
                "event": "approval.decided",
                "approval": decided.id,
                "session": decided.session_id,
                "state": decided.state.value,
                "decided_by": decided.decided_by,
            },
        )
        return decided

    async def _until_decided(
        self,
        waiters: _Waiters,
        key: str,
        load: Callable[[], D | None],
        timeout_s: float,
    ) -> D:
        """Wait until `load()` (the store's record, once decided) is not None.

        The change feed calls `_settle(waiters, key)` when a decision lands; a decision
        that landed before the wait began is found by the first `load()`.
        """
        future: asyncio.Future[D] = asyncio.get_running_loop().create_future()
        waiters[key] = (future, load)
        try:
            current = await asyncio.to_thread(load)
            if current is not None:
                return current
            return await asyncio.wait_for(future, max(0.0, timeout_s))
        finally:
            waiters.pop(key, None)

    @staticmethod
    async def _settle(waiters: _Waiters, key: str) -> None:
        entry = waiters.get(key)
        if entry is None or entry[0].done():
            return
        decided = await asyncio.to_thread(entry[1])
        if decided is not None and not entry[0].done():
            entry[0].set_result(decided)

    # -- access requests ---------------------------------------------------------

    async def wait_for_request(self, request: AccessRequest) -> AccessRequest:
        """Until a human (or the change feed) decides, or the request's wait runs out."""
        try:
            return await self._until_decided(
                self._request_waiters,
                request.id,
                lambda: _decided(self.gate.access_request(request.id), RequestState.PENDING),
                (request.expires_at - self.gate.now()).total_seconds(),
            )
        except TimeoutError:
            return await asyncio.to_thread(self.gate.expire_request, request.id)

    def notify_request(self, event: str, request: AccessRequest) -> None:
        """Tell the hooks; never raises and never waits."""
        self._tell_hooks(
            lambda: {
                "event": event,
                "node": self.gate.node,
                "request": request.to_dict(),
                "approve": f"bastion requests approve {request.id}",
                "deny": f"bastion requests deny {request.id} --reason TEXT",
            }
        )

    def notify_approval(self, event: str, approval: Approval) -> None:
        """Tell the hooks of an approval wait or its end; never raises and never waits."""
        self._tell_hooks(lambda: approval_event(event, approval, self.gate.node))

    def _expired_unwatched(self, done: asyncio.Future[Approval]) -> None:
        """Done callback of the expiry written after a wait was cancelled: tell the hooks."""
        if done.cancelled():
            return
        if (exc := done.exception()) is not None:
            log.error("a store write failed: %s", exc)
            return
        self.notify_approval("approval.decided", done.result())

    def _tell_hooks(self, payload: Callable[[], dict[str, Any]]) -> None:
        """Hand one event to the notification hooks (`notify.Notifier`: their own thread,
        one at a time, failures logged). Nothing here may fail or hold a session."""
        if not self.notifier.enabled:
            return
        try:
            self.notifier.send(payload())
        except Exception:
            log.exception("could not start the notification hooks")

    # -- the change feed ---------------------------------------------------------

    async def _watch(self) -> None:
        interval = POLL_INTERVAL if self._stop_listening is None else FALLBACK_POLL_INTERVAL
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), interval)
            self._changed.clear()
            try:
                # Read on a thread: a store that stops answering holds this task, never
                # the loop, whose timers end sessions at their deadlines.
                events = await asyncio.to_thread(self.gate.changes_after, self._cursor)
                await self._apply_changes(events)
            except Exception:
                log.exception("reading the change feed failed; retrying")

    # -- nodes -------------------------------------------------------------------

    async def _keep_membership(self) -> None:
        """Heartbeat; end the sessions of nodes gone silent; notice being declared lost."""
        server = self.config.server
        while True:
            await asyncio.sleep(server.heartbeat.total_seconds())
            try:
                if not await asyncio.to_thread(self.gate.heartbeat):
                    self._declared_lost()
                    await asyncio.to_thread(self.gate.register_node, self._address)
                lost = await asyncio.to_thread(self.gate.reap_lost_nodes, server.node_timeout)
                for node, ids in lost.items():
                    log.warning(
                        "node %s is silent: ended its %d sessions (node-lost)", node, len(ids)
                    )
            except Exception:
                log.exception("node heartbeat failed; retrying")

    def _declared_lost(self) -> None:
        """Another node ended this node's sessions while it was silent: end them here too."""
        log.error(
            "this node (%s) was declared lost by another node; closing its sessions", self.gate.node
        )
        for conn in list(self.connections):
            conn.close_all(
                EndReason.NODE_LOST,
                f"the bastion node {self.gate.node} lost contact with the cluster - session closed",
            )

    async def _apply_changes(self, events: Iterable[AuditEvent]) -> None:
        for event in events:
            self._cursor = event.seq
            details = event.details
            if event.action == "grant.revoked":
                self._revoked(details["grant"], event.actor, details.get("reason", ""))
            elif event.action == "session.kill_requested":
                revoked = details["grant"] if details.get("revoke") else None
                self._killed(details["session"], event.actor, details.get("reason", ""), revoked)
            elif event.action == "approval.decided":
                await self._settle(self._waiters, details["approval"])
            elif event.action == "request.decided":
                await self._settle(self._request_waiters, details["request"])

    def _revoked(self, grant_id: str, actor: str, reason: str) -> None:
        for conn in list(self.connections):
            if conn.permit is not None and conn.permit.grant.id == grant_id:
                grant = conn.permit.grant
                conn.close_all(
                    EndReason.REVOKED,
                    f"grant {grant.id} (task {grant.task}) revoked by {actor}: {reason}"
                    f" - session closed; {conn.ask_again}",
                )

    def _killed(self, session_id: str, actor: str, reason: str, revoked: str | None) -> None:
        """Close the whole connection that carries the session, every channel on it: a
        kill means "stop this access", and an OpenSSH ControlMaster would otherwise open
        a new session on the same connection at once. Each session ends `killed`."""
        for conn in list(self.connections):
            relays = list(conn.sessions) + list(conn.forwards)
            ids = sorted(r.record.id for r in relays if r.record is not None)
            if session_id not in ids:
                continue
            if conn.closing:  # already closing for another reason, which its records say
                return
            message = f"session {session_id} killed by {actor}: {reason} - connection closed"
            if revoked is not None:
                message += f"; grant {revoked} revoked; {conn.ask_again}"
            log.info(
                "session %s killed by %s: %s; closing its connection from %s (%d sessions)",
                session_id,
                actor,
                reason,
                conn.client,
                len(ids),
                extra={"event": "session.killed", "session": session_id, "actor": actor},
            )
            self.write_later(
                self.gate.connection_killed, session_id, actor, reason, conn.client, ids
            )
            conn.close_all(EndReason.KILLED, message)
            return


def _decided(record: D | None, pending: object) -> D | None:
    """The record if a decision has landed on it, else None."""
    return record if record is not None and record.state is not pending else None


def _log_failure(done: asyncio.Future[Any]) -> None:
    """Done callback of a write nobody awaits: log its failure rather than lose it."""
    if not done.cancelled() and (exc := done.exception()) is not None:
        log.error("a store write failed: %s", exc)
