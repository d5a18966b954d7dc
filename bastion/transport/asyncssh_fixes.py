"""Fixes to asyncssh internals the gateway depends on, checked against the pinned version.

asyncssh 2.24.1 re-grants a channel's whole receive window as soon as any data is
delivered, even while earlier data still sits in the channel's receive buffer of a
paused session. A slow reader then makes the gateway buffer without bound (measured:
45 MB for a 50 MB upload). The fix credits the peer only for bytes actually handed
to the session, which keeps at most about one window buffered per channel at no cost
in throughput. (Apache MINA sshd had the same bug.)

asyncssh also sends an empty SSH_MSG_IGNORE before every packet once keys are in use:
the RFC 4251 (9.3.1) countermeasure to chosen-plaintext attacks on CBC mode. It doubles
the packets, the encryptions and the `send()` calls of every data packet. The gateway
and its upstream only negotiate AEAD ciphers (AES-GCM, offered first, or
chacha20-poly1305), to which the attack doesn't apply and for which OpenSSH never sends
them; the fix drops the inserted packet for those ciphers and keeps it for any other.

Last, asyncssh formats a log line for every packet sent and received before its logger
decides to drop it (packet logging is on only at debug level 3); the fix skips the
formatting unless that level is set.

And asyncssh answers a peer's SSH_MSG_CHANNEL_CLOSE at once, closing the session. An
OpenSSH multiplexing client (ControlMaster) whose stdin is at its end closes a session
channel as soon as the server's EOF arrives, before the exit status that follows it;
sshd then finishes its side first (the exit status, then its close), as RFC 4254 allows,
and so the client learns how the command ended. The fix lets a session that asks for it
(`peer_closed()` returning True) do the same: our close is sent by the session once it
has the command's end to report.

On top of these, `asyncssh_fastpath` takes AES-GCM packets through asyncssh with fewer
copies (see there).
"""

from __future__ import annotations

from typing import Any

import asyncssh
from asyncssh.channel import SSHChannel
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_CHANNEL_CLOSE, MSG_CHANNEL_WINDOW_ADJUST, MSG_IGNORE
from asyncssh.encryption import ChachaEncryption, GCMEncryption
from asyncssh.logging import SSHLogger
from asyncssh.misc import ProtocolError
from asyncssh.packet import SSHPacketLogger, UInt32

from bastion.transport import asyncssh_fastpath

PINNED_VERSION = "2.24.1"
_applied = False


def apply() -> None:
    """Install the fixes once; refuse to run on an asyncssh they were not written for."""
    global _applied
    if _applied:
        return
    if asyncssh.__version__ != PINNED_VERSION:
        raise RuntimeError(
            f"bastion needs asyncssh {PINNED_VERSION} (found {asyncssh.__version__}):"
            " its flow-control fix patches that version's internals"
        )
    SSHChannel._deliver_data = _deliver_data  # type: ignore[method-assign]
    send_packet = SSHConnection.send_packet

    def send_packet_without_cbc_padding(
        self: Any, pkttype: int, *args: bytes, handler: Any = None
    ) -> None:
        # asyncssh itself sends MSG_IGNORE only as that countermeasure.
        if pkttype == MSG_IGNORE and isinstance(self._send_encryption, _AEAD):
            return
        send_packet(self, pkttype, *args, handler=handler)

    SSHConnection.send_packet = send_packet_without_cbc_padding  # type: ignore[method-assign]
    log_packet = SSHPacketLogger._log_packet

    def log_packet_when_logged(self: Any, *args: Any) -> None:
        if SSHLogger._debug_level >= 3:
            log_packet(self, *args)

    SSHPacketLogger._log_packet = log_packet_when_logged  # type: ignore[method-assign,assignment]
    process_close = SSHChannel._process_close
    close = SSHChannel.close

    def process_close_after_our_end(self: Any, pkttype: int, pktid: int, packet: Any) -> None:
        peer_closed = getattr(self._session, "peer_closed", None)
        if (
            peer_closed is None
            or self._recv_state not in {"open", "eof_pending", "eof"}
            or self._send_state not in {"open", "eof_pending", "eof"}
            or not peer_closed()
        ):
            process_close(self, pkttype, pktid, packet)
            return
        packet.check_end()
        self.logger.info("Received channel close; finishing our side first")
        self._recv_buf = []  # nothing more is read: the peer is done
        self._recv_state = "eof"
        self._bastion_lingering = True

    def close_after_peer(self: Any) -> None:
        if getattr(self, "_bastion_lingering", False) and self._recv_state == "eof":
            # The peer closed already: nothing it would read is left to send but our
            # requests (exit status) and our close, which closes the channel for good.
            self._bastion_lingering = False
            self._send_buf = []
            self._send_buf_len = 0
            self._recv_state = "close_pending"
        close(self)

    # Packets reach it through the class's handler table, built when the class was.
    SSHChannel._packet_handlers[MSG_CHANNEL_CLOSE] = process_close_after_our_end
    SSHChannel.close = close_after_peer  # type: ignore[method-assign]
    asyncssh_fastpath.install(send_packet_without_cbc_padding)
    _applied = True


_AEAD = (GCMEncryption, ChachaEncryption)


def _deliver_data(self: Any, data: bytes, datatype: int | None) -> None:
    # Invariant: recv_window + buffered + delivered-but-uncredited == initial window.
    credit = getattr(self, "_bastion_uncredited", 0) + len(data)
    if credit >= self._init_recv_window / 2:
        self.send_packet(MSG_CHANNEL_WINDOW_ADJUST, UInt32(credit))
        self._recv_window += credit
        credit = 0
    self._bastion_uncredited = credit
    if self._encoding:
        try:
            data = self._decoder.decode(data)
        except UnicodeDecodeError as exc:
            raise ProtocolError(str(exc)) from None
    if self._session is not None:
        self._session.data_received(data, datatype)
