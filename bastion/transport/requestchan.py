"""`ssh … request@bastion -- --target T --task X --ttl 30m --reason "…"`: ask, wait, receive.

The agent logs in with its enrolled (plain) key. The only thing that login can do is
one `exec` carrying the request: no shell, no subsystem, no PTY, no forward. The
channel stays open while a human decides; on approval the certificate goes to stdout
in `-cert.pub` form (so `… > agent_key-cert.pub` works at once) and the exit status
is 0. Exit statuses: 1 denied, 2 nobody decided in time, 3 refused before asking
(bad command line, a target outside the agent's list, a TTL over a limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import asyncssh

from bastion.errors import BastionError
from bastion.models import AccessRequest, Agent, RequestState
from bastion.requestpolicy import USAGE
from bastion.timespec import format_duration

if TYPE_CHECKING:
    from bastion.transport.connection import GatewayConnection

log = logging.getLogger("bastion.gateway")

EXIT_APPROVED, EXIT_DENIED, EXIT_TIMED_OUT, EXIT_REFUSED = 0, 1, 2, 3


class RequestSession(asyncssh.SSHServerSession[bytes]):
    def __init__(self, conn: GatewayConnection, agent: Agent) -> None:
        self.conn = conn
        self.agent = agent
        self.chan: Any = None
        self.command: str | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        return False

    def shell_requested(self) -> bool:
        return True  # answered with the usage and exit status 3

    def exec_requested(self, command: str | bytes) -> bool:
        if isinstance(command, bytes):
            command = command.decode("utf-8", errors="replace")
        self.command = command
        return True

    def subsystem_requested(self, subsystem: str | bytes) -> bool:
        return False

    def eof_received(self) -> bool:
        return True  # the agent's stdin ending doesn't end the wait (`ssh … < /dev/null`)

    def session_started(self) -> None:
        self._task = asyncio.ensure_future(self._ask_or_fail())

    async def _ask_or_fail(self) -> None:
        try:
            await self._ask()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("access request from %s failed", self.agent.name)
            self._say("the bastion failed to handle this request; see its log")
            self._end(EXIT_REFUSED)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _say(self, text: str) -> None:
        try:
            self.chan.write_stderr(f"bastion: {text}\n".encode())
        except Exception:
            log.exception("write_stderr")

    def _end(self, status: int) -> None:
        with contextlib.suppress(Exception):
            self.chan.exit(status)

    async def _ask(self) -> None:
        gate = self.conn.gate
        gateway = self.conn.gateway
        if self.command is None:
            self._say(f"this login only takes an access request. {USAGE}")
            self._end(EXIT_REFUSED)
            return
        try:
            request = await asyncio.to_thread(
                gate.open_request, self.agent, self.command, self.conn.client
            )
        except BastionError as exc:
            self._say(f"request refused: {exc}")
            self._end(EXIT_REFUSED)
            return
        gateway.notify_request("request.created", request)
        if request.state is RequestState.PENDING:
            wait = format_duration(request.expires_at - request.requested_at)
            self._say(
                f"waiting for approval (request {request.id}; up to {wait}):"
                f" a human runs `bastion requests approve {request.id}`"
            )
            try:
                request = await gateway.wait_for_request(request)
            except asyncio.CancelledError:
                withdrawn = gate.withdraw_request(request.id)
                gateway.notify_request("request.decided", withdrawn)
                raise
        gateway.notify_request("request.decided", request)
        self._deliver(request)

    def _deliver(self, request: AccessRequest) -> None:
        if request.state is RequestState.APPROVED and request.certificate:
            self.chan.write(request.certificate.encode())
            host_port = self.conn.gateway.advertised
            self._say(
                f"approved by {request.decided_by} (request {request.id}): grant"
                f" {request.grant_id} for {format_duration(request.ttl)}, task {request.task}."
                f" Save stdout as KEY-cert.pub beside your key, then:"
                f" ssh -p {host_port[1]} -i KEY {request.targets[0]}@{host_port[0]}"
            )
            self._end(EXIT_APPROVED)
        elif request.state is RequestState.DENIED:
            self._say(
                f"request {request.id} denied by {request.decided_by}: {request.decision_reason}"
            )
            self._end(EXIT_DENIED)
        else:
            wait = format_duration(request.expires_at - request.requested_at)
            self._say(f"request {request.id} timed out: nobody decided within {wait}")
            self._end(EXIT_TIMED_OUT)
