"""Relaying one session channel (shell, command, sftp) or one forward to its target.

`SessionRelay` faces the agent (server side) and `_UpstreamHalf` faces the target
(client side of the bastion's upstream connection). Flow control is crossed: when one
side's send buffer fills, the other side stops reading, so the gateway holds at most
about one channel window per direction. Data that arrives before the upstream channel
is open (or while a command waits for approval) is buffered up to a bound, then the
agent's channel is paused.

Every relay reports its end exactly once to the `Conduit` (the connection that owns
it), which records it: exit, client-closed, or the reason it was cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, cast

import asyncssh

from bastion.models import EndReason, SessionKind, Target
from bastion.recording.writer import RecordingFailed
from bastion.transport.recording import SessionRecording, recording_header

if TYPE_CHECKING:
    from bastion.transport.connection import GatewayConnection

_PENDING_LIMIT = 256 * 1024
# How long a session whose client closed its channel waits for the target's command to
# end, to report its exit status before closing (sshd waits for as long as it runs).
LINGER_SECONDS = 10.0
_FORWARDED_ENV_PREFIXES = ("LC_",)
_FORWARDED_ENV = ("LANG",)
STDERR = asyncssh.EXTENDED_DATA_STDERR


class SessionRelay(asyncssh.SSHServerSession[bytes]):
    def __init__(self, conn: GatewayConnection) -> None:
        self.conn = conn
        self.chan: Any = None
        self.up: Any = None
        self.record: Any = None  # models.Session once the request is known
        self.pty: tuple[str, tuple[int, int, int, int], Any] | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._pending_eof = False
        self._ended = False
        self._up_done = False
        self._lost = False
        self._linger: asyncio.TimerHandle | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.recording = SessionRecording(conn, self)
        self._task: asyncio.Task[None] | None = None
        # How the session ended before its record was written (see `_end`).
        self._early_end: tuple[EndReason, int | None, str] | None = None
        # What a reload of bastion.toml re-checks (`transport/reconfigure.py`): the
        # recording mode it runs under (set as its recording starts), whether it passed
        # the approval gate, and whether a human approved it there.
        self.recording_mode: str | None = None
        self.gated = False
        self.approved = False

    # -- requests from the agent ----------------------------------------------

    def connection_made(self, chan: Any) -> None:
        self.chan = chan
        self.conn.session_opened(self)

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        self.pty = (term_type, term_size, term_modes)
        return True

    def shell_requested(self) -> bool:
        return self._begin(SessionKind.SHELL, None, None)

    def exec_requested(self, command: str | bytes) -> bool:
        if isinstance(command, bytes):
            command = command.decode("utf-8", errors="replace")
        return self._begin(SessionKind.EXEC, command, None)

    def subsystem_requested(self, subsystem: str | bytes) -> bool:
        if isinstance(subsystem, bytes):
            subsystem = subsystem.decode("utf-8", errors="replace")
        if subsystem != "sftp":
            return False
        return self._begin(SessionKind.SFTP, None, "sftp")

    def _begin(self, kind: SessionKind, command: str | None, subsystem: str | None) -> bool:
        if self.conn.closing:
            return False
        # Pausing here would be undone by asyncssh right after this returns.
        asyncio.get_running_loop().call_soon(self._pause_until_upstream)
        self._task = asyncio.ensure_future(self._run(kind, command, subsystem))
        return True

    async def _open(self, kind: SessionKind, command: str | None) -> bool:
        """The session's record, then its recording, before anything runs: both reach the
        store on threads, so a store that stops answering holds this session only. False
        when the session must not run."""
        opening = asyncio.ensure_future(asyncio.to_thread(self.conn.open_record, kind, command))
        try:
            self.record = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(self._record_late)  # the channel closed meanwhile
            raise
        except Exception as exc:  # StoreError: no session runs unrecorded
            self.fail(EndReason.TARGET_ERROR, f"could not record the session: {exc}")
            return False
        if self._ended:  # cut short (expiry, revocation) while the record was written
            self._end_recorded()
            return False
        # The mode this session runs under: a reload of bastion.toml changes it only to a
        # stricter one (`transport/reconfigure.py`).
        self.recording_mode = self.conn.recording_mode
        header = recording_header(self.record, kind.value, self.pty)
        starting = asyncio.ensure_future(self.recording.start(header))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            starting.add_done_callback(self._recording_late)  # the channel closed meanwhile
            raise
        except RecordingFailed as exc:  # mandatory: never a session running unrecorded
            self.fail(EndReason.RECORDING_FAILED, f"{exc} - session refused")
            return False
        if self._ended:
            self._end_recorded()
            return False
        for chunk in self._pending:  # typed while the record was written
            self.recording.input(chunk)
        return True

    def _record_late(self, opening: asyncio.Future[Any]) -> None:
        """The record was written after the channel closed: end it as the channel did."""
        if opening.cancelled() or opening.exception() is not None:
            return
        self.record = opening.result()
        self._end_recorded()

    def _recording_late(self, starting: asyncio.Future[None]) -> None:
        """The recording began after the channel closed (and the record ended): close it."""
        if starting.cancelled() or starting.exception() is not None:
            return
        self.recording.close(EndReason.CLIENT_CLOSED)

    def _end_recorded(self) -> None:
        reason, exit_status, detail = self._early_end or (EndReason.CLIENT_CLOSED, None, "")
        self._ended = False
        self._end(reason, exit_status=exit_status, detail=detail)

    def _pause_until_upstream(self) -> None:
        if self.up is None and not self._lost:
            self.chan.pause_reading()

    async def _run(self, kind: SessionKind, command: str | None, subsystem: str | None) -> None:
        if not await self._open(kind, command):
            return
        permitted = await self.conn.gate_session(self, kind, command)
        if not permitted or self._ended:
            return
        self.gated = True
        try:
            upstream = await self.conn.upstream()
        except Exception as exc:  # UpstreamError, or anything unexpected
            self.fail(EndReason.TARGET_ERROR, str(exc))
            return
        if self._ended or self._lost:
            return
        env = {
            k: v
            for k, v in self.chan.get_environment().items()
            if k in _FORWARDED_ENV or k.startswith(_FORWARDED_ENV_PREFIXES)
        }
        options: dict[str, Any] = {"request_pty": False}
        if self.pty is not None:
            term_type, term_size, term_modes = self.pty
            options = {
                "request_pty": "force",
                "term_type": term_type,
                "term_size": term_size,
                "term_modes": term_modes,
            }
        try:
            up, _ = await upstream.create_session(
                lambda: _UpstreamHalf(self),
                command if kind is SessionKind.EXEC else None,
                subsystem=subsystem,
                env=env,
                encoding=None,
                **options,
            )
        except (asyncssh.Error, OSError) as exc:
            self.fail(EndReason.TARGET_ERROR, f"target refused the session: {exc}")
            return
        if self._ended or self._lost:
            up.close()
            return
        self.up = up
        if self.pty is not None and self.pty[1] != options.get("term_size"):
            up.change_terminal_size(*self.pty[1])  # resized while the channel was opening
        for chunk in self._pending:
            up.write(chunk)
        self._pending.clear()
        self._pending_size = 0
        if self._pending_eof:
            up.write_eof()
        self.chan.resume_reading()

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.bytes_up += len(data)
        self.recording.input(data)
        if self.up is not None:
            self.up.write(data, datatype)
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size > _PENDING_LIMIT:
            self.chan.pause_reading()

    def eof_received(self) -> bool:
        if self.up is not None:
            self.up.write_eof()
        else:
            self._pending_eof = True
        return True  # keep our sending side open: `cat file | ssh ... sort`

    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.resume_reading()

    def terminal_size_changed(self, width: int, height: int, pixw: int, pixh: int) -> None:
        self.recording.resize(width, height)
        if self.up is not None:
            self.up.change_terminal_size(width, height, pixw, pixh)
        elif self.pty is not None:
            self.pty = (self.pty[0], (width, height, pixw, pixh), self.pty[2])

    def signal_received(self, signal: str) -> None:
        if self.up is not None:
            self.up.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        if self.up is not None:
            self.up.send_break(msec)
            return True
        return False

    def peer_closed(self) -> bool:
        """The client closed the channel (asyncssh_fixes asks): with the target's command
        still running, finish our side first, as sshd does: its input ends, and its exit
        status is reported before our close (or, past LINGER_SECONDS, it is hung up on)."""
        if self.up is None or self._up_done or self._ended or self._lost:
            return False
        with contextlib.suppress(OSError, asyncssh.Error):
            self.up.write_eof()
        loop = asyncio.get_running_loop()
        self._linger = loop.call_later(LINGER_SECONDS, self._linger_expired)
        return True

    def _linger_expired(self) -> None:
        if not self._ended:
            self._close_upstream()
            with contextlib.suppress(OSError, asyncssh.Error):
                self.chan.close()
            self._end(EndReason.CLIENT_CLOSED)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._linger is not None:
            self._linger.cancel()
        self.conn.sessions.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._close_upstream()
        self._end(EndReason.CLIENT_CLOSED)

    # -- endings --------------------------------------------------------------

    def upstream_finished(self, status: int | None, signal: tuple[Any, ...] | None) -> None:
        self._up_done = True
        if self._ended or self._lost:
            return
        detail = ""
        try:
            if signal is not None:
                name, core_dumped, msg, lang = signal
                detail = f"signal {name}"
                self.chan.exit_with_signal(name, core_dumped, msg, lang)
            elif status is not None:
                self.chan.exit(status)
            else:
                self.chan.close()
        except OSError:
            pass
        self._end(EndReason.EXIT, exit_status=status, detail=detail)

    def notify(self, message: str, *, new_line: bool = False) -> None:
        """One line on the agent's stderr, visible with and without a PTY.

        `new_line` starts it on a fresh line, for notices that may cut into output.
        """
        if self.chan is None or self._lost:
            return
        nl = "\r\n" if self.pty is not None else "\n"
        lead = nl if new_line else ""
        self.recording.marker(message)
        with contextlib.suppress(OSError, asyncssh.Error):
            self.chan.write(f"{lead}{message}{nl}".encode(), STDERR)

    def fail(self, reason: EndReason, message: str, exit_status: int = 255) -> None:
        """End this session now: tell the agent why, exit non-zero, close the target side."""
        if self._ended:
            return
        self.notify(f"[bastion] {message}", new_line=exit_status != 126)
        with contextlib.suppress(OSError, asyncssh.Error):
            self.chan.exit(exit_status)
        self._close_upstream()
        self._end(reason, exit_status=exit_status, detail=message)

    def _close_upstream(self) -> None:
        # Not up.is_closing(): that is already true after write_eof().
        if self.up is not None and not self._up_done:
            # sshd doesn't kill a command without a PTY when its channel closes: ask it to.
            with contextlib.suppress(OSError, asyncssh.Error):
                self.up.send_signal("HUP")
            self.up.close()
            self._up_done = True

    def _end(self, reason: EndReason, exit_status: int | None = None, detail: str = "") -> None:
        if self._ended:
            return
        if self.record is None:  # still being written: `_end_recorded` ends it then
            self._ended = True
            self._early_end = (reason, exit_status, detail)
            return
        self._ended = True
        self.recording.close(reason, exit_status, detail)
        self.conn.close_record(self, reason, exit_status, detail)


class _UpstreamHalf(asyncssh.SSHClientSession[bytes]):
    def __init__(self, down: SessionRelay) -> None:
        self.down = down
        self.status: int | None = None
        self.signal: tuple[Any, ...] | None = None

    def data_received(self, data: bytes, datatype: int | None) -> None:
        down = self.down
        down.bytes_down += len(data)
        down.recording.output(data, datatype == STDERR)
        with contextlib.suppress(OSError, asyncssh.Error):
            self.down.chan.write(data, datatype)

    def eof_received(self) -> bool:
        with contextlib.suppress(OSError, asyncssh.Error):
            self.down.chan.write_eof()
        return True

    def pause_writing(self) -> None:
        self.down.chan.pause_reading()

    def resume_writing(self) -> None:
        self.down.chan.resume_reading()

    def exit_status_received(self, status: int) -> None:
        self.status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.signal = (signal, core_dumped, msg, lang)

    def connection_lost(self, exc: Exception | None) -> None:
        self.down.upstream_finished(self.status, self.signal)


class _TcpHalf(asyncio.Protocol):
    def __init__(self) -> None:
        self.forward: ForwardRelay | None = None
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []  # what the target sent before the SSH channel opened

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A socket transport (not an `asyncio.Transport` subclass on uvloop).
        self.transport = cast(asyncio.Transport, transport)
        # Until the SSH channel exists. uvloop starts reading right after this callback
        # whatever it was told: `data_received` keeps what comes meanwhile and pauses
        # again. (An end of stream read meanwhile is read again once reading resumes.)
        self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        forward = self.forward
        if forward is None or forward.chan is None:
            self.early.append(data)
            assert self.transport is not None
            self.transport.pause_reading()
            return
        forward.bytes_down += len(data)
        forward.chan.write(data)

    def eof_received(self) -> bool:
        if self.forward is not None and self.forward.chan is not None:
            with contextlib.suppress(OSError, asyncssh.Error):
                self.forward.chan.write_eof()
            self.forward.half_closed("target")
        return True

    def pause_writing(self) -> None:
        if self.forward is not None:
            self.forward.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.forward is not None:
            self.forward.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.forward is not None and self.forward.chan is not None:
            self.forward.chan.close()


class ForwardRelay(asyncssh.SSHTCPSession[bytes]):
    """A `-L` channel relayed as bytes to a target's registered address."""

    def __init__(self, conn: GatewayConnection, tcp: _TcpHalf, record: Any) -> None:
        self.conn = conn
        self.tcp = tcp
        tcp.forward = self
        self.record = record
        self.target: Target | None = None  # set by the connection once open
        self.chan: Any = None
        self.bytes_up = 0
        self.bytes_down = 0
        self._ended = False
        self._eofs: set[str] = set()

    @classmethod
    async def open(cls, conn: GatewayConnection, host: str, port: int, record: Any) -> ForwardRelay:
        loop = asyncio.get_running_loop()
        _, tcp = await loop.create_connection(_TcpHalf, host, port)
        return cls(conn, tcp, record)

    def connection_made(self, chan: Any) -> None:
        self.chan = chan
        self.conn.forwards.add(self)
        assert self.tcp.transport is not None
        early, self.tcp.early = self.tcp.early, []
        for data in early:
            self.bytes_down += len(data)
            chan.write(data)
        self.tcp.transport.resume_reading()

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.bytes_up += len(data)
        assert self.tcp.transport is not None
        self.tcp.transport.write(data)

    def eof_received(self) -> bool:
        assert self.tcp.transport is not None
        if self.tcp.transport.can_write_eof():
            self.tcp.transport.write_eof()
        self.half_closed("agent")
        return True

    def half_closed(self, side: str) -> None:
        """Once both directions have ended, close (as sshd does; `ssh -W` waits for it)."""
        self._eofs.add(side)
        if len(self._eofs) == 2:
            self._finish(EndReason.EXIT, "")
            with contextlib.suppress(OSError, asyncssh.Error):
                self.chan.close()

    def pause_writing(self) -> None:
        assert self.tcp.transport is not None
        self.tcp.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.tcp.transport is not None
        self.tcp.transport.resume_reading()

    def fail(self, reason: EndReason, message: str) -> None:
        self._finish(reason, message)
        with contextlib.suppress(OSError, asyncssh.Error):
            self.chan.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.forwards.discard(self)
        self._finish(EndReason.CLIENT_CLOSED, "")

    def _finish(self, reason: EndReason, detail: str) -> None:
        if self.tcp.transport is not None:
            self.tcp.transport.close()
        if not self._ended:
            self._ended = True
            self.conn.close_record(self, reason, None, detail)
